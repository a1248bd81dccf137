"""Post-processing inside artifacts (issue 13), on a stand-in network whose raw outputs the test chooses.

The stand-in's input carries the raw outputs (packed into ``data``), so each image of a batch gets its
own and the post-processing appended by ``add_postprocess`` / ``script_with_postprocess`` is checked
against ``reference_pipeline`` (detect.py transcribed) exactly: random outputs at every opset, IoU exactly
at the threshold (the ``+1`` rule and ``ovr <= thresh`` survival), nothing above the threshold, top-k
and keep-top-k limits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from reference_pipeline import reference_detections, reference_nms
from retinaface_export.converters.onnx.postprocess import add_postprocess
from retinaface_export.converters.openvino.postprocess import match_reference_nms
from retinaface_export.converters.torchscript.postprocess import greedy_nms, script_with_postprocess
from retinaface_export.errors import UsageError
from retinaface_export.postprocess.settings import NmsSettings, check_mode, covers, split_detections
from retinaface_export.sizes import InputSize
from retinaface_export.variants import get_variant

ANCHORS = get_variant("mobilenet0.25").anchors
REFERENCE_ANCHORS = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}
SIDE = 64
A = 2 * sum(math.ceil(SIDE / s) ** 2 for s in (8, 16, 32))  # 168 anchors at 64×64
WIDTHS = (4, 2, 10)


def _stand_in_onnx(opset: int, batch: int | None) -> onnx.ModelProto:
    """``data`` N×3×64×64 → the three raw outputs read from its first A·16 values."""
    n = batch or "batch"
    nodes, inits, outputs, offset = [], [], [], 0
    inits.append(helper.make_tensor("flat_shape", TensorProto.INT64, [2], [0, -1]))
    nodes.append(helper.make_node("Reshape", ["data", "flat_shape"], ["flat"]))
    for name, width in zip(("face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred"), WIDTHS, strict=True):
        inits += [
            helper.make_tensor(f"{name}_start", TensorProto.INT64, [1], [offset]),
            helper.make_tensor(f"{name}_end", TensorProto.INT64, [1], [offset + A * width]),
            helper.make_tensor(f"{name}_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor(f"{name}_shape", TensorProto.INT64, [3], [0, A, width]),
        ]
        nodes.append(helper.make_node("Slice", ["flat", f"{name}_start", f"{name}_end", f"{name}_axis"], [f"{name}_s"]))
        nodes.append(helper.make_node("Reshape", [f"{name}_s", f"{name}_shape"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, A, width]))
        offset += A * width
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, [n, 3, SIDE, SIDE])
    graph = helper.make_graph(nodes, "stand_in", [data], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


class _StandIn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchors = A

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.anchors
        flat = data.reshape(data.size(0), -1)
        loc = flat[:, : a * 4].reshape(-1, a, 4)
        conf = flat[:, a * 4 : a * 6].reshape(-1, a, 2)
        return loc, conf, flat[:, a * 6 : a * 16].reshape(-1, a, 10)


def _pack(loc: np.ndarray, conf: np.ndarray, pre: np.ndarray) -> np.ndarray:
    batch = len(loc)
    data = np.zeros((batch, 3 * SIDE * SIDE), np.float32)
    data[:, : A * 16] = np.concatenate([loc.reshape(batch, -1), conf.reshape(batch, -1), pre.reshape(batch, -1)], 1)
    return data.reshape(batch, 3, SIDE, SIDE)


def _random_outputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    loc = rng.normal(0, 0.5, (batch, A, 4)).astype(np.float32)
    face = rng.uniform(0, 1, (batch, A)).astype(np.float32)
    conf = np.stack([1 - face, face], axis=-1).astype(np.float32)
    return loc, conf, rng.normal(0, 1, (batch, A, 10)).astype(np.float32)


def _expected(loc, conf, pre, settings: NmsSettings) -> list[np.ndarray]:
    return [
        reference_detections(
            torch.from_numpy(loc[i : i + 1]),
            torch.from_numpy(conf[i : i + 1]),
            torch.from_numpy(pre[i : i + 1]),
            (SIDE, SIDE),
            REFERENCE_ANCHORS,
            settings.score_threshold,
            settings.nms_iou,
            settings.top_k,
            settings.max_detections,
        )
        for i in range(len(loc))
    ]


def _run(runtime: str, settings: NmsSettings, data: np.ndarray, tmp_path: Path, opset: int = 17, fixed: bool = False):
    size = InputSize(SIDE, SIDE) if fixed else None
    if runtime == "torchscript":
        module = script_with_postprocess(torch.jit.script(_StandIn()), ANCHORS, "nms", settings, size)
        with torch.inference_mode():
            return [out.numpy() for out in module(torch.from_numpy(data))]
    model = add_postprocess(_stand_in_onnx(opset, len(data) if fixed else None), ANCHORS, "nms", settings, size)
    if runtime == "onnxruntime":
        return ort.InferenceSession(model.SerializeToString()).run(None, {"data": data})
    from retinaface_export.converters.openvino.runtime import compile_model, openvino_module

    onnx.save(model, tmp_path / "nms.onnx")
    converted = openvino_module().convert_model(tmp_path / "nms.onnx")
    if runtime == "openvino":
        assert match_reference_nms(converted) == 1
    compiled = compile_model(converted)
    result = compiled({0: data})
    return [np.asarray(result[port]) for port in compiled.outputs]


def _assert_equal_to_reference(detections, num_detections, expected, settings: NmsSettings):
    assert detections.shape == (len(expected), settings.max_detections, 15)
    assert num_detections.tolist() == [len(e) for e in expected]
    for rows, count, wanted in zip(detections, num_detections, expected, strict=True):
        np.testing.assert_allclose(rows[:count], wanted, rtol=0, atol=2e-4)  # same faces, same order
        assert not rows[count:].any()


RUNTIMES = ("onnxruntime", "openvino", "torchscript")


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_random_outputs_match_reference_pipeline(runtime, fixed, tmp_path):
    loc, conf, pre = _random_outputs(batch=2, seed=3)
    settings = NmsSettings(score_threshold=0.3, max_detections=100)
    expected = _expected(loc, conf, pre, settings)
    assert len(expected[0]) != len(expected[1]) and all(len(e) > 5 for e in expected)
    detections, num = _run(runtime, settings, _pack(loc, conf, pre), tmp_path, fixed=fixed)
    _assert_equal_to_reference(detections, num, expected, settings)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18, 20])
def test_every_exporter_opset_builds_and_runs(opset, tmp_path):
    loc, conf, pre = _random_outputs(batch=2, seed=opset)
    settings = NmsSettings(score_threshold=0.5)
    detections, num = _run("onnxruntime", settings, _pack(loc, conf, pre), tmp_path, opset=opset)
    _assert_equal_to_reference(detections, num, _expected(loc, conf, pre, settings), settings)
    decode = add_postprocess(_stand_in_onnx(opset, None), ANCHORS, "decode")
    session = ort.InferenceSession(decode.SerializeToString())
    boxes, scores, landmarks = session.run(None, {"data": _pack(loc, conf, pre)})
    assert boxes.shape == (2, A, 4) and scores.shape == (2, A) and landmarks.shape == (2, A, 10)
    np.testing.assert_array_equal(scores, conf[..., 1])


def _two_priors_overlapping() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero regressions (boxes = priors): two 16-px anchors 8 px apart, IoU 153/425 = 0.36 with ``+1``."""
    loc = np.zeros((1, A, 4), np.float32)
    face = np.full((1, A), 0.01, np.float32)
    face[0, 0], face[0, 2] = 0.9, 0.8  # cells (0, 0) and (0, 1) of the stride-8 map, anchor 16 px
    conf = np.stack([1 - face, face], axis=-1)
    return loc, conf, np.zeros((1, A, 10), np.float32)


@pytest.mark.parametrize("runtime", [*RUNTIMES, "openvino-unadjusted"])
@pytest.mark.parametrize("iou", [0.36, 0.35])
def test_iou_equal_to_the_threshold_survives_as_in_the_reference(runtime, iou, tmp_path):
    outputs = _two_priors_overlapping()
    settings = NmsSettings(nms_iou=iou)
    expected = _expected(*outputs, settings)
    assert len(expected[0]) == (2 if iou == 0.36 else 1)  # the oracle: ovr <= thresh survives
    detections, num = _run(runtime, settings, _pack(*outputs), tmp_path)
    if runtime == "openvino-unadjusted" and iou == 0.36:
        # OpenVINO's own NMS suppresses at IoU ≥ threshold: why match_reference_nms exists
        assert num.tolist() == [1]
        return
    _assert_equal_to_reference(detections, num, expected, settings)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_nothing_above_the_threshold_gives_zero_rows(runtime, tmp_path):
    loc, conf, pre = _random_outputs(batch=2, seed=5)
    conf[1, :, 1] = np.minimum(conf[1, :, 1], 0.5)  # the second image has no face above 0.6
    conf[1, :, 0] = 1 - conf[1, :, 1]
    settings = NmsSettings(score_threshold=0.6)
    detections, num = _run(runtime, settings, _pack(loc, conf, pre), tmp_path)
    assert num[0] > 0 and num[1] == 0
    _assert_equal_to_reference(detections, num, _expected(loc, conf, pre, settings), settings)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_top_k_and_max_detections_limit_as_in_the_reference(runtime, tmp_path):
    loc, conf, pre = _random_outputs(batch=2, seed=11)
    unlimited = _expected(loc, conf, pre, NmsSettings(score_threshold=0.1))
    assert all(len(e) > 7 for e in unlimited)
    for settings in (NmsSettings(score_threshold=0.1, top_k=7), NmsSettings(score_threshold=0.1, max_detections=3)):
        expected = _expected(loc, conf, pre, settings)
        assert all(0 < len(e) <= 7 for e in expected)
        detections, num = _run(runtime, settings, _pack(loc, conf, pre), tmp_path)
        _assert_equal_to_reference(detections, num, expected, settings)


@pytest.mark.parametrize("count", [600, 3000])  # several 256-box blocks; beyond the numpy all-pairs path
def test_torch_nms_keeps_what_py_cpu_nms_keeps(count):
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 20 * math.sqrt(count), (count, 2))
    wh = rng.uniform(5, 60, (count, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.choice(np.linspace(0.1, 1, 50), count).astype(np.float32)  # many ties
    expected = [int(i) for i in reference_nms(np.hstack([boxes, scores[:, None]]), 0.4)]
    assert 0 < len(expected) < count
    # greedy_nms takes boxes already sorted best first; sort them as the reference does
    order = scores.argsort()[::-1].copy()
    kept = order[greedy_nms(torch.from_numpy(boxes[order]), 0.4, count).numpy()]
    assert kept.tolist() == expected
    assert order[greedy_nms(torch.from_numpy(boxes[order]), 0.4, 10).numpy()].tolist() == expected[:10]


# --- settings, modes and refusals ---------------------------------------------------------------


def test_settings_defaults_are_the_reference_evaluation_settings():
    assert NmsSettings().to_dict() == {"score_threshold": 0.02, "nms_iou": 0.4, "top_k": 5000, "max_detections": 750}


@pytest.mark.parametrize(
    ("field", "value"), [("score_threshold", 1.0), ("nms_iou", 1.5), ("top_k", 0), ("max_detections", 0)]
)
def test_settings_refuse_values_out_of_range(field, value):
    with pytest.raises(UsageError, match=field.replace("_", "-")):
        NmsSettings(**{field: value})


def test_unknown_mode_is_refused_naming_the_valid_ones():
    with pytest.raises(UsageError, match="none, decode, nms"):
        check_mode("postprocess")
    with pytest.raises(UsageError):
        add_postprocess(_stand_in_onnx(17, None), ANCHORS, "boxes")


def test_mode_none_returns_an_unchanged_copy():
    model = _stand_in_onnx(17, None)
    copy = add_postprocess(model, ANCHORS, "none")
    assert copy is not model and copy.SerializeToString() == model.SerializeToString()


def test_a_graph_that_is_not_the_raw_contract_is_refused():
    decoded = add_postprocess(_stand_in_onnx(17, None), ANCHORS, "decode")
    with pytest.raises(UsageError, match="raw RetinaFace graph"):
        add_postprocess(decoded, ANCHORS, "nms")


def test_a_size_other_than_the_declared_one_is_refused():
    with pytest.raises(UsageError, match="64x64, not 128x128"):
        add_postprocess(_stand_in_onnx(17, 1), ANCHORS, "nms", size=InputSize(128, 128))


def test_opset_10_is_refused():
    with pytest.raises(UsageError, match="opset 11"):
        add_postprocess(_stand_in_onnx(10, None), ANCHORS, "decode")


def test_output_declarations_carry_batch_and_k():
    model = add_postprocess(_stand_in_onnx(17, 2), ANCHORS, "nms", NmsSettings(max_detections=9), InputSize(SIDE, SIDE))
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"detections": [2, 9, 15], "num_detections": [2]}
    dynamic = add_postprocess(_stand_in_onnx(17, None), ANCHORS, "decode")
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in dynamic.graph.output}
    assert shapes == {"boxes": ["batch", A, 4], "scores": ["batch", A], "landmarks": ["batch", A, 10]}


def test_openvino_adjustment_applies_once(tmp_path):
    from retinaface_export.converters.openvino.runtime import openvino_module

    onnx.save(add_postprocess(_stand_in_onnx(17, None), ANCHORS, "nms"), tmp_path / "nms.onnx")
    converted = openvino_module().convert_model(tmp_path / "nms.onnx")
    assert match_reference_nms(converted) == 1
    assert match_reference_nms(converted) == 0


def test_split_detections_cuts_each_image_at_its_count():
    detections = np.arange(2 * 4 * 15, dtype=np.float32).reshape(2, 4, 15)
    (boxes0, scores0, points0), (boxes1, _, _) = split_detections(detections, np.array([3, 0], np.int64))
    assert boxes0.shape == (3, 4) and points0.shape == (3, 10) and boxes1.shape == (0, 4)
    np.testing.assert_array_equal(scores0, detections[0, :3, 4])
    with pytest.raises(ValueError, match="N×K×15"):
        split_detections(detections[..., :14], np.array([3, 0]))


def test_covers_only_a_higher_threshold_with_the_same_nms():
    settings = NmsSettings()
    assert covers(settings, 0.02, 0.4, 5000, 750) and covers(settings, 0.9, 0.4, 5000, 750)
    assert not covers(settings, 0.01, 0.4, 5000, 750)
    assert not covers(settings, 0.5, 0.3, 5000, 750)
    assert not covers(settings, 0.5, 0.4, 1000, 750)
    assert not covers(settings, 0.5, 0.4, 5000, 100)


def test_split_detections_min_score_keeps_faces_strictly_above():
    detections = np.zeros((1, 4, 15), np.float32)
    detections[0, :3, 4] = [0.9, 0.5, 0.3]
    ((_, scores, _),) = split_detections(detections, np.array([3]), min_score=0.5)
    assert scores.tolist() == [np.float32(0.9)]
