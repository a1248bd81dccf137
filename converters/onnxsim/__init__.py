"""onnxsim: an exported ONNX graph simplified, checked against the original; run by ONNX Runtime."""

from retinaface_export.converters.onnxsim.format import FORMAT

__all__ = ["FORMAT"]
