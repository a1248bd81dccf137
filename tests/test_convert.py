"""retinaface-convert: simplified ONNX and OpenVINO IR against their source ONNX, on real photos."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, SHARED, photo_input, require
from retinaface_export.cli.convert import main
from retinaface_export.converters.openvino.runtime import openvino_core
from retinaface_export.detection.compare import compare_faces, tolerant_f1
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.formats import FORMATS
from retinaface_export.golden import FACE_THRESHOLD
from retinaface_export.hashing import sha256_file
from retinaface_export.images import read_image
from retinaface_export.inference.backends import artifact_backend
from retinaface_export.inference.detector import Detector
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import to_raw_nchw, to_u8_nhwc
from retinaface_export.sizes import STANDARD_SIZES, InputSize

IMAGES = SHARED / "images"
onnxruntime_runner = FORMATS["onnx"].open_runner
openvino_runner = FORMATS["openvino"].open_runner
read_onnx_provenance = FORMATS["onnx"].read_provenance
read_openvino_provenance = FORMATS["openvino"].read_provenance


def artifact(manifest: dict, **fields) -> dict:
    (found,) = [a for a in manifest["artifacts"] if all(a.get(k) == v for k, v in fields.items())]
    return found


@pytest.fixture(scope="session")
def converted(standard_export, tmp_path_factory):
    """Every conversion of the standard export, into a separate folder. INT8: mobilenet0.25 at every size
    (the real model: its detections mean something), Resnet50 at 320 (to keep CI short)."""
    checkpoint, export_dir = standard_export
    out = tmp_path_factory.mktemp(f"converted-{checkpoint.variant.name}")
    convert_export(export_dir, ConvertOptions("onnxsim"), out)
    convert_export(export_dir, ConvertOptions("openvino", precisions=("fp32", "fp16")), out)
    convert_export(export_dir, ConvertOptions("openvino", input_format="f32-nchw"), out)
    convert_export(export_dir, ConvertOptions("openvino", input_format="u8-nhwc"), out)
    int8_sizes = () if checkpoint.variant.name == "mobilenet0.25" else (InputSize(320, 320),)
    convert_export(
        export_dir, ConvertOptions("openvino", ("int8",), calibration=require(IMAGES), sizes=int8_sizes), out
    )
    return checkpoint, export_dir, out, json.loads((out / "manifest.json").read_text())


def source_onnx(converted, size):
    _, export_dir, _, manifest = converted
    entry = artifact(
        manifest, format="openvino", precision="fp32", size=[size, size], input_format="f32-nchw-minus-mean"
    )
    return export_dir / entry["source"]["path"]


@pytest.mark.slow
@pytest.mark.parametrize("size", STANDARD_SIZES)
def test_fp32_ir_and_simplified_onnx_equal_onnx(converted, crowd_photo, size):
    _, _, out, manifest = converted
    data = photo_input(crowd_photo, size, size)
    expected = onnxruntime_runner(source_onnx(converted, size))(data)
    ir = artifact(manifest, format="openvino", precision="fp32", size=[size, size], input_format="f32-nchw-minus-mean")
    sim = artifact(manifest, format="onnxsim", size=[size, size])
    assert sim["conversion"]["simplified"] and sim["conversion"]["nodes_after"] < sim["conversion"]["nodes_before"]
    for path, run in ((ir["path"], openvino_runner), (sim["path"], onnxruntime_runner)):
        for exp, got in zip(expected, run(out / path)(data), strict=True):
            assert got.shape == exp.shape
            assert float(np.max(np.abs(got - exp))) <= 1e-4, path


@pytest.mark.slow
@pytest.mark.parametrize("size", STANDARD_SIZES)
def test_fp16_ir_within_3_percent_of_each_output_range(converted, crowd_photo, size):
    _, _, out, manifest = converted
    data = photo_input(crowd_photo, size, size)
    expected = onnxruntime_runner(source_onnx(converted, size))(data)
    ir = artifact(manifest, format="openvino", precision="fp16", size=[size, size])
    for exp, got in zip(expected, openvino_runner(out / ir["path"])(data), strict=True):
        assert float(np.max(np.abs(got - exp))) <= 0.03 * float(exp.max() - exp.min())


@pytest.mark.slow
@pytest.mark.parametrize("size", STANDARD_SIZES)
@pytest.mark.parametrize("input_format, prepare", [("f32-nchw", to_raw_nchw), ("u8-nhwc", to_u8_nhwc)])
def test_embedded_mean_ir_fed_raw_pixels_equals_plain_ir(converted, crowd_photo, size, input_format, prepare):
    _, _, out, manifest = converted
    image = photo_input(crowd_photo, size, size)  # mean-subtracted NCHW
    raw = np.ascontiguousarray((image + np.array([104, 117, 123], np.float32)[:, None, None]).transpose(0, 2, 3, 1))
    plain = artifact(
        manifest, format="openvino", precision="fp32", size=[size, size], input_format="f32-nchw-minus-mean"
    )
    embedded = artifact(manifest, format="openvino", precision="fp32", size=[size, size], input_format=input_format)
    assert read_openvino_provenance(out / embedded["path"])["mean_embedded"] is True
    expected = openvino_runner(out / plain["path"])(image)
    got = openvino_runner(out / embedded["path"])(prepare(raw.round().astype(np.uint8)))
    for exp, res in zip(expected, got, strict=True):
        assert float(np.max(np.abs(res - exp))) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("size", STANDARD_SIZES)
def test_int8_keeps_the_faces_of_fp32(converted, crowd_photo, size):
    checkpoint, _, out, manifest = converted
    if checkpoint.variant.name != "mobilenet0.25":
        pytest.skip("INT8 at every size is judged on the real checkpoint; synthetic Resnet50 is checked at 320")
    fp32 = artifact(
        manifest, format="openvino", precision="fp32", size=[size, size], input_format="f32-nchw-minus-mean"
    )
    int8 = artifact(manifest, format="openvino", precision="int8", size=[size, size])
    rule = PRECISIONS["int8"]
    loose = DetectionConfig(score_threshold=FACE_THRESHOLD - rule.score_margin - 1e-6)
    for resize in ("letterbox", "stretch"):  # as ONNX artifacts are fed, and as IRs are (model_info: standard)
        backends = [replace(artifact_backend(out / e["path"]), resize=resize) for e in (fp32, int8)]
        reference, found = (Detector(backend).detect(crowd_photo) for backend in backends)
        assert len(reference) >= 5, resize  # the crowd at 320 is the smallest: 6 faces letterboxed
        # the INT8 rule parity judges by: a face above 0.5 on one side is found above 0.5 - margin on the other
        tolerant = tolerant_f1(
            *(Detector(backend, loose).detect(crowd_photo) for backend in backends), FACE_THRESHOLD, rule.score_margin
        )
        assert tolerant >= rule.min_f1, (resize, tolerant)
        if resize == "letterbox" and len(reference) >= 10:
            # Strict F1 at the hard cut, letterboxed, where calibration's views are. Stretched, two thirds of the
            # crowd's faces score within 0.4-0.6 at 416 (20 of 31), so INT8's +-0.03 score noise flips a few
            # (strict F1 0.92-0.97 over the sizes, every face above 0.6 kept both ways): the tolerant rule judges.
            assert compare_faces(reference, found).f1 >= 0.95, (resize, compare_faces(reference, found))
        # no confident face lost, no confident face invented, at any size and either feed
        for confident, other in ((reference, Detector(backends[1], loose)), (found, Detector(backends[0], loose))):
            strong = [face for face in confident if face.score >= 0.6]
            assert compare_faces(strong, other.detect(crowd_photo)).matched == len(strong), resize
    # judged when written on the photos held out of calibration, against the accuracy target (issue 14's goal)
    photos = int8["conversion"]["int8"]
    assert photos["calibration"]["images"] == 5 and photos["validation"]["images"] == 2
    assert not set(photos["calibration"]["files"]) & set(photos["validation"]["files"])
    assert int8["verification"]["photos"] == "validation" and int8["verification"]["samples"] == 12
    assert int8["verification"]["f1"] >= 0.97 and photos["accuracy"]["met"] is True
    assert read_openvino_provenance(out / int8["path"])["int8"] == photos  # the artifact says it too


@pytest.mark.slow
def test_ir_weights_have_the_precision_they_are_labelled(converted):
    _, _, out, manifest = converted
    core = openvino_core()
    for precision, weight_type in (("fp32", "f32"), ("fp16", "f16")):
        entry = artifact(
            manifest, format="openvino", precision=precision, size=[320, 320], input_format="f32-nchw-minus-mean"
        )
        model = core.read_model(str(out / entry["path"]))
        weights = {
            op.get_output_element_type(0).get_type_name()
            for op in model.get_ops()
            if op.get_type_name() == "Constant" and math.prod(op.get_output_shape(0)) > 16
        }
        assert weights == {weight_type}, (precision, weights)


@pytest.mark.slow
def test_provenance_and_files_of_converted_artifacts(converted):
    checkpoint, export_dir, out, manifest = converted
    for entry in manifest["artifacts"]:
        assert sha256_file(out / entry["path"]) == entry["sha256"]
        for companion in entry.get("companions", []):
            assert sha256_file(out / companion["path"]) == companion["sha256"]
    entry = artifact(manifest, format="openvino", precision="fp16", size=[640, 640])
    assert entry["companions"][0]["path"] == entry["path"].replace(".xml", ".bin")
    info = read_openvino_provenance(out / entry["path"])
    assert info["precision"] == "fp16" and info["variant"] == checkpoint.variant.name
    assert info["checkpoint_state_dict_sha256"] == checkpoint.state_dict_sha256
    assert info["source_sha256"] == entry["source"]["sha256"] == sha256_file(export_dir / info["source"])
    sim = artifact(manifest, format="onnxsim", size=[640, 640])
    assert read_onnx_provenance(out / sim["path"])["format"] == "onnxsim"


def test_dynamic_export_stays_dynamic_when_simplified(tmp_path, real_weights):
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint

    export_checkpoint(
        load_checkpoint(real_weights),
        ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",), dynamic=True),
        tmp_path,
    )
    result = convert_export(tmp_path, ConvertOptions("onnxsim"))
    (entry,) = [a.to_dict() for a in result.added]
    assert entry["dynamic"] and entry["conversion"]["simplified"]
    run = onnxruntime_runner(tmp_path / entry["path"])
    for h, w in ((320, 320), (480, 640)):
        outputs = run(np.zeros((2, 3, h, w), np.float32))
        assert outputs[0].shape[:2] == (2, 2 * ((h // 8) * (w // 8) + (h // 16) * (w // 16) + (h // 32) * (w // 32)))


# --- bad input ------------------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def small_export(tmp_path, real_weights):
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint

    export_dir = tmp_path / "export"
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),)), export_dir)
    return export_dir


def snapshot(folder):
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir()) if folder.exists() else []


def test_folder_without_manifest(tmp_path):
    result = run(tmp_path, "--to", "onnxsim")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"retinaface-convert: error: {tmp_path / 'manifest.json'}: no manifest: not an "
        "export folder (run retinaface-export first)"
    )


@pytest.mark.parametrize(
    "damage, says", [("delete", "listed in the manifest but missing"), ("alter", "altered since it was written")]
)
def test_missing_or_altered_source(small_export, damage, says):
    onnx_path = small_export / "retinaface_mobilenet0.25_320x320.onnx"
    if damage == "delete":
        onnx_path.unlink()
    else:
        onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino")
    assert result.exit_code == 1
    assert f"{onnx_path}: {says}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(small_export) == before


def test_int8_without_calibration_exits_2(small_export):
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino", "--precision", "fp32", "int8")
    assert result.exit_code == 2 and "--precision int8 needs --calibration DIR" in result.stderr
    assert snapshot(small_export) == before


def test_empty_calibration_folder(small_export, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino", "--precision", "int8", "--calibration", tmp_path / "empty")
    assert result.exit_code == 1 and f"{tmp_path / 'empty'}: no images" in result.stderr
    assert snapshot(small_export) == before


def test_unreadable_calibration_image_is_named(small_export, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    shutil.copy(require(CROWD_PHOTO), folder / "good.jpg")
    (folder / "bad.png").write_bytes(b"not a png")
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino", "--precision", "int8", "--calibration", folder)
    assert result.exit_code == 1 and f"{folder / 'bad.png'}: cannot be read as an image" in result.stderr
    assert snapshot(small_export) == before


def photo_folder(folder, *names, rename=None):
    """``folder`` holding copies of the named shared photos (as ``rename`` when given)."""
    folder.mkdir()
    for index, name in enumerate(names):
        shutil.copy(require(IMAGES / name), folder / (rename[index] if rename else name))
    return folder


def test_validation_photo_used_for_calibration_exits_1_writing_nothing(small_export, tmp_path):
    calibration = photo_folder(tmp_path / "calibration", "wider_sample_1.jpg", "wider_sample_2.jpg")
    validation = photo_folder(tmp_path / "validation", "wider_sample_2.jpg", rename=["other_name.jpg"])
    before = snapshot(small_export)
    args = ["--to", "openvino", "--precision", "int8", "--calibration", calibration, "--validation", validation]
    result = run(small_export, *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"retinaface-convert: error: {validation / 'other_name.jpg'}: same content as "
        f"{calibration / 'wider_sample_2.jpg'}: validation photos must not be used for calibration"
    )
    assert snapshot(small_export) == before


@pytest.mark.slow
def test_unmet_accuracy_target_exits_1_writing_nothing_unless_allowed(small_export, tmp_path):
    """No drop at all allowed on the crowd photo: reverting layers cannot bring every face back."""
    calibration = photo_folder(tmp_path / "calibration", "wider_sample_1.jpg", "wider_sample_3.jpg")
    validation = photo_folder(tmp_path / "validation", "crowd_selfie.jpg")
    args = ["--to", "onnx", "--precision", "int8", "--calibration", calibration, "--validation", validation]
    before = snapshot(small_export)
    result = run(small_export, *args, "--max-f1-drop", "0", "-q")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "retinaface-convert: error: retinaface_mobilenet0.25_320x320_int8.onnx: INT8 accuracy target not met: "
        "strict detection F1"
    )
    assert "(drop 0.0" in line and "max 0.000" in line
    assert snapshot(small_export) == before
    assert not list(small_export.parent.glob(".export.staging-*"))

    result = run(small_export, *args, "--max-f1-drop", "0", "--allow-accuracy-drop", "-q")
    assert result.exit_code == 0, result.stderr
    row = artifact(json.loads((small_export / "manifest.json").read_text()), precision="int8")
    accuracy = row["conversion"]["int8"]["accuracy"]
    assert accuracy["met"] is False and accuracy["drop"] > 0 and accuracy["max_drop"] == 0
    assert row["verification"]["passed"] is False and row["verification"]["f1"] < 1
    assert row["conversion"]["int8"]["validation"]["held_out"] is False
    assert read_onnx_provenance(small_export / row["path"])["int8"] == row["conversion"]["int8"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--precision", "fp32", "--validation", "photos"], "--validation is for --precision int8"),
        (["--precision", "int8", "--calibration", "photos", "--max-f1-drop", "1"], "--max-f1-drop must be"),
        (["--precision", "int8", "--calibration", "photos", "--max-f1-drop", "-0.1"], "--max-f1-drop must be"),
        (["--precision", "int8", "--calibration", "photos", "--max-f1-drop", "nan"], "--max-f1-drop must be"),
    ],
)
def test_int8_option_misuse_exits_2(small_export, args, says):
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino", *args)
    assert result.exit_code == 2 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(small_export) == before


@pytest.mark.slow
def test_int8_of_a_post_processed_export_with_raw_pixel_input(tmp_path, real_weights):
    """An nms export cutting at 0.6, batch 2, to INT8 taking uint8 images: judged at its own threshold."""
    from retinaface_export.cli.export import main as export_main

    export_dir = tmp_path / "nms"
    export_args = ["--weights", real_weights, "--size", "320", "--batch", "2", "--format", "onnx"]
    export_args += ["--postprocess", "nms", "--score-threshold", "0.6", "--output-dir", export_dir, "-q"]
    result = CliRunner().invoke(export_main, [str(a) for a in export_args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    calibration = photo_folder(tmp_path / "photos", *(f"wider_sample_{i}.jpg" for i in range(1, 5)))
    convert_args = ["--to", "openvino", "--precision", "fp32", "int8", "--embed-mean", "--input", "u8-nhwc"]
    result = run(export_dir, *convert_args, "--calibration", calibration)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())  # log lines are wrapped to the console's width
    assert "INT8 accuracy is judged on 1 photo held out of" in said and "(no --validation folder)" in said
    assert "F1" in result.stdout  # the summary reads both kinds of detection checks
    row = artifact(json.loads((export_dir / "manifest.json").read_text()), precision="int8")
    assert row["input_format"] == "u8-nhwc" and row["postprocess"]["score_threshold"] == 0.6
    assert "score > 0.6" in row["verification"]["metric"] and row["verification"]["passed"] is True
    assert row["verification"]["cases"] == [{"size": [320, 320], "batch": 2, "f1": row["verification"]["f1"]}]
    assert row["conversion"]["int8"]["validation"]["images"] == 1


@pytest.mark.slow
def test_int8_of_a_dynamic_export_is_judged_at_its_sizes_and_batches(tmp_path, real_weights):
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint

    export_dir = tmp_path / "dynamic"
    sizes = (InputSize(320, 320), InputSize(480, 640))
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=sizes, formats=("onnx",), dynamic=True), export_dir
    )
    calibration = photo_folder(tmp_path / "photos", *(f"wider_sample_{i}.jpg" for i in range(1, 5)))
    result = convert_export(export_dir, ConvertOptions("onnx", ("int8",), calibration=calibration))
    (row,) = result.added
    cases = [(tuple(c["size"]), c["batch"]) for c in row.verification["cases"]]
    assert cases == [((320, 320), 1), ((320, 320), 2), ((480, 640), 1), ((480, 640), 2)]
    assert row.verification["f1"] == min(c["f1"] for c in row.verification["cases"]) >= 0.97
    assert row.size is None and row.verified_sizes == ((320, 320), (480, 640))


def test_unknown_target_exits_2(small_export):
    result = run(small_export, "--to", "tensorrt")
    assert result.exit_code == 2 and "tensorrt" in result.stderr


def test_failed_conversion_writes_nothing(small_export, monkeypatch):
    import retinaface_export.converters.openvino.format as ov_converter

    def explode(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(ov_converter, "finish_ir", explode)
    before = snapshot(small_export)
    result = run(small_export, "--to", "openvino", "--precision", "fp32")
    assert result.exit_code == 1
    assert "retinaface_mobilenet0.25_320x320_fp32.xml: openvino conversion failed" in result.stderr
    assert snapshot(small_export) == before
    assert not list(small_export.parent.glob(".export.staging-*"))


def test_output_dir_gets_its_own_manifest(small_export, tmp_path):
    out = tmp_path / "deploy"
    result = run(small_export, "--to", "openvino", "--embed-mean", "--input", "u8-nhwc", "--output-dir", out, "-q")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["input_format"] == "u8-nhwc" and entry["path"].endswith("_fp32_u8.xml")
    assert entry["source"]["path"] == "retinaface_mobilenet0.25_320x320.onnx"
    faces = Detector.from_artifact(out / entry["path"]).detect(read_image(require(CROWD_PHOTO)))
    assert len(faces) >= 5  # the crowd letterboxed to 320: 6 faces above 0.5


def test_onnxsim_failure_keeps_the_original_and_says_so(small_export, monkeypatch):
    import onnxsim

    def broken(model, **kwargs):
        raise RuntimeError("simulated onnxsim bug")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = convert_export(small_export, ConvertOptions("onnxsim"))
    (entry,) = [a.to_dict() for a in result.added]
    assert entry["conversion"]["simplified"] is False and "simulated onnxsim bug" in entry["conversion"]["reason"]
    assert entry["conversion"]["nodes_after"] == entry["conversion"]["nodes_before"]
    original = onnxruntime_runner(small_export / "retinaface_mobilenet0.25_320x320.onnx")
    kept = onnxruntime_runner(small_export / entry["path"])
    data = np.zeros((1, 3, 320, 320), np.float32)
    for a, b in zip(original(data), kept(data), strict=True):
        assert np.array_equal(a, b)
    assert read_onnx_provenance(small_export / entry["path"])["simplified"] is False
