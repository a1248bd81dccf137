"""Post-processing inside artifacts (issue 13) on the crowd photo with the trained mobilenet0.25.

``nms`` artifacts (ONNX Runtime, OpenVINO, TorchScript; fixed 640×640 and dynamic at the photo's own
898×1600; batch 2: the photo and its mirror image) must give the reference pipeline's faces
(``reference_forward`` + the ``detect.py`` transcription, no package code): same count, boxes paired at
IoU ≥ 0.9, scores within 1e-3, landmarks within 1 px, best first, zeros after ``num_detections``.
``decode`` artifacts must equal the numpy decode of the same runtime's raw outputs within float32 noise.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import photo_input
from matching import greedy_match
from reference_forward import reference_forward
from reference_pipeline import reference_detections
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.converters.onnx.postprocess import add_postprocess
from retinaface_export.converters.openvino.postprocess import match_reference_nms
from retinaface_export.converters.torchscript.postprocess import script_with_postprocess
from retinaface_export.detection.postprocess import decode_boxes, decode_landmarks
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import NmsSettings, covers, split_detections
from retinaface_export.sizes import InputSize

FIXED = InputSize(640, 640)
BATCH = 2
KINDS = ("fixed", "dynamic")
RUNTIMES = ("onnxruntime", "openvino", "torchscript")
# biubug6 data/config.py cfg_mnet, written out here rather than read from the package
REFERENCE_ANCHORS = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}


@pytest.fixture(scope="module")
def checkpoint(real_weights):
    return load_checkpoint(real_weights)


@pytest.fixture(scope="module")
def inputs(crowd_photo) -> dict[str, np.ndarray]:
    """Batch of two per kind: 640×640 (resized) for the fixed graphs, the photo's own size for dynamic."""
    mirrored = np.ascontiguousarray(crowd_photo[:, ::-1])
    height, width = crowd_photo.shape[:2]
    sizes = {"fixed": (FIXED.height, FIXED.width), "dynamic": (height, width)}
    return {kind: np.concatenate([photo_input(img, *sizes[kind]) for img in (crowd_photo, mirrored)]) for kind in KINDS}


@pytest.fixture(scope="module")
def raw_onnx(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The exporter's raw graphs: pinned at 640×640 batch 2, and dynamic."""
    out = tmp_path_factory.mktemp("raw-onnx")
    fixed = export_checkpoint(checkpoint, ExportOptions(sizes=(FIXED,), formats=("onnx",), batch=BATCH), out / "f")
    dynamic = export_checkpoint(checkpoint, ExportOptions(sizes=(FIXED,), formats=("onnx",), dynamic=True), out / "d")
    return {"fixed": out / "f" / fixed.added[0].path, "dynamic": out / "d" / dynamic.added[0].path}


@pytest.fixture(scope="module")
def traced(checkpoint, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(checkpoint.model.eval(), torch.from_numpy(inputs["fixed"][:1]), check_trace=False)


@pytest.fixture(scope="module")
def reference_outputs(real_weights, inputs) -> dict[str, tuple[torch.Tensor, ...]]:
    state = torch.load(real_weights, map_location="cpu", weights_only=True)
    with torch.inference_mode():
        return {kind: reference_forward(state, torch.from_numpy(x)) for kind, x in inputs.items()}


def _size(kind: str) -> InputSize | None:
    return FIXED if kind == "fixed" else None


def _run_onnxruntime(model: onnx.ModelProto, data: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": data})


def _run_openvino(model: onnx.ModelProto, data: np.ndarray, folder: Path) -> list[np.ndarray]:
    """Convert as ``retinaface-convert`` would (ONNX file → ``convert_model`` → IR), then run the IR."""
    from retinaface_export.converters.openvino.runtime import compile_model, openvino_module

    ov = openvino_module()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    converted = ov.convert_model(folder / "model.onnx")
    match_reference_nms(converted)
    ov.save_model(converted, folder / "model.xml", compress_to_fp16=False)
    compiled = compile_model(folder / "model.xml")
    result = compiled({0: data})
    return [np.asarray(result[port]) for port in compiled.outputs]


def _run_torchscript(module: torch.jit.ScriptModule, data: np.ndarray) -> list[np.ndarray]:
    """Save and load (an artifact's round trip), then run."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer, map_location="cpu")
    with torch.inference_mode():
        return [out.numpy() for out in loaded(torch.from_numpy(data))]


@pytest.fixture(scope="module")
def run(raw_onnx, traced, inputs, checkpoint, tmp_path_factory):
    """``run(runtime, kind, mode, settings)`` → that artifact's outputs on the kind's batch (memoised).

    Mode ``none`` is the raw model, through the same calls.
    """
    anchors = checkpoint.variant.anchors
    folder = tmp_path_factory.mktemp("postprocessed")
    cache: dict[tuple, list[np.ndarray]] = {}

    def outputs(runtime: str, kind: str, mode: str, settings: NmsSettings | None = None) -> list[np.ndarray]:
        key = (runtime, kind, mode, settings)
        if key not in cache:
            data = inputs[kind]
            if runtime == "torchscript":
                module = script_with_postprocess(traced, anchors, mode, settings, _size(kind))
                cache[key] = _run_torchscript(module, data)
            else:
                model = add_postprocess(onnx.load(raw_onnx[kind]), anchors, mode, settings, _size(kind))
                if runtime == "onnxruntime":
                    cache[key] = _run_onnxruntime(model, data)
                else:
                    cache[key] = _run_openvino(model, data, folder / f"{kind}-{mode}-{len(cache)}")
        return cache[key]

    return outputs


@pytest.mark.parametrize("threshold", [0.5, 0.02])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_nms_artifact_gives_the_reference_pipelines_faces(run, reference_outputs, inputs, runtime, kind, threshold):
    detections, num_detections = run(runtime, kind, "nms", NmsSettings(score_threshold=threshold))
    settings = NmsSettings()
    assert detections.shape == (BATCH, settings.max_detections, 15) and detections.dtype == np.float32
    assert num_detections.shape == (BATCH,) and num_detections.dtype == np.int64
    height, width = inputs[kind].shape[2:]
    for image in range(BATCH):
        count = int(num_detections[image])
        assert not detections[image, count:].any(), "rows after num_detections must be zeros"
        expected = _reference_faces(reference_outputs[kind], image, (height, width), threshold)
        _assert_reference_faces(detections[image, :count], expected, threshold)


def _reference_faces(outputs, image: int, hw: tuple[int, int], threshold: float) -> np.ndarray:
    loc, conf, landms = (out[image : image + 1] for out in outputs)
    return reference_detections(loc, conf, landms, hw, REFERENCE_ANCHORS, threshold, 0.4)


def _assert_reference_faces(rows: np.ndarray, expected: np.ndarray, threshold: float) -> None:
    assert len(rows) == len(expected) > (80 if threshold == 0.5 else 700), (len(rows), len(expected))
    assert (np.diff(rows[:, 4]) <= 0).all(), "faces must come best first"
    assert (rows[:, 4] > threshold).all()
    pairs = greedy_match(rows[:, :4], expected[:, :4], min_iou=0.9)
    assert len(pairs) == len(expected)
    for i, j, _ in pairs:
        assert abs(rows[i, 4] - expected[j, 4]) < 1e-3
        assert np.abs(rows[i, 5:] - expected[j, 5:]).max() < 1.0


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_default_artifact_cut_at_a_higher_threshold_gives_that_thresholds_faces(run, reference_outputs, runtime):
    settings = NmsSettings()  # 0.02, as retinaface-export writes by default
    assert covers(settings, 0.5, 0.4, 5000, 750) and not covers(settings, 0.01, 0.4, 5000, 750)
    detections, num_detections = run(runtime, "fixed", "nms", settings)
    for image, (boxes, scores, points) in enumerate(split_detections(detections, num_detections, min_score=0.5)):
        rows = np.concatenate([boxes, scores[:, None], points], axis=1)
        _assert_reference_faces(rows, _reference_faces(reference_outputs["fixed"], image, (640, 640), 0.5), 0.5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_decode_artifact_equals_numpy_decode(run, inputs, checkpoint, runtime, kind):
    anchors = checkpoint.variant.anchors
    data = inputs[kind]
    height, width = data.shape[2:]
    boxes, scores, landmarks = run(runtime, kind, "decode")
    loc, conf, pre = run(runtime, kind, "none")  # the raw model, same runtime
    priors = prior_boxes(anchors, height, width)
    assert boxes.shape == (BATCH, len(priors), 4) and scores.shape == (BATCH, len(priors))
    assert landmarks.shape == (BATCH, len(priors), 10)
    scale = np.array([width, height], np.float32)
    for image in range(BATCH):
        expected_boxes = decode_boxes(loc[image], priors, anchors.variance) * np.tile(scale, 2)
        expected_points = decode_landmarks(pre[image], priors, anchors.variance) * np.tile(scale, 5)
        for got, expected in ((boxes[image], expected_boxes), (landmarks[image], expected_points)):
            # float32 noise: a few units in the last place of the largest coordinate
            tolerance = 8 * np.finfo(np.float32).eps * np.abs(expected).max()
            assert np.abs(got - expected).max() <= tolerance
        np.testing.assert_allclose(scores[image], conf[image, :, 1], rtol=0, atol=1e-6)


def test_a_fixed_size_torchscript_refuses_another_size(traced, checkpoint):
    module = script_with_postprocess(traced, checkpoint.variant.anchors, "nms", None, InputSize(320, 320))
    with pytest.raises(torch.jit.Error, match="320x320"), torch.inference_mode():
        module(torch.zeros(1, 3, 640, 640))
