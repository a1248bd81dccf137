"""Run a model or an artifact on a float32 N×3×H×W array and get the three outputs back as arrays.

One small runner per runtime; the export verification, and later detection, parity and benchmarks,
call artifacts through these.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES

Runner = Callable[[np.ndarray], list[np.ndarray]]


def eager_runner(model: torch.nn.Module) -> Runner:
    """PyTorch eager, no gradients."""

    def run(data: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [out.numpy() for out in model(torch.from_numpy(data))]

    return run


def torchscript_runner(path: Path) -> Runner:
    """A TorchScript file through ``torch.jit.load``."""
    module = torch.jit.load(str(path), map_location="cpu").eval()
    return eager_runner(module)


def onnxruntime_runner(model: Path | bytes, optimize: bool = False, threads: int | None = None) -> Runner:
    """An ONNX model (file or bytes) through ONNX Runtime's CPU provider; graph optimisation off unless asked.

    With optimisation off, ONNX Runtime computes the graph as written (onnxsim's ``compare`` habit).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def run(data: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {INPUT_NAME: data})

    return run


# rt_info section of an OpenVINO IR that holds retinaface-export's provenance.
OPENVINO_RT_SECTION = "retinaface_export"
# OpenVINO calls from two Python threads at once can deadlock (seen with openvino 2026.4: two infer
# requests of different compiled models, each copying its input, both waiting forever); every OpenVINO call
# of this package that may run in a worker thread holds this lock.
OPENVINO_LOCK = threading.RLock()


def openvino_runner(path: Path, threads: int | None = None) -> Runner:
    """An OpenVINO IR (or ONNX file) on the CPU plugin, in f32 inference precision.

    The CPU plugin may otherwise pick bf16 on CPUs that have it, which would not be the IR's numerics.
    """
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with OPENVINO_LOCK:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(data: np.ndarray) -> list[np.ndarray]:
        with OPENVINO_LOCK:
            result = request.infer({0: data})
            return [np.array(result[port]) for port in outputs]

    return run


def read_openvino_provenance(path: Path) -> dict[str, Any]:
    """The provenance in an IR's ``rt_info`` (JSON-encoded values decoded); {} when there is none."""
    import openvino as ov

    with OPENVINO_LOCK:
        model = ov.Core().read_model(str(path))
    if not model.has_rt_info([OPENVINO_RT_SECTION]):
        return {}
    section = model.get_rt_info()[OPENVINO_RT_SECTION]
    decoded: dict[str, Any] = {}
    for key in section:
        value = model.get_rt_info([OPENVINO_RT_SECTION, key]).astype(str)
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded
