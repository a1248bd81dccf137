"""OpenVINO's CPU plugin: the one module of the package that imports ``openvino``.

Every OpenVINO import, ``Core`` and compiled model of the package (conversion, verification, detect,
parity, INT8 accuracy control, bench, the scripts) comes from here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.format_api import Budget, Runner, Runtime, ThroughputRun, ThroughputRunner

# pyopenvino (2026.4) fills its numpy dtype tables in C++ function-local statics on the first numpy view of an
# ov.Tensor (the input copy inside the first `infer`); the initialiser calls back into Python and lets the
# GIL go, so a second thread reaching the same conversion meanwhile blocks on the static's guard while
# holding the GIL, and both wait forever (py-spy and gdb stacks: `take_gil` / `__cxa_guard_acquire`). That
# first conversion is made once, here, before any other thread can: no process-wide lock is needed.
_OPENVINO_READY = threading.Lock()
_openvino: list[Any] = []
# One ov.Core for the process, never destroyed. The CPU plugin instance each Core loads sets an alternate
# signal stack on the thread that loads it and frees it with the Core: a Core made in one thread and
# destroyed in another left the first thread's alternate stack dangling, and the next signal handled on it
# (a Ctrl-C or SIGTERM, which Python handles with SA_ONSTACK) crashed the process with SIGSEGV instead of
# stopping it cleanly (OpenVINO 2026.4; reproduced with a Core built in the main thread and dropped in a
# worker). Every Core the package needs is this one.
_core: list[Any] = []


def openvino_module():
    """``openvino``, imported with its numpy bridge initialised; the package's one way to import it."""
    with _OPENVINO_READY:
        if not _openvino:
            import openvino as ov

            ov.Tensor(np.zeros(1, np.float32)).data  # noqa: B018  the first tensor→numpy view, in one thread
            _openvino.append(ov)
        return _openvino[0]


def openvino_submodule(name: str):
    """``openvino.<name>`` (``passes``, ``preprocess``, ``opset10``), imported after the numpy bridge is ready."""
    openvino_module()
    import importlib

    return importlib.import_module(f"openvino.{name}")


def openvino_core():
    """The process's one ``openvino.Core`` (see ``_core``); compiling models through it is thread-safe."""
    ov = openvino_module()
    with _OPENVINO_READY:
        if not _core:
            _core.append(ov.Core())
        return _core[0]


def compile_model(
    model: Any, threads: int | None = None, hint: str = "LATENCY", precision: str | None = "f32", **extra: Any
):
    """``model`` (a path or an ``ov.Model``) compiled for the CPU.

    ``precision`` is the inference precision asked for: ``f32`` for in-memory models (NNCF's candidates,
    which carry no precision marks; the CPU plugin would otherwise pick bf16 on CPUs that have it), None to
    compile an IR file as a client does, with no options, so that what runs is what the IR itself decides
    (``converters/openvino/precision.py``).
    """
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint} | extra
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return openvino_core().compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)


def compile_ir(path: Path, threads: int | None = None, hint: str = "LATENCY", **extra: Any):
    """An IR file compiled the way it asks to be run: the inference precision of its ``rt_info``.

    That is ``runtime_options/INFERENCE_PRECISION_HINT`` (f32 in every IR this package writes); an IR that
    asks nothing is compiled with no precision option. OpenVINO's CPU plugin ignores that entry when a
    client compiles the file with no options; FP32 and FP16 IRs still execute f32 for such a client through
    their per-layer precision marks (``precision.py``), INT8 IRs do not (see
    :meth:`OpenVinoRuntime.execution`, which records what a client's compile runs).
    """
    model = openvino_core().read_model(str(path))
    asked = None
    if model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
        asked = model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str)
    return compile_model(model, threads, hint, precision=asked, **extra)


def compiled_runner(compiled: Any) -> Runner:
    """A compiled model as a runner: one infer request, one inference at a time."""
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)  # in the model's order (raw: the contract's)
    busy = threading.Lock()  # an infer request runs one inference at a time ("Infer Request is busy")

    def run(data: np.ndarray) -> list[np.ndarray]:
        with busy:
            result = request.infer({0: data})
            return [np.array(result[port]) for port in outputs]

    return run


def run_model(model: Any, inputs: Any, threads: int | None = None) -> list[list[np.ndarray]]:
    """An ``ov.Model`` (compiled here) or an ``ov.CompiledModel`` (as NNCF hands it over) on each input."""
    ov = openvino_module()
    compiled = compile_model(model, threads) if isinstance(model, ov.Model) else model
    run = compiled_runner(compiled)
    return [run(data) for data in inputs]


def _throughput(path: Path, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
    """``AsyncInferQueue`` on a model compiled with ``PERFORMANCE_HINT=THROUGHPUT``.

    OpenVINO picks its streams (or ``streams`` given) and the optimal number of infer requests.
    """
    ov = openvino_module()
    extra = {"NUM_STREAMS": streams} if streams else {}
    compiled = compile_ir(path, threads, hint="THROUGHPUT", **extra)
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


def executed_precision(compiled: Any) -> dict[str, Any]:
    """What a compiled model executes in: bf16 or not, and the runtime precision of its nodes (constants left out).

    ``executed`` is ``bf16+f32`` when any node runs in bf16, else ``f32``. The CPU plugin reports a
    convolution with FP16 weights as ``f16`` whatever the inference precision (its weights are decompressed
    in the kernel), so an FP16 IR's ``f16`` nodes are counted but do not make it a bf16 run.
    """
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["layerType"].astype(str) != "Const":
            counts[info["runtimePrecision"].astype(str)] += 1
    return {
        "device": "CPU",
        "executed": "bf16+f32" if counts["bf16"] else "f32",
        "inference_precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "runtime_precisions": dict(sorted(counts.items())),
    }


class OpenVinoRuntime(Runtime):
    """OpenVINO's CPU plugin; IR files compiled with no precision option, as clients compile them."""

    name = "openvino"
    libraries = ("openvino", "nncf")

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """The IR on the CPU plugin as it asks to be run (OpenVINO always compiles with its optimisations).

        A runtime limited to ``threads`` shares the CPUs with others (the workers of ``retinaface-detect``, Ray
        actors), so its threads are not pinned: the CPU plugin pins every such model's threads to the same
        first cores (measured: two one-thread IRs side by side on 2 cores ran 35 inferences/s pinned, 68 not).
        """
        del optimize
        unpinned = {"ENABLE_CPU_PINNING": False} if threads else {}
        return compiled_runner(compile_ir(path, threads, **unpinned))

    def execution(self, path: Path) -> dict[str, Any]:
        """What :meth:`open` executes the IR in, and what a client compiling it with no options executes.

        The two are the same for FP32 and FP16 IRs (their precision marks); on a CPU with bf16, an INT8 IR's
        float parts run bf16 for such a client (``client_default``).
        """
        client = executed_precision(compile_model(path, precision=None))["executed"]
        return executed_precision(compile_ir(path)) | {"client_default": client}

    def throughput(self, path: Path, threads: int, streams: int | None) -> tuple[int, ThroughputRunner]:
        return _throughput(path, threads, streams)

    def machine(self) -> dict[str, Any]:
        """OpenVINO's view of the CPU (``OPTIMIZATION_CAPABILITIES``)."""
        return {
            "openvino_optimization_capabilities": list(openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        }


RUNTIME = OpenVinoRuntime()
