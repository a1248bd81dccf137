"""INT8 of an in-memory ONNX model for :mod:`retinaface_export.quantize` (NNCF's ONNX backend, static QDQ)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from retinaface_export.converters.onnx.runtime import run_model

_QUANTISABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_QUANTISER = "DequantizeLinear"


class OnnxInt8:
    """:class:`~retinaface_export.quantize.Int8Backend` for ``onnx.ModelProto``."""

    name = "onnx"
    # NNCF 3.4's full bias correction fails on RetinaFace's ONNX graph (ONNX Runtime: "Duplicate
    # definition-site" of an FPN tensor): the fast one
    fast_bias_correction = True

    def prepare(self) -> None:
        return None

    def run(self, model: Any, inputs: Iterable[np.ndarray]) -> list[list[np.ndarray]]:
        return run_model(model, list(inputs))

    def feed(self, model: Any) -> Callable[[np.ndarray], Any]:
        initializers = {tensor.name for tensor in model.graph.initializer}
        name = next(i.name for i in model.graph.input if i.name not in initializers)
        return lambda data: {name: data}  # ONNX Runtime wants a name → array dict

    def float_layers(self, model: Any) -> list[str]:
        producer = {out: node.op_type for node in model.graph.node for out in node.output}
        return [
            node.name
            for node in model.graph.node
            if node.op_type in _QUANTISABLE and producer.get(node.input[0]) != _QUANTISER
        ]

    def quantisable_count(self, model: Any) -> int:
        return sum(node.op_type in _QUANTISABLE for node in model.graph.node)


INT8 = OnnxInt8()
