"""OpenVINO models of ``nms`` graphs: make OpenVINO's NMS keep the reference's IoU rule.

biubug6's ``py_cpu_nms`` suppresses a box when its IoU with a better one is above the threshold
(``ovr <= thresh`` survive), as ONNX Runtime's ``NonMaxSuppression`` does. OpenVINO's NMS (measured with
openvino 2026.4, CPU plugin) suppresses at IoU ≥ threshold. On float32 IoUs, "≥ the next float32 above
t" is exactly "> t", so the threshold constant is moved up by one unit in the last place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retinaface_export.converters.openvino.runtime import openvino_module
from retinaface_export.errors import UsageError

_NMS_TYPE = "NonMaxSuppression"
_IOU_INPUT = 3
# Friendly name of an adjusted threshold: applying the adjustment twice leaves it as it is.
_MARK = "postprocess/nms_iou_strictly_above"


def match_reference_nms(model: Any) -> int:
    """Adjust every NMS of the ``openvino.Model`` ``model`` in place; returns how many were adjusted.

    Call it on the model ``openvino.convert_model`` returns for an ``nms`` graph, before saving it. An
    IR saved with ``compress_to_fp16`` must keep the threshold in float32 (see the tests).

    Raises:
        UsageError: an NMS whose IoU threshold is not a constant.
    """
    ov = openvino_module()

    adjusted = 0
    for op in model.get_ops():
        if op.get_type_name() != _NMS_TYPE or op.get_input_size() <= _IOU_INPUT:
            continue
        source = op.input_value(_IOU_INPUT).get_node()
        if source.get_friendly_name() == _MARK:
            continue
        if source.get_type_name() != "Constant":
            raise UsageError(f"NMS {op.get_friendly_name()}: the IoU threshold is computed, not a constant")
        threshold = np.asarray(source.get_data(), dtype=np.float32)
        strict = ov.op.Constant(np.array(np.nextafter(threshold, np.float32(np.inf)), dtype=np.float32))
        strict.set_friendly_name(_MARK)
        op.input(_IOU_INPUT).replace_source_output(strict.output(0))
        adjusted += 1
    return adjusted
