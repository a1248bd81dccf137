"""TorchScript: traced from the PyTorch model; run by torch.

``format`` (the trace and its provenance), ``runtime`` (the one ``torch.jit.load`` of an artifact),
``trust`` (the code check every file passes before it is loaded), ``postprocess`` (decode/NMS scripted
around the trace).
"""

from retinaface_export.converters.torchscript.format import FORMAT

__all__ = ["FORMAT"]
