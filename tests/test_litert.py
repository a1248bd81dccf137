"""LiteRT: converted by litert-torch from the checkpoint's network, verified, trusted, run by LiteRT's interpreter.

Fast tier: one export at 320 of the trained mobilenet0.25, converted once to FP32 and FP16 (~20 s), then
the numbers against PyTorch (with and without XNNPACK), parity, detect, bench, provenance, tampered files,
a missing extra, another size, and the refusals (dynamic, nms, a replaced checkpoint). Slow: 640 and both
backbones against PyTorch eager, ``--postprocess decode``.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, REPO, SHARED, checkpoint_for, photo_input, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.bench import main as bench_main
from retinaface_export.cli.convert import main as convert_main
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.contract import OUTPUT_NAMES, OUTPUT_WIDTHS
from retinaface_export.converters.litert import runtime as litert_runtime
from retinaface_export.converters.litert.format import DYNAMIC_REFUSAL, FORMAT, NMS_REFUSAL
from retinaface_export.errors import MissingExtraError, UntrustedArtifactError, UsageError
from retinaface_export.formats import FORMATS
from retinaface_export.manifest import Manifest
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import PostprocessMode, PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.provenance import provenance_problems
from retinaface_export.sizes import InputSize

# litert-torch conversions (~15 s each): make test, not the fast tier
pytestmark = pytest.mark.slow

pytest.importorskip("ai_edge_litert", reason='needs the [litert] extra: pip install "retinaface-export[litert]"')

REPO_GOLDEN = __import__("pathlib").Path(__file__).resolve().parents[1] / "golden"
FP32 = "retinaface_mobilenet0.25_320x320_fp32.tflite"
FP16 = "retinaface_mobilenet0.25_320x320_fp16.tflite"


def convert(folder, *args):
    return CliRunner().invoke(convert_main, [str(folder), "--to", "litert", *args, "-q"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory, real_weights):
    """A copy of the trained weights, so that a test may replace it."""
    copy = tmp_path_factory.mktemp("weights") / "mobilenet0.25_Final.pth"
    shutil.copyfile(real_weights, copy)
    return copy


def command(*args):
    """The command in a process of its own: what the libraries write below Python is seen too."""
    return subprocess.run(
        [sys.executable, "-m", "retinaface_export", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory, weights):
    folder = tmp_path_factory.mktemp("litert")
    export_checkpoint(load_checkpoint(weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), folder)
    done = command("convert", folder, "--to", "litert", "--precision", "fp32", "fp16", "-q")
    assert done.returncode == 0, done.stderr
    # -q: TensorFlow's INFO lines, torchao's GPU notices, JAX's TPU probe, the quantizer's progress bar kept out
    assert done.stderr == ""
    return folder


def eager_outputs(checkpoint, data):
    import torch

    with torch.inference_mode():
        return [t.numpy() for t in checkpoint.model.eval()(torch.from_numpy(data))]


def errors_of_range(outputs, reference):
    return [float(np.abs(o - r).max() / (r.max() - r.min())) for o, r in zip(outputs, reference, strict=True)]


def within(precision, outputs, reference):
    tolerance = PRECISIONS[precision]
    return all(
        np.abs(o - r).max() <= tolerance.allowed(float(r.max() - r.min()))
        for o, r in zip(outputs, reference, strict=True)
    )


def test_the_row_is_a_conversion_from_onnx_with_its_own_runtime():
    assert FORMATS["litert"] is FORMAT and FORMAT.source_format == "onnx" and FORMAT.backend == "litert"
    assert list(FORMATS).index("litert") > list(FORMATS).index("openvino")


def test_converted_and_verified_against_its_source(converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    rows = {a["path"]: a for a in manifest["artifacts"] if a["format"] == "litert"}
    assert set(rows) == {FP32, FP16}
    for row in rows.values():
        assert row["backend"] == "litert" and row["verification"]["passed"]
        assert row["verification"]["reference"] == "its source retinaface_mobilenet0.25_320x320.onnx"
        assert row["conversion"]["layout"] == "NCHW" and row["inputs"][0]["layout"] == "NCHW"
    # FP32 to float32 noise (measured 2.5e-6 of range); FP16 weights are visibly FP16 (measured ~4e-3)
    assert max(rows[FP32]["verification"]["max_error_of_range"].values()) < 2e-5
    assert 1e-4 < max(rows[FP16]["verification"]["max_error_of_range"].values()) < 0.03
    assert rows[FP16]["conversion"]["fp16"]["float16_tensors"] > 0
    assert rows[FP16]["bytes"] < 0.7 * rows[FP32]["bytes"]
    assert {"ai-edge-litert", "litert-torch", "ai-edge-quantizer"} <= manifest["versions"].keys()


@pytest.mark.parametrize("delegate", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp32_matches_pytorch_on_a_photo_with_and_without_xnnpack(converted, weights, crowd_photo, delegate):
    data = photo_input(crowd_photo, 320, 320)
    reference = eager_outputs(load_checkpoint(weights), data)
    run = litert_runtime.model_runner(litert_runtime.check_tflite_file(converted / FP32), delegate=delegate)
    outputs = run(data)
    assert [o.shape[-1] for o in outputs] == list(OUTPUT_WIDTHS)  # the contract's order
    assert within("fp32", outputs, reference), errors_of_range(outputs, reference)
    fp16 = litert_runtime.model_runner(litert_runtime.check_tflite_file(converted / FP16), delegate=delegate)(data)
    assert within("fp16", fp16, reference) and not within("fp32", fp16, reference)


def test_the_runner_returns_the_contracts_order_whatever_the_files_order(converted):
    checked = litert_runtime.check_tflite_file(converted / FP32)
    assert checked.outputs == OUTPUT_NAMES
    assert {"CUSTOM"}.isdisjoint(checked.operators) and "CONV_2D" in checked.operators


def test_provenance_describes_the_artifact(converted):
    manifest = Manifest.read(converted)
    for record in manifest.artifacts:
        if record.format != "litert":
            continue
        blocks = FORMAT.provenance_blocks(converted / record.path)
        assert blocks["retinaface_export"]["precision"] == record.precision
        assert blocks["retinaface_export"]["source_sha256"] == record.source.sha256
        row = json.loads(manifest.to_json())["artifacts"][manifest.artifacts.index(record)]
        assert provenance_problems(row, blocks, manifest.checkpoint) == []


def test_parity_judges_the_artifacts(converted, tmp_path):
    report = tmp_path / "parity.json"
    images = str(require(SHARED / "images"))
    result = CliRunner().invoke(
        parity_main, [str(converted), "--golden", str(REPO_GOLDEN), "--images", images, "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    judged = {a["path"]: a for a in json.loads(report.read_text())["artifacts"] if a["format"] == "litert"}
    assert set(judged) == {FP32, FP16} and all(a["passed"] for a in judged.values())


def test_detect_finds_the_onnx_files_faces(converted, tmp_path):
    photo = require(CROWD_PHOTO)
    faces = {}
    for name in (FP32, "retinaface_mobilenet0.25_320x320.onnx"):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(detect_main, [str(photo), "--model", str(converted / name), "--json", str(out)])
        assert result.exit_code == 0, result.output
        faces[name] = json.loads(out.read_text())[0]["faces"]
    assert len(faces[FP32]) == len(faces["retinaface_mobilenet0.25_320x320.onnx"]) > 0
    for a, b in zip(faces[FP32], faces["retinaface_mobilenet0.25_320x320.onnx"], strict=True):
        assert np.abs(np.subtract(a["box"], b["box"])).max() < 0.01


def test_detect_quiet_says_nothing(converted, tmp_path):
    # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." is written below Python
    done = command("detect", require(CROWD_PHOTO), "--model", converted / FP32, "--json", tmp_path / "f.json", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads((tmp_path / "f.json").read_text())[0]["faces"]


def test_bench_has_latency_and_throughput_rows(converted, tmp_path):
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench_main, [str(converted), "--runs", "3", "--warmup", "0", "--no-eager", "-q", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(report.read_text())["rows"] if r["format"] == "litert"]
    assert {(r["artifact"], r["mode"]) for r in rows} == {
        (n, m) for n in (FP32, FP16) for m in ("latency", "throughput")
    }
    assert all(r["backend"] == "litert" and r["latency_ms_median"] > 0 for r in rows)


def test_an_input_of_another_size_is_refused_in_one_line(converted):
    run = FORMAT.open_runner(converted / FP32)
    with pytest.raises(UsageError, match=r"takes 1×3×320×320 inputs \(its size and batch\), got 1×3×640×640"):
        run(np.zeros((1, 3, 640, 640), np.float32))


def _tampered(source, target, change):
    target.write_bytes(change(bytearray(source.read_bytes())))
    return target


def _custom_operator(content):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = 32
    model.operatorCodes[0].customCode = "Evil"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:4] + b"TFL2" + b[8:], "file identifier b'TFL2'"),
        (lambda b: b"", "file identifier b''"),
        (_custom_operator, "custom operator 'Evil'"),
    ],
    ids=["truncated", "wrong-magic", "empty", "custom-op"],
)
def test_a_tampered_file_is_refused_before_the_interpreter_opens_it(converted, tmp_path, monkeypatch, change, reason):
    bad = _tampered(converted / FP32, tmp_path / "bad.tflite", change)
    opened = []
    monkeypatch.setattr(litert_runtime, "model_runner", lambda *a, **k: opened.append(a))
    with pytest.raises(UntrustedArtifactError, match=reason) as error:
        FORMAT.open_runner(bad)
    assert "bad.tflite" in str(error.value) and "\n" not in str(error.value) and not opened
    result = CliRunner().invoke(detect_main, [str(require(CROWD_PHOTO)), "--model", str(bad)])
    assert result.exit_code == 1 and "refused before opening it" in result.output


def test_a_missing_extra_names_the_pip_install(converted, monkeypatch):
    for name in [m for m in sys.modules if m == "ai_edge_litert" or m.startswith("ai_edge_litert.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "retinaface-export\[litert\]"'):
        FORMAT.open_runner(converted / FP32)
    result = CliRunner().invoke(detect_main, [str(require(CROWD_PHOTO)), "--model", str(converted / FP32)])
    assert result.exit_code == 2 and 'pip install "retinaface-export[litert]"' in result.output


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",), dynamic=True), DYNAMIC_REFUSAL),
        (
            ExportOptions(
                sizes=(InputSize(320, 320),), formats=("onnx",), postprocess=PostprocessSpec(PostprocessMode.NMS)
            ),
            NMS_REFUSAL,
        ),
    ],
    ids=["dynamic", "nms"],
)
def test_what_litert_torch_cannot_convert_is_refused_in_one_line(weights, tmp_path, options, reason):
    export_checkpoint(load_checkpoint(weights), options, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = convert(tmp_path)
    assert result.exit_code == 2 and " ".join(reason.split()) in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_replaced_checkpoint_is_refused(converted, weights, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(converted, folder)
    original = weights.read_bytes()
    try:
        weights.write_bytes(original + b"\0")
        result = convert(folder, "--precision", "fp32")
    finally:
        weights.write_bytes(original)
    assert result.exit_code == 1 and "sha256 differs" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobilenet0.25", "resnet50"])
def test_640_against_pytorch_eager(variant, tmp_path, tmp_path_factory, crowd_photo, real_weights):
    from reference_check import original_faces_missed, reference_weights

    checkpoint = checkpoint_for(variant)
    export_checkpoint(checkpoint, ExportOptions(sizes=(InputSize(640, 640),), formats=("onnx",)), tmp_path)
    result = convert(tmp_path, "--precision", "fp32", "fp16")
    assert result.exit_code == 0, result.output
    data = photo_input(crowd_photo, 640, 640)
    reference = eager_outputs(checkpoint, data)
    stem = f"retinaface_{variant}_640x640"
    fp32 = FORMAT.open_runner(tmp_path / f"{stem}_fp32.tflite")(data)
    fp16 = FORMAT.open_runner(tmp_path / f"{stem}_fp16.tflite")(data)
    assert within("fp32", fp32, reference), errors_of_range(fp32, reference)
    assert within("fp16", fp16, reference), errors_of_range(fp16, reference)
    # the faces of biubug6's forward + detect.py (issue 21: FP32 P = R = 1, FP16 P, R >= 0.98)
    records = [a for a in Manifest.read(tmp_path).artifacts if a.format == "litert"]
    weights = reference_weights(variant, tmp_path_factory.mktemp("reference"), real_weights)
    assert len(records) == 2 and not original_faces_missed(tmp_path, records, weights, crowd_photo, 640)


@pytest.mark.slow
def test_decode_postprocessing_converts(weights, tmp_path):
    options = ExportOptions(
        sizes=(InputSize(320, 320),), formats=("onnx",), postprocess=PostprocessSpec(PostprocessMode.DECODE)
    )
    export_checkpoint(load_checkpoint(weights), options, tmp_path)
    result = convert(tmp_path, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    (row,) = [a for a in Manifest.read(tmp_path).artifacts if a.format == "litert"]
    assert row.verification["passed"] and [o.name for o in row.outputs] == ["boxes", "scores", "landmarks"]
    assert litert_runtime.check_tflite_file(tmp_path / row.path).outputs == ("boxes", "scores", "landmarks")


@pytest.mark.parametrize(("name", "threshold", "least"), [(FP32, 0.5, 6), (FP32, 0.02, 100), (FP16, 0.5, 6)])
def test_faces_are_the_original_detect_pipelines(converted, name, threshold, least, real_weights, crowd_photo):
    """Precision = recall = 1 at IoU ≥ 0.9 against biubug6's forward + detect.py on the same letterboxed input."""
    from reference_check import precision_recall

    precision, recall, faces = precision_recall(converted / name, real_weights, crowd_photo, 320, threshold)
    assert faces >= least and (precision, recall) == (1.0, 1.0)
