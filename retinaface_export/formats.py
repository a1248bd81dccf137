"""The table every command reads: artifact formats, one package each in ``converters/``.

CLI choices, planning, file names, the detector's backend choice, verification, parity, bench rows and the
tests' parametrisation all read :data:`FORMATS`. Adding a format (with a runtime of its own or not) is one
package implementing :class:`~retinaface_export.format_api.ArtifactFormat` and one row below.
"""

from __future__ import annotations

from pathlib import Path

from retinaface_export.converters import litert, mnn, ncnn, onnx, onnxsim, openvino, torchscript
from retinaface_export.format_api import ArtifactFormat, Runtime

FORMATS: dict[str, ArtifactFormat] = {
    fmt.name: fmt
    for fmt in (
        torchscript.FORMAT,
        onnx.FORMAT,
        onnxsim.FORMAT,
        openvino.FORMAT,
        ncnn.FORMAT,
        mnn.FORMAT,
        litert.FORMAT,
    )
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


def runtimes() -> dict[str, Runtime]:
    """Every format's runtime by name, in table order."""
    return {fmt.runtime.name: fmt.runtime for fmt in FORMATS.values()}


def runtime_libraries() -> tuple[str, ...]:
    """The distributions every runtime (and so every artifact's numerics) depends on, for manifests."""
    return tuple(dict.fromkeys(library for runtime in runtimes().values() for library in runtime.libraries))
