r"""torch running TorchScript files: the only module that ``torch.jit.load``\ s an artifact.

A file is loaded only after :func:`~retinaface_export.converters.torchscript.trust.checked_torchscript_bytes`
found its code to be what this exporter writes, and what is loaded is the bytes that were checked.
torch's thread count is process-wide (``torch.set_num_threads``): the command decides it, never a runner.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from retinaface_export.converters.torchscript.archive import PROVENANCE_FILE
from retinaface_export.converters.torchscript.trust import checked_torchscript_bytes
from retinaface_export.eager import eager_runner
from retinaface_export.format_api import Runner, Runtime


def load_module(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(scripted module in eval mode, provenance)`` of a checked TorchScript file, read once."""
    import torch

    extra = {PROVENANCE_FILE: ""}
    module = torch.jit.load(io.BytesIO(checked_torchscript_bytes(path)), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[PROVENANCE_FILE]) if extra[PROVENANCE_FILE] else {}


class TorchScriptRuntime(Runtime):
    """torch's TorchScript interpreter; ``threads`` is torch's process-wide setting, left to the command."""

    name = "torchscript"
    libraries = ("torch",)

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        del threads, optimize  # runs as traced, on torch's process-wide threads
        return eager_runner(load_module(path)[0])


RUNTIME = TorchScriptRuntime()
