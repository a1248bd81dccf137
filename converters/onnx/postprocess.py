"""Append decode or decode + NMS to an exported RetinaFace ONNX graph (see ``postprocess_settings``).

The maths is biubug6's ``prior_box.py``, ``box_utils.decode``/``decode_landm`` and ``detect.py``, in the
order of ``detection.postprocess``: threshold, top-k, decode, NMS, keep-top-k. Priors are a constant at a
fixed size; in a dynamic graph they are computed from the input's shape with the same float32 values
(``(i + 0.5)·step / H`` and ``min_size / W`` are one correctly rounded division each, as numpy's float64
result rounded to float32 is).

NMS is ONNX ``NonMaxSuppression`` (the runtimes' own operator) on ``x1, y1, x2 + 1, y2 + 1``: its
``(x2 - x1)·(y2 - y1)`` areas and ``min(x2) - max(x1)`` overlaps are then the reference's ``+1`` ones, so
the IoU is ``py_cpu_nms``'s up to float32 rounding. ONNX Runtime suppresses at IoU > threshold as the
reference does; OpenVINO's NMS at IoU ≥ threshold, which ``postprocess_openvino`` corrects after
conversion. ``max_output_boxes_per_class`` = K is the reference's keep-top-k, since NMS selects in score
order. The selected indices are turned into a zero-padded N×K×15 tensor without relying on the order the
runtime lists them in: a per-image mask over the score-sorted candidates, whose running count is each
face's row.

Only operators of opset ≤ 11 are used (``Unsqueeze`` and the reductions switch to their later signatures
by the model's opset), so every opset the exporter offers (11..20) works.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from retinaface_export.anchors import AnchorConfig
from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.errors import UsageError
from retinaface_export.postprocess.settings import (
    DECODE_OUTPUTS,
    DETECTION_WIDTH,
    NMS_OUTPUTS,
    NmsSettings,
    PostprocessMode,
    check_mode,
)
from retinaface_export.sizes import InputSize

# NonMaxSuppression (10), CumSum, ScatterND, GatherND, GatherElements, Range (11).
MIN_POSTPROCESS_OPSET = 11
_PREFIX = "postprocess/"


class _Builder:
    """Nodes and initializers appended to a graph, named under ``postprocess/``, for one opset."""

    def __init__(self, opset: int, taken: set[str]) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        while f"{_PREFIX}{hint}_{self._count}" in self._taken:
            self._count += 1
        return f"{_PREFIX}{hint}_{self._count}"

    def const(self, value, dtype: type, hint: str = "const") -> str:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), self.name(hint))
        self.initializers.append(tensor)
        return tensor.name

    def i64(self, values) -> str:
        return self.const(values, np.int64, "i64")

    def f32(self, values) -> str:
        return self.const(values, np.float32, "f32")

    def op(self, op_type: str, inputs: list[str], out: str | None = None, n_out: int = 1, **attrs):
        outputs = [out] if out is not None else [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(f"{op_type}_node"), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.i64(axes)])
        return self.op("Unsqueeze", [x], axes=axes)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int, out: str | None = None) -> str:
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, [x, self.i64(axes)], out=out, keepdims=keepdims)
        return self.op(op_type, [x], out=out, axes=axes, keepdims=keepdims)

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.i64([start]), self.i64([end]), self.i64([axis])])

    def dim(self, shape: str, index: int) -> str:
        """One dimension of a ``Shape`` output as a 1-element int64 tensor."""
        return self.op("Gather", [shape, self.i64([index])], axis=0)

    def zeros(self, shape: str, dtype: int) -> str:
        return self.op("ConstantOfShape", [shape], value=helper.make_tensor("value", dtype, [1], [0]))


def _model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UsageError("the ONNX model imports no default-domain opset")


def _declared_hw(model: onnx.ModelProto) -> tuple[int | None, int | None]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise UsageError(f"input {INPUT_NAME!r} must be N×3×H×W, declared with {len(dims)} dimensions")
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[2:])  # type: ignore[return-value]


def _check_raw_graph(model: onnx.ModelProto, size: InputSize | None) -> None:
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise UsageError(
            f"expected the raw RetinaFace graph (input {INPUT_NAME}, outputs {', '.join(OUTPUT_NAMES)}); "
            f"got inputs {inputs} and outputs {outputs}"
        )
    height, width = _declared_hw(model)
    if size is not None and (height, width) not in ((size.height, size.width), (None, None)):
        raise UsageError(f"the graph's input is declared {height}x{width}, not {size}")


def _static_priors(b: _Builder, anchors: AnchorConfig, size: InputSize) -> tuple[str, str, str]:
    priors = b.const(prior_boxes(anchors, size.height, size.width), np.float32, "priors")
    width, height = float(size.width), float(size.height)
    return priors, b.f32([width, height]), b.f32([width, height, width, height])


def _dynamic_priors(b: _Builder, anchors: AnchorConfig) -> tuple[str, str, str]:
    """Priors (A×4) and the pixel scales computed from the input's shape, as ``detection.priors`` does."""
    shape = b.op("Shape", [INPUT_NAME])
    height, width = b.dim(shape, 2), b.dim(shape, 3)
    height_f, width_f = b.op("Cast", [height], to=TensorProto.FLOAT), b.op("Cast", [width], to=TensorProto.FLOAT)
    per_cell = anchors.anchors_per_location
    levels = []
    for step, min_sizes in zip(anchors.steps, anchors.min_sizes, strict=True):
        # ⌈side / step⌉ in integers: (side + step - 1) // step
        rows = b.op("Div", [b.op("Add", [height, b.i64([step - 1])]), b.i64([step])])
        cols = b.op("Div", [b.op("Add", [width, b.i64([step - 1])]), b.i64([step])])

        def centres(count: str, side: str, step: int = step) -> str:
            index = b.op("Range", [b.i64(0), b.op("Reshape", [count, b.i64([])]), b.i64(1)])
            index_f = b.op("Cast", [index], to=TensorProto.FLOAT)
            return b.op("Div", [b.op("Mul", [b.op("Add", [index_f, b.f32(0.5)]), b.f32(float(step))]), side])

        sizes = b.f32([float(m) for m in min_sizes])
        target = b.op("Concat", [rows, cols, b.i64([per_cell, 1])], axis=0)
        parts = [
            b.op("Reshape", [centres(cols, width_f), b.i64([1, -1, 1, 1])]),  # cx varies along columns
            b.op("Reshape", [centres(rows, height_f), b.i64([-1, 1, 1, 1])]),  # cy along rows
            b.op("Reshape", [b.op("Div", [sizes, width_f]), b.i64([1, 1, -1, 1])]),
            b.op("Reshape", [b.op("Div", [sizes, height_f]), b.i64([1, 1, -1, 1])]),
        ]
        grid = b.op("Concat", [b.op("Expand", [part, target]) for part in parts], axis=3)
        levels.append(b.op("Reshape", [grid, b.i64([-1, 4])]))  # rows, cols, anchor size: the heads' order
    priors = b.op("Concat", levels, axis=0)
    scale_xy = b.op("Concat", [width_f, height_f], axis=0)
    return priors, scale_xy, b.op("Concat", [width_f, height_f, width_f, height_f], axis=0)


def _decode(
    b: _Builder, anchors: AnchorConfig, loc: str, pre: str, priors: str, scales: tuple[str, str], names=(None, None)
) -> tuple[str, str]:
    """Regressions (…×4, …×10) with their priors (…×4) to pixel boxes and landmarks (``detection.postprocess``).

    Works on all anchors (A×4 priors against N×A rows) and on gathered candidates (N×k×4 against N×k).
    """
    scale_xy, scale_box = scales
    prior_xy, prior_wh = b.slice(priors, 0, 2, -1), b.slice(priors, 2, 4, -1)
    var0, var1 = b.f32(anchors.variance[0]), b.f32(anchors.variance[1])
    loc_xy, loc_wh = b.slice(loc, 0, 2, -1), b.slice(loc, 2, 4, -1)
    centres = b.op("Add", [prior_xy, b.op("Mul", [b.op("Mul", [loc_xy, var0]), prior_wh])])
    sizes = b.op("Mul", [prior_wh, b.op("Exp", [b.op("Mul", [loc_wh, var1])])])
    top_left = b.op("Sub", [centres, b.op("Div", [sizes, b.f32(2.0)])])
    corners = b.op("Concat", [top_left, b.op("Add", [top_left, sizes])], axis=-1)
    boxes = b.op("Mul", [corners, scale_box], out=names[0])
    points = b.op("Reshape", [pre, b.i64([0, 0, 5, 2])])
    offsets = b.op("Mul", [b.op("Mul", [points, var0]), b.unsqueeze(prior_wh, [-2])])
    decoded = b.op("Add", [b.unsqueeze(prior_xy, [-2]), offsets])
    landmarks = b.op("Reshape", [b.op("Mul", [decoded, scale_xy]), b.i64([0, 0, 10])], out=names[1])
    return boxes, landmarks


def _gather_rows(b: _Builder, rows: str, index: str, width: int) -> str:
    """``rows`` N×A×width at ``index`` N×k: N×k×width."""
    target = b.op("Concat", [b.op("Shape", [index]), b.i64([width])], axis=0)
    return b.op("GatherElements", [rows, b.op("Expand", [b.unsqueeze(index, [2]), target])], axis=1)


def _candidates(b: _Builder, anchors: AnchorConfig, priors: str, scales, scores: str, settings: NmsSettings) -> str:
    """The decoded N×k×15 rows of the best k faces per image, best first, k = min(top_k, most above threshold).

    Taking the top k before thresholding selects what the reference's threshold-then-top-k selects; k is
    cut to the largest count above the threshold in the batch (at least 1, as TopK needs), so only those
    candidates are decoded; the NMS drops the ones of an image that are not above it.
    """
    loc, _, pre = OUTPUT_NAMES
    above = b.op("Cast", [b.op("Greater", [scores, b.f32(settings.score_threshold)])], to=TensorProto.INT64)
    most = b.reduce("ReduceMax", b.reduce("ReduceSum", above, [1], keepdims=0), [0], keepdims=1)
    k = b.reduce("ReduceMin", b.op("Concat", [most, b.i64([settings.top_k])], axis=0), [0], keepdims=1)
    k = b.reduce("ReduceMax", b.op("Concat", [k, b.i64([1])], axis=0), [0], keepdims=1)
    top_scores, top_index = b.op("TopK", [scores, k], n_out=2, axis=1, largest=1, sorted=1)
    boxes, landmarks = _decode(
        b,
        anchors,
        _gather_rows(b, loc, top_index, 4),
        _gather_rows(b, pre, top_index, 10),
        b.op("Gather", [priors, top_index], axis=0),
        scales,
    )
    return b.op("Concat", [boxes, b.unsqueeze(top_scores, [2]), landmarks], axis=2)


def _nms(b: _Builder, candidates: str, settings: NmsSettings) -> tuple[str, str]:
    """``detections`` N×K×15 and ``num_detections`` N from the N×k×15 candidates, best first."""
    plus_one = b.op("Add", [b.slice(candidates, 0, 4, 2), b.f32([0.0, 0.0, 1.0, 1.0])])
    candidate_scores = b.op("Gather", [candidates, b.i64(4)], axis=2)
    selected = b.op(
        "NonMaxSuppression",
        [
            plus_one,
            b.unsqueeze(candidate_scores, [1]),
            b.i64([settings.max_detections]),
            b.f32([settings.nms_iou]),
            b.f32([settings.score_threshold]),
        ],
    )  # M×3: image, class (0), candidate
    image_candidate = b.op("Gather", [selected, b.i64([0, 2])], axis=1)
    ones = b.op(
        "ConstantOfShape",
        [b.dim(b.op("Shape", [selected]), 0)],
        value=helper.make_tensor("value", TensorProto.INT64, [1], [1]),
    )
    kept = b.op("ScatterND", [b.zeros(b.op("Shape", [candidate_scores]), TensorProto.INT64), image_candidate, ones])
    row = b.op("CumSum", [kept, b.i64(1)], exclusive=1)  # kept candidates before this one, in its image
    position = b.op(
        "Concat",
        [b.op("Gather", [selected, b.i64([0])], axis=1), b.unsqueeze(b.op("GatherND", [row, image_candidate]), [1])],
        axis=1,
    )
    batch = b.dim(b.op("Shape", [INPUT_NAME]), 0)
    out_shape = b.op("Concat", [batch, b.i64([settings.max_detections, DETECTION_WIDTH])], axis=0)
    updates = b.op("GatherND", [candidates, image_candidate])
    detections = b.op("ScatterND", [b.zeros(out_shape, TensorProto.FLOAT), position, updates], out=NMS_OUTPUTS[0])
    num = b.reduce("ReduceSum", kept, [1], keepdims=0, out=NMS_OUTPUTS[1])
    return detections, num


def _output_info(model: onnx.ModelProto, mode: str, settings: NmsSettings) -> list[onnx.ValueInfoProto]:
    """The new outputs' declarations, batch and anchor dimensions taken from the raw outputs."""
    raw = model.graph.output[0].type.tensor_type.shape.dim
    batch, anchors = (d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in raw[:2])
    shapes = {
        DECODE_OUTPUTS[0]: (TensorProto.FLOAT, [batch, anchors, 4]),
        DECODE_OUTPUTS[1]: (TensorProto.FLOAT, [batch, anchors]),
        DECODE_OUTPUTS[2]: (TensorProto.FLOAT, [batch, anchors, 10]),
        NMS_OUTPUTS[0]: (TensorProto.FLOAT, [batch, settings.max_detections, DETECTION_WIDTH]),
        NMS_OUTPUTS[1]: (TensorProto.INT64, [batch]),
    }
    names = DECODE_OUTPUTS if mode == PostprocessMode.DECODE else NMS_OUTPUTS
    return [helper.make_tensor_value_info(name, *shapes[name]) for name in names]


def add_postprocess(
    model: onnx.ModelProto,
    anchors: AnchorConfig,
    mode: str,
    settings: NmsSettings | None = None,
    size: InputSize | None = None,
) -> onnx.ModelProto:
    """A copy of the raw RetinaFace graph ``model`` with ``mode``'s post-processing appended.

    Args:
        model: the exported graph (input ``data``, the three raw outputs), fixed-size or dynamic; pin its
            shapes before calling, the batch dimension is carried to the new outputs.
        anchors: the checkpoint's anchors (steps, min_sizes, variance).
        mode: ``none`` (a copy, unchanged), ``decode`` or ``nms`` (see ``postprocess_settings``).
        settings: thresholds of ``nms`` (default :class:`NmsSettings`); ignored otherwise.
        size: the input size the graph runs at, whose priors become constants; None for a dynamic graph,
            whose priors are computed from the input's shape.

    Raises:
        UsageError: an unknown mode, a graph that is not the raw contract, an opset below 11, or a
            ``size`` other than the graph's declared input size.
    """
    check_mode(mode)
    settings = settings or NmsSettings()
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if mode == PostprocessMode.NONE:
        return result
    _check_raw_graph(model, size)
    opset = _model_opset(model)
    if opset < MIN_POSTPROCESS_OPSET:
        raise UsageError(f"post-processing in the graph needs opset {MIN_POSTPROCESS_OPSET} or later, got {opset}")
    graph = result.graph
    taken = {name for node in graph.node for name in [*node.input, *node.output]}
    taken |= {t.name for t in graph.initializer} | {v.name for v in graph.input}
    clash = taken & {*DECODE_OUTPUTS, *NMS_OUTPUTS}
    if clash:
        raise UsageError(f"the graph already has tensors named {sorted(clash)}")
    b = _Builder(opset, taken)
    loc, conf, pre = OUTPUT_NAMES
    priors, *scales = _static_priors(b, anchors, size) if size else _dynamic_priors(b, anchors)
    face = DECODE_OUTPUTS[1] if mode == PostprocessMode.DECODE else None
    scores = b.op("Gather", [conf, b.i64(1)], out=face, axis=2)  # [background, face] → face
    if mode == PostprocessMode.DECODE:
        _decode(b, anchors, loc, pre, priors, tuple(scales), names=(DECODE_OUTPUTS[0], DECODE_OUTPUTS[2]))
    else:
        _nms(b, _candidates(b, anchors, priors, tuple(scales), scores, settings), settings)
    new_outputs = _output_info(model, mode, settings)
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    del graph.output[:]
    graph.output.extend(new_outputs)
    onnx.checker.check_model(result, full_check=True)
    return result
