"""OpenVINO IR (FP32/FP16/INT8, embedded preprocessing) from an exported ONNX graph; run by the CPU plugin.

``format`` (conversion, rt_info), ``runtime`` (the one ``import openvino``, the process's one ``Core``),
``postprocess`` (NMS semantics matched to the reference), ``int8`` (NNCF's OpenVINO backend).
"""

from retinaface_export.converters.openvino.format import FORMAT

__all__ = ["FORMAT"]
