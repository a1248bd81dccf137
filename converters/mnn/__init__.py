"""MNN (``.mnn``, FP32/FP16) from an exported ONNX graph with MNN's converter; run by MNN's CPU backend.

``format`` (conversion with ``mnnconvert``, provenance in ``bizCode``, what is refused and why), ``runtime``
(the one ``import MNN``: the Module API with the verified options, the converter in a child process, MNN's
standard-output noise kept off ours), ``trust`` (the flatbuffer, provenance, seal and contract checked in
pure Python before MNN opens a file).
"""

from retinaface_export.converters.mnn.format import FORMAT

__all__ = ["FORMAT"]
