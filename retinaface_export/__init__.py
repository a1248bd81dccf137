"""retinaface-export: RetinaFace checkpoints to verified TorchScript, ONNX and OpenVINO artifacts.

The main entry points are importable from here (see the README's "Python API"); each is imported on first
use, so ``import retinaface_export`` loads no model runtime (torch, ONNX, OpenVINO) and stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it, imported when the name is first read
_API = {
    "load_checkpoint": "retinaface_export.checkpoint",
    "LoadedCheckpoint": "retinaface_export.checkpoint",
    "synthetic_checkpoint": "retinaface_export.synthetic",
    "export_checkpoint": "retinaface_export.pipeline.export",
    "ExportOptions": "retinaface_export.pipeline.export",
    "convert_export": "retinaface_export.pipeline.convert",
    "ConvertOptions": "retinaface_export.pipeline.convert",
    "Manifest": "retinaface_export.manifest",
    "ArtifactRecord": "retinaface_export.manifest",
    "run_parity": "retinaface_export.parity",
    "packaged_golden_root": "retinaface_export.parity",
    "find_golden_sets": "retinaface_export.golden",
    "Detector": "retinaface_export.inference.detector",
    "DetectionConfig": "retinaface_export.detection.postprocess",
    "Face": "retinaface_export.detection.faces",
    "load_ground_truth": "retinaface_export.widerface",
    "read_predictions": "retinaface_export.widerface",
    "evaluate": "retinaface_export.evaluation",
    "read_image": "retinaface_export.images",
    "InputSize": "retinaface_export.sizes",
    "parse_size": "retinaface_export.sizes",
    "RetinaFaceExportError": "retinaface_export.errors",
}

__all__ = [
    "ArtifactRecord",
    "ConvertOptions",
    "DetectionConfig",
    "Detector",
    "ExportOptions",
    "Face",
    "InputSize",
    "LoadedCheckpoint",
    "Manifest",
    "RetinaFaceExportError",
    "__version__",
    "convert_export",
    "evaluate",
    "export_checkpoint",
    "find_golden_sets",
    "load_checkpoint",
    "load_ground_truth",
    "packaged_golden_root",
    "parse_size",
    "read_image",
    "read_predictions",
    "run_parity",
    "synthetic_checkpoint",
]

if TYPE_CHECKING:
    from retinaface_export.checkpoint import LoadedCheckpoint, load_checkpoint
    from retinaface_export.detection.faces import Face
    from retinaface_export.detection.postprocess import DetectionConfig
    from retinaface_export.errors import RetinaFaceExportError
    from retinaface_export.evaluation import evaluate
    from retinaface_export.golden import find_golden_sets
    from retinaface_export.images import read_image
    from retinaface_export.inference.detector import Detector
    from retinaface_export.manifest import ArtifactRecord, Manifest
    from retinaface_export.parity import packaged_golden_root, run_parity
    from retinaface_export.pipeline.convert import ConvertOptions, convert_export
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize, parse_size
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.widerface import load_ground_truth, read_predictions

    __version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from retinaface_export.version import tool_version

        value: Any = tool_version()
    elif name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    else:
        raise AttributeError(f"module 'retinaface_export' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
