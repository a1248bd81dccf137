"""The tables every command reads: artifact formats (one module each in ``converters/``), precision tolerances.

CLI choices, planning, file names, the detector's backend choice, parity, bench and the tests'
parametrisation all read :data:`FORMATS`. Adding a format is one module implementing
:class:`~retinaface_export.format_api.ArtifactFormat` and one row below.
"""

from __future__ import annotations

from pathlib import Path

from retinaface_export.comparison import Tolerance
from retinaface_export.converters import onnx, onnxsim, openvino, torchscript
from retinaface_export.format_api import ArtifactFormat

FORMATS: dict[str, ArtifactFormat] = {
    fmt.name: fmt
    for fmt in (
        torchscript.FORMAT,
        onnx.FORMAT,
        onnxsim.FORMAT,
        openvino.FORMAT,
    )
}

PRECISIONS: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5, range_fraction=None, min_f1=0.99, score_margin=0.0),
    "fp16": Tolerance(atol=None, rtol=0.0, range_fraction=0.03, min_f1=0.95, score_margin=0.02),
    "int8": Tolerance(atol=None, rtol=0.0, range_fraction=None, min_f1=0.95, score_margin=0.1),
}


def export_formats() -> list[str]:
    """Formats ``retinaface-export`` makes from the PyTorch model, in table order."""
    return [name for name, fmt in FORMATS.items() if fmt.exported]


def convert_targets() -> list[str]:
    """Formats ``retinaface-convert`` makes from another artifact, in table order."""
    return [name for name, fmt in FORMATS.items() if fmt.source_format is not None]


def format_for_path(path: Path) -> ArtifactFormat | None:
    """The format whose suffix ``path`` ends with (the longest such suffix), or None."""
    matches = [fmt for fmt in FORMATS.values() if path.name.endswith(fmt.suffix)]
    return max(matches, key=lambda fmt: len(fmt.suffix)) if matches else None
