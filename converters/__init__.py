"""Converters from an exported ONNX model to deployment formats, one module per target.

Installed as ``retinaface_export.converters``. Each module takes a path and options and returns what it
made; none writes files (``retinaface-convert`` does, atomically, through the manifest). Heavy libraries
are imported inside the functions.
"""

from __future__ import annotations

# `retinaface-convert --to` value -> (module, artifact format it produces); the command reads this table.
CONVERTERS: dict[str, tuple[str, str]] = {
    "onnxsim": ("retinaface_export.converters.onnxsim", "onnxsim"),
    "openvino": ("retinaface_export.converters.openvino", "openvino"),
}


def list_converters() -> list[str]:
    """Registered converter names, sorted."""
    return sorted(CONVERTERS)
