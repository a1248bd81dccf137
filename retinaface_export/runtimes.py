"""Run a model or an artifact on a float32 N×3×H×W array and get the three outputs back as arrays.

One small runner per runtime; the export verification, and later detection, parity and benchmarks,
call artifacts through these.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from retinaface_export.contract import INPUT_NAME

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


def onnxruntime_runner(path: Path, optimize: bool = False) -> Runner:
    """An ONNX file through ONNX Runtime's CPU provider; graph optimisation off unless ``optimize``.

    With optimisation off, ONNX Runtime computes the graph as written (onnxsim's ``compare`` habit).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(data: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {INPUT_NAME: data})

    return run
