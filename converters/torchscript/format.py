"""TorchScript: traced from the PyTorch model at each artifact's own size, with its provenance; run by torch.

TorchScript is code: a file is loaded only after its code was found to be exactly what this exporter writes
(``trust``), and what is loaded is the bytes that were checked (``runtime``).

The trace records sizes through ``Tensor.size`` calls, so a trace runs at every input size and batch (the
dynamic artifact relies on it; the export verifies every size it claims). Each fixed-size artifact is still
traced at its own size and batch: the archive keeps its traced example input, which tools such as pnnx read
as the model's input shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinaface_export.converters.torchscript.archive import archive_bytes, trace
from retinaface_export.converters.torchscript.runtime import RUNTIME, load_module
from retinaface_export.eager import eager_runner
from retinaface_export.format_api import ArtifactFormat, Job, Runner

if TYPE_CHECKING:
    from retinaface_export.anchors import AnchorConfig


class TorchScriptExporter:
    """Traces ``model`` on ``example`` (the job's size and batch); :meth:`artifact` writes that trace."""

    def __init__(self, model, example, opset: int) -> None:
        del opset  # TorchScript has none; the signature is the format interface's
        self._traced = trace(model, example)

    def artifact(self, job: Job, anchors: AnchorConfig, provenance: dict[str, Any]) -> bytes:
        """The trace (wrapped in the job's scripted post-processing) with ``provenance.json`` inside."""
        return archive_bytes(self._traced, anchors, job.postprocess, job.size, provenance)


class TorchScriptFormat(ArtifactFormat):
    """TorchScript traced from the PyTorch model, run by torch."""

    name = "torchscript"
    suffix = ".torchscript.pt"
    runtime = RUNTIME
    exported = True

    def exporter(self, model, example, opset: int) -> TorchScriptExporter:
        return TorchScriptExporter(model, example, opset)

    def exporter_key(self, job: Job) -> Any:
        """One trace per size and batch (see the module's notes)."""
        return (job.size, job.batch)

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """Provenance and runner from one check and one ``torch.jit.load``."""
        del threads, optimize
        module, provenance = load_module(path)
        return provenance, eager_runner(module)

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return load_module(path)[1]


FORMAT = TorchScriptFormat()
