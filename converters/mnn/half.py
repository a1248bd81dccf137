"""Convolution weights rounded to the nearest half before ``mnnconvert --fp16``, which truncates them.

``mnnconvert --fp16`` (MNN 3.6.1, ``tools/converter/source/common/SaveHalfFloat.cpp``) casts each
convolution weight with ``half_float::half(w)`` from half.hpp 1.x, whose default rounding
(``HALF_ROUND_STYLE`` -1) truncates toward zero: every weight loses up to one half-ulp more than rounding to
nearest would, always toward zero, and the bias adds up through deep networks. On the synthetic Resnet50 at
640 (crowd photo) the file was 0.97% / 5.4% / 0.95% of range off on boxes / scores / landmarks (6.9% on
scores over the verification photos): exactly what ONNX Runtime gives with the convolution weights
truncated to half, while rounding them to nearest gives 0.17% / 1.3% / 0.20%. Weights already exact in half
pass through the truncating cast unchanged, so rounding them to nearest here makes MNN store the nearest
half (still MNN's own FP16 storage, ``quanParameter`` type 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# What the conversion records about it (manifest row and bizCode).
WEIGHT_ROUNDING = (
    "convolution weights rounded to the nearest float16 before mnnconvert --fp16 (which truncates toward zero)"
)


# Largest finite half: MNN clamps weights to it before the cast, so do we (a larger weight would become inf).
HALF_MAX = float(np.finfo(np.float16).max)


def nearest_half(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` clamped to ±:data:`HALF_MAX` and rounded to the nearest float16 (ties to even), as float32."""
    return np.clip(values, -HALF_MAX, HALF_MAX).astype(np.float16).astype(np.float32)


def round_convolution_weights(source: Path, target: Path) -> int:
    """Write ``source`` (ONNX) to ``target`` with every ``Conv`` weight rounded to the nearest half; the count.

    Biases and every other tensor are left as they are (MNN keeps biases in float32).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1}
    rounded = 0
    for initializer in model.graph.initializer:
        if initializer.name in weights and initializer.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(initializer)
            initializer.CopyFrom(numpy_helper.from_array(nearest_half(values), initializer.name))
            rounded += 1
    onnx.save(model, str(target))
    return rounded
