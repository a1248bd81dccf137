"""ONNX Runtime: the one module of the package that imports ``onnxruntime``.

Every ONNX Runtime session the package makes (verification, detect, parity, INT8 accuracy control, bench,
the scripts) comes from :func:`session`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.contract import INPUT_NAME
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.format_api import Budget, Runner, Runtime, ThroughputRun, ThroughputRunner


def session(
    model: Path | bytes,
    optimize: bool = False,
    threads: int | None = None,
    inter_op: int | None = None,
    checked: bool = False,
    config: dict[str, str] | None = None,
):
    """An ``onnxruntime.InferenceSession`` on the CPU provider for a model file or serialised bytes.

    A file is trust-checked first (external data inside its folder, standard operators, the contract's
    names) unless the caller ``checked`` it already. With ``optimize`` False, ONNX Runtime computes the
    graph as written (onnxsim's ``compare`` habit). ``config``: session configuration entries.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if inter_op:
        options.inter_op_num_threads = inter_op
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if not isinstance(model, bytes) and not checked:
        check_onnx_file(model)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(
    model: Path | bytes, optimize: bool = False, threads: int | None = None, checked: bool = False
) -> Runner:
    """An ONNX model (file or bytes) as a runner; graph optimisation off unless asked."""
    opened = session(model, optimize=optimize, threads=threads, checked=checked)
    input_name = opened.get_inputs()[0].name

    def run(data: np.ndarray) -> list[np.ndarray]:
        return opened.run(None, {input_name: data})  # in the model's order, which the trust check pinned

    return run


def _throughput(path: Path, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
    """One session with ``streams`` requests in flight from as many Python threads (``run`` lets the GIL go).

    Each request gets ``threads // streams`` intra-op threads; graph optimisation on, as deployed.
    """
    requests = streams or threads
    opened = session(path, optimize=True, threads=max(1, threads // requests), inter_op=1)

    def measure(data: np.ndarray, budget: Budget) -> ThroughputRun:
        feed = {INPUT_NAME: data}
        for _ in range(budget.warmup):
            opened.run(None, feed)
        latencies: list[float] = []
        completions: list[float] = []
        lock = threading.Lock()
        failures: list[BaseException] = []
        claimed = [0]  # requests started, counted as OpenVINO's submissions are
        start = time.perf_counter()

        def worker() -> None:
            try:
                while True:
                    with lock:
                        if budget.done(claimed[0], time.perf_counter() - start):
                            return
                        claimed[0] += 1
                    begin = time.perf_counter()
                    opened.run(None, feed)
                    end = time.perf_counter()
                    with lock:
                        completions.append(end)
                        latencies.append((end - begin) * 1e3)
            except BaseException as exc:  # re-raised in the caller's thread below
                failures.append(exc)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(requests)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if failures:
            raise failures[0]
        return ThroughputRun(len(latencies) * len(data), max(completions) - start, latencies)

    return requests, measure


class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    libraries = ("onnx", "onnxruntime")

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        return onnxruntime_runner(path, optimize=optimize, threads=threads)

    def throughput(self, path: Path, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
        return _throughput(path, threads, streams)


RUNTIME = OnnxRuntime()


def run_model(model: Any, inputs: list[np.ndarray] | Any, threads: int | None = None) -> list[list[np.ndarray]]:
    """An in-memory ``onnx.ModelProto`` on each input (optimised, as NNCF's own ONNX engine runs it)."""
    opened = session(model.SerializeToString(), optimize=True, threads=threads)
    input_name = opened.get_inputs()[0].name
    return [opened.run(None, {input_name: data}) for data in inputs]
