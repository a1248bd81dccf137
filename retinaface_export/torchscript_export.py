"""TorchScript export: one trace per checkpoint, written once per artifact with its own provenance."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from retinaface_export.sizes import InputSize

PROVENANCE_FILE = "provenance.json"


class TorchScriptExporter:
    """Traces ``model`` once on ``example``; :meth:`artifact` serialises that trace for each size.

    The trace records sizes through ``Tensor.size`` calls, so one trace runs at every input size and batch;
    the exporter verifies every size it claims, so a trace that did not generalise would be caught there.
    """

    def __init__(self, model: torch.nn.Module, example: torch.Tensor, opset: int) -> None:
        del opset  # TorchScript has none; the signature is the format table's
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            self._traced = torch.jit.trace(model, (example,), check_trace=False)

    def artifact(
        self, size: InputSize | None, batch: int, num_anchors: int | None, provenance: dict[str, Any]
    ) -> bytes:
        """The trace with ``provenance.json`` inside (the shapes are the provenance's business)."""
        del size, batch, num_anchors
        buffer = io.BytesIO()
        torch.jit.save(self._traced, buffer, _extra_files={PROVENANCE_FILE: json.dumps(provenance, sort_keys=True)})
        return buffer.getvalue()


def read_torchscript_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance stored in a TorchScript file ({} when there is none)."""
    extra = {PROVENANCE_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[PROVENANCE_FILE]) if extra[PROVENANCE_FILE] else {}
