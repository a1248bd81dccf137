"""INT8 of an in-memory ``openvino.Model`` for :mod:`retinaface_export.quantize` (NNCF's OpenVINO backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from retinaface_export.converters.openvino.runtime import openvino_module, run_model

_QUANTISABLE = frozenset(
    {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
)
_QUANTISER = "FakeQuantize"


class OpenVinoInt8:
    """:class:`~retinaface_export.quantize.Int8Backend` for ``openvino.Model`` (FakeQuantize)."""

    name = "openvino"
    # the full bias correction: measured better held-out F1 (quantize.py's notes) for ~1.5x the time
    fast_bias_correction = False

    def prepare(self) -> None:
        """OpenVINO's numpy bridge made in this thread before NNCF imports openvino (see ``runtime``)."""
        openvino_module()

    def run(self, model: Any, inputs: Iterable[np.ndarray]) -> list[list[np.ndarray]]:
        return run_model(model, inputs)

    def feed(self, model: Any) -> Callable[[np.ndarray], Any]:
        return lambda data: data

    def float_layers(self, model: Any) -> list[str]:
        return [
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() in _QUANTISABLE and op.input_value(0).get_node().get_type_name() != _QUANTISER
        ]

    def quantisable_count(self, model: Any) -> int:
        return sum(op.get_type_name() in _QUANTISABLE for op in model.get_ordered_ops())


INT8 = OpenVinoInt8()
