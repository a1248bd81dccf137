"""TorchScript export: one trace, provenance as an extra file."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

PROVENANCE_FILE = "provenance.json"


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, provenance: dict[str, Any]) -> bytes:
    """Trace ``model`` on ``example`` and serialise it with ``provenance.json`` inside.

    The trace records sizes through ``Tensor.size`` calls, so it also runs at other input sizes; the
    exporter verifies every size it claims.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={PROVENANCE_FILE: json.dumps(provenance, sort_keys=True)})
    return buffer.getvalue()


def read_torchscript_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance stored in a TorchScript file ({} when there is none)."""
    extra = {PROVENANCE_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[PROVENANCE_FILE]) if extra[PROVENANCE_FILE] else {}
