"""TorchScript: one trace per checkpoint, written once per artifact with its own provenance, run by torch.

TorchScript is code: a file is loaded only after :func:`~retinaface_export.trust.checked_torchscript_bytes`
found its code to be exactly what this exporter writes, and what is loaded is the bytes that were checked.

The trace records sizes through ``Tensor.size`` calls, so one trace runs at every input size and batch; the
export verifies every size it claims, so a trace that did not generalise would be caught there.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinaface_export.format_api import ArtifactFormat, Job, Runner
from retinaface_export.runtimes import eager_runner

if TYPE_CHECKING:
    from retinaface_export.anchors import AnchorConfig
from retinaface_export.trust import checked_torchscript_bytes

PROVENANCE_FILE = "provenance.json"


class TorchScriptExporter:
    """Traces ``model`` once on ``example``; :meth:`artifact` serialises that trace for each size."""

    def __init__(self, model, example, opset: int) -> None:
        import torch

        del opset  # TorchScript has none; the signature is the format interface's
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            self._traced = torch.jit.trace(model, (example,), check_trace=False)

    def artifact(self, job: Job, anchors: AnchorConfig, provenance: dict[str, Any]) -> bytes:
        """The trace (wrapped in the job's scripted post-processing) with ``provenance.json`` inside."""
        import torch

        module = self._traced
        if job.postprocess.mode != "none":
            from retinaface_export.postprocess_torchscript import script_with_postprocess

            post = job.postprocess
            module = script_with_postprocess(self._traced, anchors, post.mode, post.settings, job.size)
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files={PROVENANCE_FILE: json.dumps(provenance, sort_keys=True)})
        return buffer.getvalue()


class TorchScriptFormat(ArtifactFormat):
    """TorchScript traced from the PyTorch model, run by torch."""

    name = "torchscript"
    suffix = ".torchscript.pt"
    backend = "torchscript"
    exported = True

    def exporter(self, model, example, opset: int) -> TorchScriptExporter:
        return TorchScriptExporter(model, example, opset)

    def open_runner(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        import torch

        del optimize  # TorchScript runs as traced
        if threads:
            torch.set_num_threads(threads)
        return eager_runner(torch.jit.load(io.BytesIO(checked_torchscript_bytes(path)), map_location="cpu").eval())

    def read_provenance(self, path: Path) -> dict[str, Any]:
        import torch

        extra = {PROVENANCE_FILE: ""}
        torch.jit.load(io.BytesIO(checked_torchscript_bytes(path)), map_location="cpu", _extra_files=extra)
        return json.loads(extra[PROVENANCE_FILE]) if extra[PROVENANCE_FILE] else {}


FORMAT = TorchScriptFormat()
