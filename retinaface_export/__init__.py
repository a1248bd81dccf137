"""retinaface-export: RetinaFace checkpoints to verified TorchScript, ONNX and OpenVINO artifacts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retinaface-export")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
