"""The tables every command reads: artifact formats, and the tolerances of each precision.

One row per artifact format: how it is made (``exporter`` for the ones ``retinaface-export`` writes,
``None`` for those a converter makes), its file suffix, the runtime that runs it, and how to read the
provenance inside it. CLI choices, file names, the detector's backends and parity tests all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from retinaface_export.onnx_export import OnnxExporter, read_onnx_provenance
from retinaface_export.runtimes import (
    Runner,
    onnxruntime_runner,
    openvino_runner,
    read_openvino_provenance,
    torchscript_runner,
)
from retinaface_export.sizes import InputSize
from retinaface_export.torchscript_export import TorchScriptExporter, read_torchscript_provenance


class Exporter(Protocol):
    """Made once per checkpoint (the costly trace or export); then one artifact per size, cheaply."""

    def artifact(
        self, size: InputSize | None, batch: int, num_anchors: int | None, provenance: dict[str, Any]
    ) -> bytes:
        """The artifact file's bytes at ``size`` × ``batch`` (``size`` None: dynamic axes)."""
        ...


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact of one precision must stay to its FP32 reference."""

    # max |artifact - reference| <= atol + rtol * (the reference output's range, max - min), or None when not
    # judged on tensors this way. Float32 accumulation-order noise scales with a tensor's magnitude, not with
    # each element: rtol lets ~1e-5-relative noise on landmarks (range ~20) pass, while a 1% weight change
    # (errors ~1e-2) still fails by two orders of magnitude.
    atol: float | None
    rtol: float
    # Largest |artifact - reference| as a fraction of the reference output's range (max - min).
    range_fraction: float | None
    # Smallest detection F1 against the reference's faces (score > 0.5, IoU >= 0.5) ...
    min_f1: float
    # ... where a face above 0.5 on one side is matched by a face above 0.5 - score_margin on the other:
    # a face scored 0.507 by FP32 and 0.49 by INT8 is the same face, not a miss and a false alarm.
    score_margin: float


PRECISIONS: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5, range_fraction=None, min_f1=0.99, score_margin=0.0),
    "fp16": Tolerance(atol=None, rtol=0.0, range_fraction=0.03, min_f1=0.95, score_margin=0.02),
    "int8": Tolerance(atol=None, rtol=0.0, range_fraction=None, min_f1=0.95, score_margin=0.1),
}


def allowed_abs_error(tolerance: Tolerance, output_range: float) -> float:
    """The largest abs error ``tolerance`` allows on an output whose reference spans ``output_range``."""
    assert tolerance.atol is not None
    return tolerance.atol + tolerance.rtol * output_range


@dataclass(frozen=True)
class ArtifactFormat:
    """One kind of artifact file."""

    name: str
    suffix: str
    backend: str
    open_runner: Callable[[Path], Runner]
    read_provenance: Callable[[Path], dict[str, Any]]
    # retinaface-export makes it with ``exporter(model, example, opset)``; None for converter outputs.
    exporter: Callable[[torch.nn.Module, torch.Tensor, int], Exporter] | None = None
    uses_opset: bool = False
    # Files that travel with the main one (OpenVINO's weights), as suffixes replacing ``suffix``.
    companion_suffixes: tuple[str, ...] = ()


FORMATS: dict[str, ArtifactFormat] = {
    fmt.name: fmt
    for fmt in (
        ArtifactFormat(
            name="torchscript",
            suffix=".torchscript.pt",
            backend="torchscript",
            open_runner=torchscript_runner,
            read_provenance=read_torchscript_provenance,
            exporter=TorchScriptExporter,
        ),
        ArtifactFormat(
            name="onnx",
            suffix=".onnx",
            backend="onnxruntime",
            open_runner=onnxruntime_runner,
            read_provenance=read_onnx_provenance,
            exporter=OnnxExporter,
            uses_opset=True,
        ),
        ArtifactFormat(
            name="onnxsim",
            suffix=".sim.onnx",
            backend="onnxruntime",
            open_runner=onnxruntime_runner,
            read_provenance=read_onnx_provenance,
            uses_opset=True,
        ),
        ArtifactFormat(
            name="openvino",
            suffix=".xml",
            backend="openvino",
            open_runner=openvino_runner,
            read_provenance=read_openvino_provenance,
            companion_suffixes=(".bin",),
        ),
    )
}

EXPORT_FORMATS: dict[str, ArtifactFormat] = {name: fmt for name, fmt in FORMATS.items() if fmt.exporter}


def format_for_path(path: Path) -> ArtifactFormat | None:
    """The format whose suffix ``path`` ends with (the longest such suffix), or None."""
    matches = [fmt for fmt in FORMATS.values() if path.name.endswith(fmt.suffix)]
    return max(matches, key=lambda fmt: len(fmt.suffix)) if matches else None


def companion_paths(fmt: ArtifactFormat, path: Path) -> list[Path]:
    """The files that must sit beside ``path`` (``model.bin`` for ``model.xml``)."""
    stem = path.name.removesuffix(fmt.suffix)
    return [path.with_name(stem + suffix) for suffix in fmt.companion_suffixes]
