"""Converters from an exported ONNX model to deployment formats, one module per target.

Installed as ``retinaface_export.converters``. Each converter registers itself in :data:`CONVERTERS`
under the name ``retinaface-convert --to`` accepts; it takes a model or path and options, returns what
it made, and never writes files (the command does, atomically, through the manifest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# name -> converter function; empty until the first converter lands (issue: retinaface-convert).
CONVERTERS: dict[str, Callable[..., Any]] = {}


def list_converters() -> list[str]:
    """Registered converter names, sorted."""
    return sorted(CONVERTERS)
