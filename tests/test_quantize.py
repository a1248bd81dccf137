"""INT8 quantisation: disjoint calibration/validation photos, accuracy control, the detection F1 metric.

The NNCF tests use the synthetic mobilenet0.25 at 320 (quick, and its INT8 detections are far from its
FP32 ones, so an accuracy target of zero drop cannot be met by reverting a layer or two).
"""

from __future__ import annotations

import hashlib
import shutil

import cv2
import numpy as np
import pytest

from conftest import SHARED, require
from retinaface_export.anchors import AnchorConfig
from retinaface_export.calibration import load_calibration_set, split_photos
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.metric import DetectionF1
from retinaface_export.detection.modes import mode_outputs
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.errors import AccuracyDropError, FileError, UsageError
from retinaface_export.formats import FORMATS
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.preprocess import to_network_input
from retinaface_export.quantize import (
    QuantizationSettings,
    most_evaluations,
    quantize,
    quantize_with_accuracy_control,
)
from retinaface_export.sizes import InputSize

IMAGES = SHARED / "images"
SIZE = InputSize(320, 320)
ANCHORS = AnchorConfig.from_mapping(
    {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}
)
HEADS = ("ClassHead", "BboxHead", "LandmarkHead")
# each format's INT8 backend, as its converter hands it to retinaface_export.quantize
OV, ONNX = FORMATS["openvino"].int8, FORMATS["onnx"].int8
CONVOLUTIONS = ("Convolution", "GroupConvolution")


def _content_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photos(tmp_path):
    """The shared photos copied under other names (in reverse order), so names cannot decide the split."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(require(IMAGES).glob("*.jpg"))
    assert len(sources) == 7
    for index, path in enumerate(reversed(sources)):
        shutil.copy(path, folder / f"photo_{index}.jpg")
    return folder


# --- photo sets ---------------------------------------------------------------------------------


def test_hold_out_is_disjoint_by_content_and_does_not_depend_on_names(photos, tmp_path):
    split = split_photos(photos)
    calibration = {_content_hash(p) for p in split.calibration.files}
    validation = {_content_hash(p) for p in split.validation.files}
    assert not calibration & validation
    assert calibration | validation == {_content_hash(p) for p in photos.iterdir()}
    assert (len(split.calibration.files), len(split.validation.files)) == (5, 2)
    # the two whose content hash sorts first are held out
    assert validation == set(sorted(calibration | validation)[:2])

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in photos.iterdir():
        shutil.copy(path, renamed / f"z_{_content_hash(path)[::-1][:8]}.jpg")
    assert {_content_hash(p) for p in split_photos(renamed).validation.files} == validation

    record = split.record()
    assert record["validation"]["held_out"] is True and "held out" in record["validation"]["chosen"]
    assert record["calibration"]["images"] == 5 and record["validation"]["images"] == 2
    assert record["calibration"]["samples_per_size"] == 30 and record["validation"]["samples_per_size"] == 12
    assert record["calibration"]["sha256"] != record["validation"]["sha256"]


def test_samples_start_with_every_photo_as_it_is(photos):
    split = split_photos(photos)
    samples = split.calibration.samples(SIZE)
    assert len(samples) == 5 * 6
    for sample, image in zip(samples, split.calibration.images, strict=False):
        canvas = Letterbox.fit(image.shape[0], image.shape[1], SIZE.height, SIZE.width).apply(image)
        np.testing.assert_array_equal(sample, to_network_input(canvas))


def test_validation_folder_is_used_as_given(photos, tmp_path):
    validation = tmp_path / "validation"
    validation.mkdir()
    moved = sorted(photos.iterdir())[:3]
    for path in moved:
        shutil.move(path, validation / path.name)
    split = split_photos(photos, validation)
    assert [p.name for p in split.validation.files] == [p.name for p in moved]
    assert len(split.calibration.files) == 4
    assert split.record()["validation"]["held_out"] is False


def test_validation_photo_that_is_a_calibration_photo_is_refused(photos, tmp_path):
    validation = tmp_path / "validation"
    validation.mkdir()
    shutil.copy(sorted(photos.iterdir())[2], validation / "renamed_copy.jpg")
    with pytest.raises(FileError) as error:
        split_photos(photos, validation)
    assert error.value.path == validation / "renamed_copy.jpg"
    assert "must not be used for calibration" in error.value.reason


@pytest.mark.parametrize("shape", [(1, 1), (20, 300), (300, 31)])
def test_tiny_photo_is_a_file_error(tmp_path, shape):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "big.png"), np.full((100, 120, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.full((*shape, 3), 128, np.uint8))
    for load in (load_calibration_set, split_photos):
        with pytest.raises(FileError) as error:
            load(folder)
        assert error.value.path == folder / "tiny.png"
        assert f"{shape[1]}x{shape[0]} image is too small" in error.value.reason


def test_copies_of_one_photo_are_held_out_together(photos):
    """Two files with the same bytes: never one in calibration and the other in validation."""
    split = split_photos(photos)
    first_held = split.validation.files[0]
    shutil.copy(first_held, photos / "zz_copy_of_a_held_out_photo.jpg")
    last_kept = max(split.calibration.files, key=_content_hash)  # sorts last: stays in calibration
    shutil.copy(last_kept, photos / "aa_copy_of_a_calibration_photo.jpg")
    split = split_photos(photos)
    calibration = {_content_hash(p) for p in split.calibration.files}
    validation = {_content_hash(p) for p in split.validation.files}
    assert not calibration & validation
    assert (len(split.calibration.files), len(split.validation.files)) == (6, 3)
    assert photos / "zz_copy_of_a_held_out_photo.jpg" in split.validation.files


def test_one_photo_cannot_be_split(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "only.png"), np.full((100, 120, 3), 128, np.uint8))
    with pytest.raises(FileError, match="at least two different ones are needed"):
        split_photos(folder)


# --- the metric ---------------------------------------------------------------------------------


def _outputs(face_rows: dict[int, float]) -> list[np.ndarray]:
    """Network outputs with zero regressions and the given face score at the given anchor rows."""
    count = len(prior_boxes(ANCHORS, SIZE.height, SIZE.width))
    cls = np.zeros((1, count, 2), np.float32)
    cls[0, :, 0] = 1
    for row, score in face_rows.items():
        cls[0, row] = (1 - score, score)
    return [np.zeros((1, count, 4), np.float32), cls, np.zeros((1, count, 10), np.float32)]


def test_detection_f1_is_strict_at_the_threshold():
    metric = DetectionF1(ANCHORS, SIZE)
    # rows 0 and 3000: far-apart anchors (stride 8, top-left; stride 16, lower half)
    reference = [_outputs({0: 0.9, 3000: 0.8})]
    assert metric(reference, reference) == (1.0, [1.0])
    # one face falls from 0.8 to 0.49: 1 match of 2 + 1 faces
    value, per_sample = metric(reference, [_outputs({0: 0.9, 3000: 0.49})])
    assert value == pytest.approx(2 / 3) and per_sample == [pytest.approx(2 / 3)]
    # pooled over samples, not averaged: 3 matches of 4 + 3 faces
    value, per_sample = metric(reference * 2, [_outputs({0: 0.9, 3000: 0.49}), reference[0]])
    assert value == pytest.approx(6 / 7) and per_sample == [pytest.approx(2 / 3), 1.0]
    assert metric([_outputs({})], [_outputs({})]) == (1.0, [1.0])


@pytest.mark.parametrize("mode", ["decode", "nms"])
def test_detection_f1_reads_post_processed_outputs_and_batches(mode):
    """The same faces, whether the model outputs raw tensors, decoded ones or NMS'd detections."""
    raw = DetectionF1(ANCHORS, SIZE)
    spec = PostprocessSpec(mode)
    processed = DetectionF1(ANCHORS, SIZE, postprocess=spec)

    def batch(*runs):  # images of one run, batch rows in order
        return [np.concatenate(parts) for parts in zip(*runs, strict=True)]

    reference = [batch(_outputs({0: 0.9, 3000: 0.8}), _outputs({100: 0.7}))]
    candidate = [batch(_outputs({0: 0.9, 3000: 0.49}), _outputs({100: 0.7}))]
    expected = raw(reference, candidate)
    assert expected[0] == pytest.approx(4 / 5)  # 2 matches of 3 + 2 faces, pooled over the batch
    as_mode = [
        [mode_outputs(run, ANCHORS, SIZE.height, SIZE.width, spec) for run in side] for side in (reference, candidate)
    ]
    assert processed(*as_mode) == expected
    # the threshold cuts both sides: at 0.85 the only face left is matched
    strict = DetectionF1(ANCHORS, SIZE, threshold=0.85, postprocess=spec)
    assert strict(*as_mode) == (1.0, [1.0])
    assert processed(as_mode[0], as_mode[0]) == (1.0, [1.0])


# --- NNCF on the synthetic model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    """The synthetic mobilenet0.25 at 320 as ONNX, and as an OpenVINO model with its shape arithmetic folded."""
    import onnx
    import openvino as ov
    from openvino.passes import ConstantFolding, Manager

    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    out = tmp_path_factory.mktemp("synthetic")
    export_checkpoint(synthetic_checkpoint(get_variant("mobilenet0.25")), ExportOptions((SIZE,), ("onnx",)), out)
    (path,) = out.glob("*.onnx")
    model = ov.convert_model(str(path))
    folding = Manager()
    folding.register_pass(ConstantFolding())
    folding.run_passes(model)
    return onnx.load(str(path)), model


@pytest.fixture(scope="module")
def samples():
    split = split_photos(require(IMAGES))
    calibration = split.calibration.samples(SIZE)[:6]
    validation = split.validation.samples(SIZE)[:2]
    return calibration, validation


def _all_convs(model) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS}


def _float_ops(model) -> set[str]:
    """Convolutions of an OpenVINO model whose input does not come from a FakeQuantize."""
    return {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in CONVOLUTIONS and op.input_value(0).get_node().get_type_name() != "FakeQuantize"
    }


@pytest.mark.slow
def test_openvino_and_onnx_keep_the_ignored_scope_in_float(synthetic_model, samples):
    onnx_model, ov_model = synthetic_model
    calibration, _ = samples
    heads = tuple(f".*{head}.*" for head in HEADS)
    settings = QuantizationSettings(fast_bias_correction=True, ignored_patterns=heads)
    ov_float = _float_ops(quantize(OV, ov_model, calibration, settings))
    assert len(ov_float) == 9 and all(any(head in name for head in HEADS) for name in ov_float)
    # bias correction left to the backend: ONNX gets the fast one (NNCF's full one fails on this graph)
    quantized = quantize(ONNX, onnx_model, calibration, QuantizationSettings(ignored_patterns=heads))
    producer = {out: node.op_type for node in quantized.graph.node for out in node.output}
    onnx_float = {
        n.name for n in quantized.graph.node if n.op_type == "Conv" and producer[n.input[0]] != "DequantizeLinear"
    }
    assert len(onnx_float) == 9 and all(any(head in name for head in HEADS) for name in onnx_float)
    assert _float_ops(ov_model) == _all_convs(ov_model)


# Accuracy control ranks every INT8 layer (one compiled model each): quantising the first stage only keeps
# these tests quick, and INT8 of that stage alone already loses faces of the random-weight model.
FIRST_STAGE_ONLY = (r".*(stage2|stage3|fpn|ssh|Head).*",)


@pytest.mark.slow
def test_accuracy_control_reports_the_layers_it_reverted(synthetic_model, samples):
    _, model = synthetic_model
    calibration, validation = samples
    settings = QuantizationSettings(fast_bias_correction=True, ignored_patterns=FIRST_STAGE_ONLY, max_reverted_groups=2)
    metric = DetectionF1(ANCHORS, SIZE)
    plain = quantize(OV, model, calibration, settings)
    reference = OV.run(model, validation)
    assert metric(reference, OV.run(plain, validation))[0] < 0.9

    calls = []
    quantized, result = quantize_with_accuracy_control(
        OV,
        model,
        calibration,
        validation,
        metric,
        max_drop=0.0,
        settings=settings,
        allow_accuracy_drop=True,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    # progress: calibration samples, then every evaluation counted against the most the search can take
    evaluations = [(done, total) for stage, done, total in calls if stage == "evaluation"]
    most = most_evaluations(OV.quantisable_count(model), 2)
    assert [done for done, _ in evaluations[:-1]] == list(range(1, len(evaluations)))
    assert 3 <= len(evaluations) - 1 <= most  # float, INT8, at least one reverted candidate
    assert all(total == most for _, total in evaluations) and evaluations[-1] == (most, most)
    assert any(stage == "calibration" and total is None for stage, _, total in calls)
    reverted = set(result.float_layers)
    assert reverted and all("/stage1/" in name for name in reverted)
    # each reverted layer was INT8 in the plain quantisation and is float now
    assert not reverted & _float_ops(plain)
    assert reverted <= _float_ops(quantized)
    assert _float_ops(quantized) == reverted | set(result.ignored_layers)
    assert set(result.ignored_layers) == _float_ops(plain)
    assert result.quantized_layers == len(_all_convs(model)) - len(_float_ops(quantized)) > 0
    record = result.record()
    assert record["float_layers"] == list(result.float_layers)
    assert record["met"] is False and record["fp32"] == 1.0
    assert record["int8"] == pytest.approx(metric(reference, OV.run(quantized, validation))[0])


@pytest.mark.slow
def test_accuracy_control_stops_at_its_time_budget(synthetic_model, samples):
    _, model = synthetic_model
    calibration, validation = samples
    settings = QuantizationSettings(fast_bias_correction=True, ignored_patterns=FIRST_STAGE_ONLY, max_reverted_groups=2)
    with pytest.raises(AccuracyDropError, match=r"stopped at its time budget \(1e-06 s\) after 0 evaluations") as error:
        quantize_with_accuracy_control(
            OV, model, calibration, validation, DetectionF1(ANCHORS, SIZE), 0.0, settings, budget_seconds=1e-6
        )
    assert error.value.record["evaluations"] == 0 and error.value.record["budget_seconds"] == 1e-6


def test_the_budget_is_a_positive_number_of_seconds(photos):
    from retinaface_export.pipeline.convert import ConvertOptions

    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="--int8-budget must be a positive number of seconds"):
            ConvertOptions("openvino", ("int8",), calibration=photos, int8_budget=bad)


@pytest.mark.slow
def test_unreachable_accuracy_target_raises(synthetic_model, samples):
    onnx_model, _ = synthetic_model
    calibration, validation = samples
    settings = QuantizationSettings(ignored_patterns=FIRST_STAGE_ONLY, max_reverted_groups=1)
    with pytest.raises(AccuracyDropError) as error:
        quantize_with_accuracy_control(
            ONNX, onnx_model, calibration, validation, DetectionF1(ANCHORS, SIZE), max_drop=0.0, settings=settings
        )
    assert error.value.exit_code != 0
    assert "INT8 accuracy target not met" in str(error.value)
    assert error.value.record["met"] is False and error.value.record["drop"] > 0
    assert error.value.record["settings"]["fast_bias_correction"] is True  # what ran on ONNX
