"""The TorchScript file this exporter writes: a trace, its scripted post-processing, its provenance.

The one place that knows how the archive is made: the format's exporter writes artifacts with it and the
trust check makes its reference archives with it, so the two cannot drift apart.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from retinaface_export.anchors import AnchorConfig
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.sizes import InputSize

PROVENANCE_FILE = "provenance.json"


def trace(model: Any, example: Any) -> Any:
    """``torch.jit.trace`` of ``model`` on ``example`` (tracer warnings silenced: sizes are traced as calls)."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, (example,), check_trace=False)


def archive_bytes(
    traced: Any,
    anchors: AnchorConfig,
    postprocess: PostprocessSpec,
    size: InputSize | None,
    provenance: dict[str, Any],
) -> bytes:
    """The file's bytes: ``traced`` (wrapped in ``postprocess`` unless raw) with ``provenance.json`` inside."""
    import torch

    from retinaface_export.converters.torchscript.postprocess import script_with_postprocess  # imports torch

    module = traced
    if not postprocess.raw:
        module = script_with_postprocess(traced, anchors, postprocess.mode, postprocess.settings, size)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={PROVENANCE_FILE: json.dumps(provenance, sort_keys=True)})
    return buffer.getvalue()
