import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import photo_input
from matching import greedy_match
from reference_forward import reference_forward
from reference_pipeline import reference_detections, reference_nms, reference_priors
from retinaface_export.anchors import AnchorConfig
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.detection.compare import compare_faces, tolerant_f1
from retinaface_export.detection.faces import Face
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.postprocess import DetectionConfig, decode_boxes, decode_landmarks, nms
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.errors import FileError
from retinaface_export.inference.backends import eager_backend
from retinaface_export.inference.detector import Detector
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize
from retinaface_export.variants import get_variant

DEFAULT = get_variant("mobilenet0.25").anchors
VAR = (0.1, 0.2)


# --- priors ---------------------------------------------------------------------------------------


def test_first_and_last_priors_at_640():
    priors = prior_boxes(DEFAULT, 640, 640)
    assert priors.shape == (16800, 4)
    # first cell of the stride-8 map, anchors 16 and 32 px: centre (4, 4) px
    np.testing.assert_allclose(priors[0], [4 / 640, 4 / 640, 16 / 640, 16 / 640], rtol=1e-6)
    np.testing.assert_allclose(priors[1], [4 / 640, 4 / 640, 32 / 640, 32 / 640], rtol=1e-6)
    # next cell to the right (x advances first)
    np.testing.assert_allclose(priors[2], [12 / 640, 4 / 640, 16 / 640, 16 / 640], rtol=1e-6)
    # last cell of the stride-32 map (20×20), anchor 512 px: centre (624, 624) px
    np.testing.assert_allclose(priors[-1], [624 / 640, 624 / 640, 512 / 640, 512 / 640], rtol=1e-6)
    # the stride-16 map starts after 80·80·2 rows
    np.testing.assert_allclose(priors[12800], [8 / 640, 8 / 640, 64 / 640, 64 / 640], rtol=1e-6)


@pytest.mark.parametrize("hw", [(640, 640), (320, 480), (898, 1600), (300, 300)])
def test_priors_equal_reference_loops(hw):
    mine = prior_boxes(DEFAULT, *hw)
    theirs = reference_priors(DEFAULT.min_sizes, DEFAULT.steps, hw).numpy()
    assert mine.shape == theirs.shape
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-7)


def test_non_square_priors_scale_each_axis():
    priors = prior_boxes(DEFAULT, 320, 640)
    np.testing.assert_allclose(priors[0], [4 / 640, 4 / 320, 16 / 640, 16 / 320], rtol=1e-6)


# --- decode ---------------------------------------------------------------------------------------


def test_decode_zero_regression_is_the_prior():
    prior = np.array([[0.5, 0.25, 0.2, 0.1]], np.float32)
    np.testing.assert_allclose(
        decode_boxes(np.zeros((1, 4), np.float32), prior, VAR), [[0.4, 0.2, 0.6, 0.3]], rtol=1e-6
    )


def test_decode_known_values():
    prior = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    # dx = 1 → centre moves by 0.1·w = 0.02; dw = ln(2)/0.2 → width doubles to 0.4
    loc = np.array([[1.0, -1.0, math.log(2) / 0.2, 0.0]], np.float32)
    np.testing.assert_allclose(decode_boxes(loc, prior, VAR), [[0.32, 0.26, 0.72, 0.66]], rtol=1e-5)


def test_decode_landmarks_known_values():
    prior = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    pre = np.array([[0, 0, 1, 0, 0, 1, -1, 0, 0, -1]], np.float32)
    expected = [[0.5, 0.5, 0.52, 0.5, 0.5, 0.54, 0.48, 0.5, 0.5, 0.46]]
    np.testing.assert_allclose(decode_landmarks(pre, prior, VAR), expected, rtol=1e-6)


# --- NMS ------------------------------------------------------------------------------------------


def test_nms_empty_input():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []


def test_nms_all_suppressed_but_the_best():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.7, 0.9, 0.8], np.float32), 0.4).tolist() == [1]


def test_nms_ties_keep_exactly_one_of_identical_boxes():
    boxes = np.array([[5, 5, 20, 20]] * 3 + [[100, 100, 120, 120]], np.float32)
    keep = nms(boxes, np.full(4, 0.8, np.float32), 0.4)
    assert sorted(keep.tolist())[-1] == 3 and len(keep) == 2


def test_nms_uses_plus_one_areas_and_keeps_iou_equal_to_threshold():
    # 10×10 px boxes (x2-x1+1 = 10) overlapping 5 columns: IoU = 50 / 150 = 1/3 exactly
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert nms(boxes, scores, 0.3).tolist() == [0]


@pytest.mark.parametrize("count", [400, 3000])  # the all-pairs path and the loop beyond 2048 boxes
def test_nms_matches_reference_on_random_boxes(count):
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 20 * math.sqrt(count), (count, 2))
    wh = rng.uniform(5, 60, (count, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.choice(np.linspace(0.1, 1, 50), count).astype(np.float32)  # many ties
    dets = np.hstack([boxes, scores[:, None]])
    expected = [int(i) for i in reference_nms(dets, 0.4)]
    assert 0 < len(expected) < count
    assert nms(boxes, scores, 0.4).tolist() == expected


# --- letterbox ------------------------------------------------------------------------------------


def test_letterbox_maps_canvas_back_to_image():
    box = Letterbox.fit(480, 1280, 640, 640)
    assert (box.resized_height, box.resized_width) == (240, 640)
    image = np.full((480, 1280, 3), 200, np.uint8)
    canvas = box.apply(image)
    assert canvas.shape == (640, 640, 3)
    assert (canvas[:240] == 200).all() and (canvas[240:] == (104, 117, 123)).all()
    np.testing.assert_allclose(box.to_image(np.array([[64.0, 24.0, 640.0, 240.0]], np.float32)), [[128, 48, 1280, 480]])


def test_letterbox_tall_image():
    box = Letterbox.fit(1000, 500, 320, 320)
    assert (box.resized_height, box.resized_width) == (320, 160)
    np.testing.assert_allclose(box.to_image(np.array([16.0, 32.0], np.float32)), [50, 100])


# --- end to end against the reference pipeline -----------------------------------------------------


def _as_arrays(faces):
    boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
    points = np.array([f.landmarks for f in faces], np.float32).reshape(-1, 10)
    return boxes, np.array([f.score for f in faces], np.float32), points


@pytest.mark.parametrize("threshold", [0.5, 0.02])
def test_crowd_photo_matches_reference_pipeline(real_weights, crowd_photo, threshold):
    # reference: functional forward + detect.py transcription, on the image at its own resolution
    raw = torch.load(real_weights, map_location="cpu", weights_only=True)
    h, w = crowd_photo.shape[:2]
    with torch.inference_mode():
        loc, conf, landms = reference_forward(raw, torch.from_numpy(photo_input(crowd_photo, h, w)))
    anchors = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}
    ref = reference_detections(loc, conf, landms, (h, w), anchors, threshold, 0.4)

    detector = Detector.from_checkpoint(real_weights, config=DetectionConfig(score_threshold=threshold))
    boxes, scores, points = _as_arrays(detector.detect(crowd_photo))
    assert len(boxes) == len(ref) > (300 if threshold == 0.5 else 600)
    pairs = greedy_match(boxes, ref[:, :4], min_iou=0.9)
    assert len(pairs) == len(ref)
    for i, j, _ in pairs:
        assert abs(scores[i] - ref[j, 4]) < 1e-4
        assert np.abs(points[i] - ref[j, 5:]).max() < 1.0


def test_small_anchor_checkpoint_needs_its_anchors(crowd_photo):
    from conftest import SMALL_ANCHORS_WEIGHTS, require
    from retinaface_export.anchors import load_anchors

    path = require(SMALL_ANCHORS_WEIGHTS)
    right = Detector.from_checkpoint(path, anchors=load_anchors("small_faces")).detect(crowd_photo)
    wrong = Detector.from_checkpoint(path).detect(crowd_photo)
    right_boxes, wrong_boxes = _as_arrays(right)[0], _as_arrays(wrong)[0]
    # same network outputs, other anchors: the default-anchor boxes are systematically bigger
    sizes = lambda b: np.median((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))  # noqa: E731
    assert len(right_boxes) > 0 and sizes(wrong_boxes) > 1.5 * sizes(right_boxes)


@pytest.fixture(scope="module")
def exported_640(real_weights, tmp_path_factory):
    from retinaface_export.pipeline.convert import ConvertOptions, convert_export

    out = tmp_path_factory.mktemp("det640")
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(640, 640),)), out)
    convert_export(out, ConvertOptions("openvino"))
    convert_export(out, ConvertOptions("openvino", input_format="u8-nhwc"))
    return out


@pytest.mark.parametrize(
    "artifact",
    [
        "retinaface_mobilenet0.25_640x640.onnx",
        "retinaface_mobilenet0.25_640x640.torchscript.pt",
        "retinaface_mobilenet0.25_640x640_fp32.xml",
        "retinaface_mobilenet0.25_640x640_fp32_u8.xml",
    ],
)
def test_artifacts_at_640_give_eager_faces(real_weights, crowd_photo, exported_640, artifact):
    backend = eager_backend(load_checkpoint(real_weights), InputSize(640, 640))
    # an IR is fed stretched, as its model_info tells clients (resize_type standard); the others letterboxed
    resize = "stretch" if artifact.endswith(".xml") else "letterbox"
    assert Detector.from_artifact(exported_640 / artifact).backend.resize == resize
    eager = Detector(dataclasses.replace(backend, resize=resize))
    expected = _as_arrays(eager.detect(crowd_photo))
    got = _as_arrays(Detector.from_artifact(exported_640 / artifact).detect(crowd_photo))
    assert len(expected[0]) > 50
    pairs = greedy_match(got[0], expected[0], min_iou=0.99)
    assert len(pairs) == len(expected[0]) == len(got[0])
    for i, j, _ in pairs:
        assert np.abs(got[2][i] - expected[2][j]).max() < 0.1


def test_batch_of_images_equals_one_by_one(real_weights, crowd_photo, exported_640):
    detector = Detector.from_artifact(exported_640 / "retinaface_mobilenet0.25_640x640.onnx")
    images = [crowd_photo, crowd_photo[:400, :700], np.ascontiguousarray(crowd_photo[:, ::-1])]
    batched = detector.detect_batch(images)
    for image, faces in zip(images, batched, strict=True):
        single = detector.detect(image)
        assert [f.box for f in faces] == [f.box for f in single]
    assert len(batched[1]) < len(batched[0])


def test_anchors_that_do_not_fit_the_outputs_are_an_error(real_weights, crowd_photo):
    checkpoint = load_checkpoint(real_weights)
    wrong = AnchorConfig(((16, 32), (64, 128)), (8, 16), (0.1, 0.2))
    backend = eager_backend(checkpoint)
    detector = Detector(backend.__class__(**{**backend.__dict__, "anchors": wrong}))
    with pytest.raises(FileError, match="anchors do not belong to this model"):
        detector.detect(crowd_photo[:320, :320])


# --- agreement measures used by parity gates --------------------------------------------------------


def _face(x, score, shift=0.0):
    return Face((x, 0.0, x + 10.0, 10.0), score, tuple((x + 2.0 + shift, 2.0) for _ in range(5)))


def test_compare_faces_counts_and_f1():
    reference = [_face(0, 0.9), _face(100, 0.8), _face(200, 0.7)]
    candidate = [_face(1, 0.9, shift=0.5), _face(100, 0.8), _face(400, 0.6)]  # two found, one invented
    agreement = compare_faces(reference, candidate)
    assert (agreement.matched, agreement.reference_faces, agreement.candidate_faces) == (2, 3, 3)
    assert agreement.f1 == pytest.approx(4 / 6)
    assert agreement.max_landmark_error_px == pytest.approx(1.5)  # 1 px box shift + 0.5 px landmark shift
    assert compare_faces([], []).f1 == 1.0 and compare_faces(reference, []).f1 == 0.0


def test_tolerant_f1_forgives_scores_near_the_cut_only():
    reference = [_face(0, 0.95), _face(100, 0.507)]
    near = [_face(0, 0.94), _face(100, 0.49)]  # the borderline face drops just under 0.5
    far = [_face(0, 0.94), _face(100, 0.30)]  # ... or far under it
    assert compare_faces([f for f in reference if f.score > 0.5], [f for f in near if f.score > 0.5]).f1 < 1
    assert tolerant_f1(reference, near, 0.5, 0.1) == 1.0
    assert tolerant_f1(reference, far, 0.5, 0.1) == pytest.approx(2 / 3)
    assert tolerant_f1(reference, near, 0.5, 0.0) == pytest.approx(2 / 3)
