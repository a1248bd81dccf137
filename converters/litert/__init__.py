"""LiteRT (TFLite): converted by litert-torch from the export's PyTorch model, run by LiteRT's interpreter.

``format`` (conversion from the checkpoint's network at the source's size, FP16 weights, provenance as a
flatbuffer metadata entry, what is refused and why), ``runtime`` (the one ``import ai_edge_litert``:
interpreter with pinned options, flatbuffer schema and writer), ``trust`` (what a ``.tflite`` file must be
before an interpreter is made from it).
"""

from retinaface_export.converters.litert.format import FORMAT

__all__ = ["FORMAT"]
