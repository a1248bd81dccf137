"""What every artifact and manifest records about how it was made."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from retinaface_export import __version__

TOOL_NAME = "retinaface-export"
_TRACKED_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of Python, this tool and the libraries that shape an artifact's numerics."""
    found = {"python": platform.python_version(), TOOL_NAME: __version__}
    for package in _TRACKED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
