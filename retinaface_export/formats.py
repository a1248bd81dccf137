"""The table of export formats: CLI choices, file names, exporters, runtimes and tolerances read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinaface_export.onnx_export import export_onnx, read_onnx_provenance
from retinaface_export.runtimes import Runner, onnxruntime_runner, torchscript_runner
from retinaface_export.torchscript_export import export_torchscript, read_torchscript_provenance


@dataclass(frozen=True)
class ExportSettings:
    """What an exporter needs besides the model and the example input."""

    provenance: dict[str, Any]
    opset: int
    dynamic: bool


@dataclass(frozen=True)
class ExportFormat:
    """One format ``retinaface-export --format`` can write."""

    name: str
    suffix: str
    backend: str
    export: Callable[[torch.nn.Module, torch.Tensor, ExportSettings], bytes]
    open_runner: Callable[[Path], Runner]
    # The provenance the exporter put inside the artifact, as a dict.
    read_provenance: Callable[[Path], dict[str, Any]]
    # Largest |artifact - eager| allowed per output when the export verifies itself (FP32).
    atol: float
    uses_opset: bool


EXPORT_FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat(
            name="torchscript",
            suffix=".torchscript.pt",
            backend="torchscript",
            export=lambda model, example, s: export_torchscript(model, example, s.provenance),
            open_runner=torchscript_runner,
            read_provenance=read_torchscript_provenance,
            atol=1e-4,
            uses_opset=False,
        ),
        ExportFormat(
            name="onnx",
            suffix=".onnx",
            backend="onnxruntime",
            export=lambda model, example, s: export_onnx(model, example, s.provenance, s.opset, s.dynamic),
            open_runner=onnxruntime_runner,
            read_provenance=read_onnx_provenance,
            atol=1e-4,
            uses_opset=True,
        ),
    )
}


def get_format(name: str) -> ExportFormat:
    """The format called ``name`` (names come from the CLI's choices, so a miss is a programming error)."""
    return EXPORT_FORMATS[name]
