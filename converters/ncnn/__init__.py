"""ncnn: converted from the TorchScript artifact with pnnx (FP32, FP16); run by the ``ncnn`` package.

``format`` (pnnx with the options that keep PyTorch's numerics, the contract's blob names, FP16 weights,
the ``.ncnn.json`` sidecar), ``runtime`` (the one ``import ncnn``: the options each precision is verified
with, the runner that loops over the batch), ``trust`` (the ``.param`` validator, the ``.bin`` layout and the
sidecar, checked before ncnn parses anything).
"""

from retinaface_export.converters.ncnn.format import FORMAT

__all__ = ["FORMAT"]
