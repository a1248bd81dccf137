"""ONNX: exported from the PyTorch model, FP16 and INT8 converted from it; run by ONNX Runtime.

``format`` (export, conversion, provenance), ``runtime`` (the one ``import onnxruntime``), ``trust`` (what
a file must be before a runtime opens it), ``postprocess`` (decode/NMS appended to the graph), ``int8``
(NNCF's ONNX backend).
"""

from retinaface_export.converters.onnx.format import FORMAT

__all__ = ["FORMAT"]
