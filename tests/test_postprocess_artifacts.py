"""Artifacts with post-processing inside, as the commands make them (issue 13): the pipeline's nms and decode
artifacts in every runtime give the raw artifact's faces, ONNX FP16/INT8 keep the FP32 model's outputs."""

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SHARED, photo_input, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.detection.compare import compare_faces
from retinaface_export.detection.modes import mode_outputs
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.formats import FORMATS
from retinaface_export.inference.detector import Detector
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.sizes import InputSize

# builds nms exports at 640 and their conversions, INT8 included (~1 min): make test, not the fast tier
pytestmark = pytest.mark.slow

SIZE = InputSize(640, 640)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("postprocess")
    checkpoint = load_checkpoint(real_weights)
    export_checkpoint(checkpoint, ExportOptions(sizes=(SIZE,)), out)
    nms = PostprocessSpec("nms")
    export_checkpoint(checkpoint, ExportOptions(sizes=(SIZE,), batch=2, postprocess=nms), out)
    dynamic = ExportOptions(sizes=(InputSize(320, 320), SIZE), dynamic=True, formats=("onnx",), postprocess=nms)
    export_checkpoint(checkpoint, dynamic, out)
    export_checkpoint(
        checkpoint, ExportOptions(sizes=(SIZE,), formats=("onnx",), postprocess=PostprocessSpec("decode")), out
    )
    convert_export(out, ConvertOptions("openvino"))
    convert_export(out, ConvertOptions("onnx", ("fp16", "int8"), calibration=require(SHARED / "images"), sizes=(SIZE,)))
    return checkpoint, out


NMS_ARTIFACTS = (
    "retinaface_mobilenet0.25_640x640_b2_nms.onnx",
    "retinaface_mobilenet0.25_640x640_b2_nms.torchscript.pt",
    "retinaface_mobilenet0.25_640x640_b2_nms_fp32.xml",
    "retinaface_mobilenet0.25_dynamic_nms.onnx",
    "retinaface_mobilenet0.25_dynamic_nms_fp32.xml",
)


@pytest.mark.parametrize("threshold", [0.5, 0.02])
@pytest.mark.parametrize("name", NMS_ARTIFACTS)
def test_nms_artifacts_give_the_raw_artifacts_faces(folder, crowd_photo, name, threshold):
    _, out = folder
    config = DetectionConfig(score_threshold=threshold)
    dynamic = "dynamic" in name
    raw = "retinaface_mobilenet0.25_640x640.onnx"
    if dynamic:  # dynamic artifacts run at the photo's own resolution, as eager does
        expected = Detector.from_checkpoint(require(SHARED / "weights" / "mobilenet0.25_Final.pth"), config=config)
    else:  # fed as the artifact tells its clients: an IR stretched (model_info resize_type standard)
        expected = Detector.from_artifact(out / raw, config)
        if name.endswith(".xml"):
            expected = Detector(replace(expected.backend, resize="stretch"), config)
    reference = expected.detect(crowd_photo)
    found = Detector.from_artifact(out / name, config).detect(crowd_photo)
    agreement = compare_faces(reference, found, min_iou=0.9)
    assert len(reference) > (300 if threshold < 0.1 else 80)
    assert agreement.matched == len(reference) == len(found), agreement
    assert agreement.max_landmark_error_px <= 1.0
    scores = np.array(sorted(f.score for f in found)) - np.array(sorted(f.score for f in reference))
    assert float(np.max(np.abs(scores))) <= 1e-3


@pytest.mark.parametrize("name", [n for n in NMS_ARTIFACTS if n.endswith(".xml")])
def test_nms_irs_tell_model_api_readers_how_to_feed_them(folder, name):
    from retinaface_export.converters.openvino.runtime import openvino_core

    _, out = folder
    model = openvino_core().read_model(str(out / name))
    info = {key: value.astype(str) for key, value in model.get_rt_info()["model_info"].items()}
    assert info == {
        "model_type": "RetinaFace-PyTorch",
        "mean_values": "104 117 123",
        "scale_values": "1 1 1",
        "reverse_input_channels": "False",
        "resize_type": "standard",
        "layout": "data:NCHW",
        "postprocess": "nms",
    }


def test_nms_artifact_refuses_settings_it_cannot_give(folder):
    _, out = folder
    result = CliRunner().invoke(
        detect_main,
        [
            str(require(SHARED / "images" / "wider_sample_1.jpg")),
            "--model",
            str(out / NMS_ARTIFACTS[0]),
            "--nms",
            "0.3",
        ],
    )
    assert result.exit_code != 0 and "NMS inside" in result.output and "Traceback" not in result.output


def test_decode_outputs_equal_numpy_decode_of_the_raw_outputs(folder, crowd_photo):
    checkpoint, out = folder
    data = photo_input(crowd_photo, 640, 640)
    raw = FORMATS["onnx"].open_runner(out / "retinaface_mobilenet0.25_640x640.onnx")(data)
    expected = mode_outputs(raw, checkpoint.variant.anchors, 640, 640, PostprocessSpec("decode"))
    got = FORMATS["onnx"].open_runner(out / "retinaface_mobilenet0.25_640x640_decode.onnx")(data)
    for name, exp, res in zip(("boxes", "scores", "landmarks"), expected, got, strict=True):
        assert res.shape == exp.shape, name
        # float32 noise: a few ulps of the largest value (pixel coordinates up to ~1000)
        assert float(np.max(np.abs(res - exp))) <= 8 * np.spacing(np.float32(np.abs(exp).max())), name


def test_onnx_fp16_within_3_percent_and_int8_keeps_the_faces(folder, crowd_photo):
    _, out = folder
    data = photo_input(crowd_photo, 640, 640)
    fp32 = FORMATS["onnx"].open_runner(out / "retinaface_mobilenet0.25_640x640.onnx")(data)
    fp16 = FORMATS["onnx"].open_runner(out / "retinaface_mobilenet0.25_640x640_fp16.onnx")(data)
    for exp, got in zip(fp32, fp16, strict=True):
        assert float(np.max(np.abs(got - exp))) <= 0.03 * float(exp.max() - exp.min())
    reference = Detector.from_artifact(out / "retinaface_mobilenet0.25_640x640.onnx").detect(crowd_photo)
    int8 = Detector.from_artifact(out / "retinaface_mobilenet0.25_640x640_int8.onnx").detect(crowd_photo)
    assert len(reference) > 80 and compare_faces(reference, int8).f1 >= 0.95
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {a["path"]: a for a in manifest["artifacts"]}
    assert rows["retinaface_mobilenet0.25_640x640_int8.onnx"]["precision"] == "int8"
    assert (
        rows["retinaface_mobilenet0.25_640x640_fp16.onnx"]["source"]["path"] == "retinaface_mobilenet0.25_640x640.onnx"
    )
    nms = rows["retinaface_mobilenet0.25_640x640_b2_nms.onnx"]
    assert nms["postprocess"] == {
        "mode": "nms",
        "score_threshold": 0.02,
        "nms_iou": 0.4,
        "top_k": 5000,
        "max_detections": 750,
    }
    assert [o["name"] for o in nms["outputs"]] == ["detections", "num_detections"]
    assert (
        FORMATS["openvino"].read_provenance(out / "retinaface_mobilenet0.25_640x640_b2_nms_fp32.xml")["postprocess"]
        == nms["postprocess"]
    )
