"""Each runtime's own machinery for the benchmark, in one table keyed by backend name.

- latency: one request at a time, ``threads`` threads inside the runtime (what ``retinaface-detect`` does).
- throughput: the runtime's own way of keeping the CPU busy:
  OpenVINO: ``AsyncInferQueue`` on a model compiled with ``PERFORMANCE_HINT=THROUGHPUT``, which picks its
  streams (or ``streams`` given) and the optimal number of infer requests;
  ONNX Runtime: one session, ``streams`` requests in flight from as many Python threads (``run`` releases
  the GIL), ``threads // streams`` intra-op threads each;
  TorchScript and PyTorch eager: one request at a time with ``threads`` intra-op threads (torch's own
  parallelism); their gain comes from the batch only, so ``streams`` is 1.

Requests are timed from submission to completion; the throughput is images over the wall time from the
first submission to the last completion.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.bench_stats import Budget
from retinaface_export.contract import INPUT_NAME
from retinaface_export.converters.openvino import openvino_core, openvino_module
from retinaface_export.format_api import Runner
from retinaface_export.formats import FORMATS
from retinaface_export.runtimes import eager_runner
from retinaface_export.trust import check_onnx_file, checked_torchscript_bytes

# What a row is timed on: an artifact file, or the eager model itself.
Source = Any  # an artifact's Path, or the eager torch.nn.Module (torch is imported where it is used)


@dataclass
class ThroughputRun:
    """What one throughput row measured."""

    images: int
    # from the first submission to the last completion
    seconds: float
    # per request, submission to completion
    latencies_ms: list[float]


# Runs requests on ``data`` (one prepared batch) within ``budget``.
ThroughputRunner = Callable[[np.ndarray, Budget], ThroughputRun]


@dataclass(frozen=True)
class BenchRuntime:
    """How the benchmark opens one backend for each mode."""

    # (source, threads) -> a runner for one request at a time
    latency: Callable[[Source, int], Runner]
    # (source, threads, streams or None for the runtime's choice) -> (streams used, throughput runner)
    throughput: Callable[[Source, int, int | None], tuple[int, ThroughputRunner]]


def _sequential(run: Runner) -> ThroughputRunner:
    """One request after another (torch's parallelism is inside each request)."""

    def measure(data: np.ndarray, budget: Budget) -> ThroughputRun:
        for _ in range(budget.warmup):
            run(data)
        latencies, completions = [], []
        start = time.perf_counter()
        while not budget.done(len(completions), time.perf_counter() - start):
            begin = time.perf_counter()
            run(data)
            completions.append(time.perf_counter())
            latencies.append((completions[-1] - begin) * 1e3)
        return ThroughputRun(len(latencies) * len(data), completions[-1] - start, latencies)

    return measure


def _torch_module(source: Source):
    import torch

    if isinstance(source, torch.nn.Module):
        return source
    return torch.jit.load(io.BytesIO(checked_torchscript_bytes(source)), map_location="cpu").eval()


def _torch_throughput(source: Source, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
    # torch.set_num_threads(threads) is set once for the whole benchmark (it is process-wide)
    return 1, _sequential(eager_runner(_torch_module(source)))


def _onnxruntime_throughput(source: Source, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
    import onnxruntime as ort

    requests = streams or threads
    options = ort.SessionOptions()  # graph optimisation on, as deployed
    options.intra_op_num_threads = max(1, threads // requests)
    options.inter_op_num_threads = 1
    check_onnx_file(Path(source))
    session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])

    def measure(data: np.ndarray, budget: Budget) -> ThroughputRun:
        feed = {INPUT_NAME: data}
        for _ in range(budget.warmup):
            session.run(None, feed)
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
                    session.run(None, feed)
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
        seconds = max(completions) - start
        return ThroughputRun(len(latencies) * len(data), seconds, latencies)

    return requests, measure


def _openvino_throughput(source: Source, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
    ov = openvino_module()

    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": "f32",  # as the latency runner: the IR's numerics, not bf16
        "INFERENCE_NUM_THREADS": threads,
    }
    if streams:
        config["NUM_STREAMS"] = streams
    compiled = openvino_core().compile_model(str(source), "CPU", config)
    used_streams = int(compiled.get_property("NUM_STREAMS"))
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def measure(data: np.ndarray, budget: Budget) -> ThroughputRun:
        # No Python callback on the queue: with one, destroying the compiled model afterwards can deadlock
        # (openvino 2026.4: a stream thread waits for the GIL to drop the callback while the thread that
        # destroys the model holds it). Completions are seen instead as requests come back idle.
        latencies: list[float] = []
        completions: list[float] = []
        # the queue's requests run in OpenVINO's threads; this thread only submits
        queue = ov.AsyncInferQueue(compiled, requests)
        for index in range(len(queue)):  # each request holds the input once, as benchmark_app fills it
            queue[index].set_input_tensor(ov.Tensor(data))
        for _ in range(budget.warmup):
            for _ in range(requests):
                queue.start_async()
            queue.wait_all()
        started: dict[int, float] = {}
        submitted = 0
        start = time.perf_counter()
        while not budget.done(submitted, time.perf_counter() - start):
            index = queue.get_idle_request_id()  # waits for one; start_async takes that same one
            now = time.perf_counter()
            if index in started:
                completions.append(now)
                latencies.append((now - started.pop(index)) * 1e3)
            started[index] = time.perf_counter()
            queue.start_async()
            submitted += 1
        queue.wait_all()
        now = time.perf_counter()
        for begin in started.values():
            completions.append(now)
            latencies.append((now - begin) * 1e3)
        return ThroughputRun(len(latencies) * len(data), max(completions) - start, latencies)

    return used_streams, measure


def _onnxruntime_latency(source: Source, threads: int) -> Runner:
    return FORMATS["onnx"].open_runner(Path(source), threads=threads, optimize=True)  # deployed: optimised


def _openvino_latency(source: Source, threads: int) -> Runner:
    return FORMATS["openvino"].open_runner(Path(source), threads=threads, optimize=True)


def _torchscript_latency(source: Source, threads: int) -> Runner:
    return FORMATS["torchscript"].open_runner(Path(source))  # follows torch.set_num_threads


def _eager_latency(source: Source, threads: int) -> Runner:
    assert not isinstance(source, Path)  # the eager model
    return eager_runner(source)


BENCH_RUNTIMES: dict[str, BenchRuntime] = {
    "openvino": BenchRuntime(_openvino_latency, _openvino_throughput),
    "onnxruntime": BenchRuntime(_onnxruntime_latency, _onnxruntime_throughput),
    "torchscript": BenchRuntime(_torchscript_latency, _torch_throughput),
    "torch-eager": BenchRuntime(_eager_latency, _torch_throughput),
}
