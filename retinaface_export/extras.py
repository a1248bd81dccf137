"""Optional extras: a format whose runtime is an optional package imports it through :func:`import_extra`."""

from __future__ import annotations

import importlib
from types import ModuleType

from retinaface_export.errors import MissingExtraError


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtraError` naming the ``pip install`` that brings it.

    Args:
        module: the import name (``ncnn``, ``MNN``, ``ai_edge_litert.interpreter``).
        extra: the package extra that installs it (``retinaface-export[extra]``).
        purpose: what needs it, for the message (``running .ncnn.param files``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, purpose) from exc
