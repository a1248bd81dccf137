"""ncnn artifacts (``retinaface-convert --to ncnn``): pnnx from TorchScript, verified, trusted, used by every command.

The fast tier converts the trained mobilenet0.25 at 320 (FP32 and FP16) once; the slow tier adds 640, a
dynamic export (verified at two sizes and batch 2) and the synthetic Resnet50.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, SHARED, checkpoint_for, photo_input, require
from retinaface_export.bench.run import BenchSettings, bench_export
from retinaface_export.bench.stats import Budget
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.convert import main as convert_main
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.converters.ncnn import format as ncnn_format
from retinaface_export.converters.ncnn import runtime as ncnn_runtime
from retinaface_export.converters.ncnn.trust import TAG_FP16, TAG_FP32, check_ncnn_artifact, parse_param
from retinaface_export.converters.onnx.runtime import onnxruntime_runner
from retinaface_export.errors import MissingExtraError, UntrustedArtifactError, UsageError
from retinaface_export.format_api import Job
from retinaface_export.formats import FORMATS
from retinaface_export.images import read_image
from retinaface_export.manifest import Manifest
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.sizes import InputSize

REPO_GOLDEN = Path(__file__).resolve().parents[1] / "golden"
STEM = "retinaface_mobilenet0.25_320x320"
FP32 = f"{STEM}_fp32.ncnn.param"
FP16 = f"{STEM}_fp16.ncnn.param"

pytest.importorskip("ncnn", reason="the ncnn extra is not installed (pip install 'retinaface-export[ncnn]')")
pytest.importorskip("pnnx", reason="the ncnn extra is not installed (pip install 'retinaface-export[ncnn]')")


@pytest.fixture(scope="module")
def source_export(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("ncnn-source")
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),)), out)
    return out


@pytest.fixture(scope="module")
def converted(source_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ncnn") / "export"
    shutil.copytree(source_export, folder)
    result = CliRunner().invoke(convert_main, [str(folder), "--to", "ncnn", "--precision", "fp32", "fp16", "-q"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture()
def copy(converted, tmp_path):
    """A private copy of the converted folder (tests that damage files)."""
    folder = tmp_path / "export"
    shutil.copytree(converted, folder)
    return folder


def _rows(folder: Path) -> dict[str, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {a["path"]: a for a in manifest["artifacts"] if a["format"] == "ncnn"}


def _errors(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[tuple[float, float]]:
    """(max abs error, output range) per output."""
    return [(float(np.max(np.abs(r - c))), float(r.max() - r.min())) for r, c in zip(reference, candidate, strict=True)]


# --- conversion and verification -------------------------------------------------------------------------


def test_conversion_is_recorded_with_its_companions_and_runtime_options(converted):
    rows = _rows(converted)
    assert set(rows) == {FP32, FP16}
    for name, row in rows.items():
        assert row["backend"] == "ncnn" and row["source"]["path"] == f"{STEM}.torchscript.pt"
        stem = name.removesuffix(".ncnn.param")
        assert [c["path"] for c in row["companions"]] == [f"{stem}.ncnn.bin", f"{stem}.ncnn.json"]
        assert row["verification"]["passed"]
        assert row["conversion"]["converter"] == "pnnx" and "fp16=0" in row["conversion"]["pnnx_arguments"]
        assert "inputshape=[1,3,320,320]f32" in row["conversion"]["pnnx_arguments"]
    fp32_options, fp16_options = (rows[n]["conversion"]["runtime_options"] for n in (FP32, FP16))
    assert not any(fp32_options.values())  # every fp16/bf16 option off
    assert fp16_options["use_fp16_storage"] and fp16_options["use_fp16_arithmetic"]
    # FP32 verified against the TorchScript source within the FP32 rule; FP16 well inside 3% of range
    errors = rows[FP32]["verification"]["max_abs_error"]
    assert set(errors) == set(OUTPUT_NAMES) and max(errors.values()) < 1e-4
    versions = json.loads((converted / "manifest.json").read_text())["versions"]
    assert {"ncnn", "pnnx"} <= set(versions)


def test_blob_names_are_the_contract_and_provenance_is_in_the_sidecar(converted):
    text = (converted / FP32).read_text()
    assert "in0" not in text.split() and "out0" not in text.split()
    layers = parse_param(converted / FP32, text)
    assert [layer.outputs for layer in layers if layer.type == "Input"] == [("data",)]
    checked = check_ncnn_artifact(converted / FP16)
    assert checked.provenance["precision"] == "fp16" and checked.provenance["input_size"] == [320, 320]
    assert checked.ncnn["output_blobs"] == list(OUTPUT_NAMES)
    assert FORMATS["ncnn"].provenance_blocks(converted / FP32)["retinaface_export"]["format"] == "ncnn"
    # the FP16 weights file is tagged float16 block by block; the FP32 one float32
    assert (converted / f"{STEM}_fp16.ncnn.bin").read_bytes()[:4] == TAG_FP16
    assert (converted / f"{STEM}_fp32.ncnn.bin").read_bytes()[:4] == TAG_FP32


def test_fp32_matches_onnxruntime_and_pytorch_on_a_photo(converted, crowd_photo):
    data = photo_input(crowd_photo, 320, 320)
    ncnn_out = FORMATS["ncnn"].open_runner(converted / FP32)(data)
    onnx_out = onnxruntime_runner(converted / f"{STEM}.onnx")(data)
    eager_out = FORMATS["torchscript"].open_runner(converted / f"{STEM}.torchscript.pt")(data)
    fp32 = PRECISIONS["fp32"]
    for reference in (onnx_out, eager_out):
        for error, spread in _errors(reference, ncnn_out):
            assert error <= fp32.allowed(spread)
    fp16_out = FORMATS["ncnn"].open_runner(converted / FP16)(data)
    fp16_errors = _errors(eager_out, fp16_out)
    assert all(error <= 0.03 * spread for error, spread in fp16_errors)
    assert max(error / spread for error, spread in fp16_errors) > 1e-4  # the weights really are float16


def test_the_runner_loops_over_a_batch(converted, crowd_photo):
    one = photo_input(crowd_photo, 320, 320)
    two = np.concatenate([one, one[:, :, ::-1].copy()])
    run = FORMATS["ncnn"].open_runner(converted / FP32)
    batched = run(two)
    assert [o.shape[0] for o in batched] == [2, 2, 2]
    for single, pair in zip(run(one), batched, strict=True):
        np.testing.assert_array_equal(single[0], pair[0])


def test_half_weights_keep_float16_subnormals(tmp_path):
    # pnnx's own fp16=1 flushes these to zero (issue 21's "0.37 on boxes"): ours must round them
    param = (
        "7767517\n3 5\nInput data 0 1 data\n"
        "Split s 1 3 data a face_rpn_cls_prob face_rpn_landmark_pred\n"
        "Convolution conv 1 1 a face_rpn_bbox_pred 0=1 1=1 5=1 6=3\n"
    )
    weights = np.array([1e-6, -3.7e-5, 0.5], np.float32)
    data = TAG_FP32 + weights.tobytes() + np.float32(0.25).tobytes()
    half = ncnn_format.half_weights(tmp_path / "x.ncnn.param", param, data)
    assert half[:4] == TAG_FP16
    values = np.frombuffer(half[4:10], np.float16)
    np.testing.assert_array_equal(values, weights.astype(np.float16))
    assert np.all(values != 0) and len(half) == 4 + 8 + 4


# --- the commands ----------------------------------------------------------------------------------------


def test_parity_passes_on_ncnn_artifacts(converted, tmp_path):
    report = tmp_path / "parity.json"
    images = str(require(SHARED / "images"))
    cli = CliRunner().invoke(
        parity_main, [str(converted), "--golden", str(REPO_GOLDEN), "--images", images, "--json", str(report)]
    )
    assert cli.exit_code == 0, cli.output
    checked = {a["path"]: a for a in json.loads(report.read_text())["artifacts"] if a["format"] == "ncnn"}
    assert set(checked) == {FP32, FP16}
    assert all(a["passed"] and a["detection"]["faces"] > 0 for a in checked.values())


def test_detect_finds_the_onnx_faces(converted, tmp_path):
    photo = require(CROWD_PHOTO)
    faces = {}
    for name in (FP32, f"{STEM}.onnx"):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(detect_main, [str(photo), "--model", str(converted / name), "--json", str(out)])
        assert result.exit_code == 0, result.output
        faces[name] = json.loads(out.read_text())[0]["faces"]
    assert len(faces[FP32]) == len(faces[f"{STEM}.onnx"]) > 0


def test_bench_times_ncnn_artifacts(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["format"] == "ncnn"]  # time ncnn rows only
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = bench_export(
        copy,
        read_image(require(CROWD_PHOTO)),
        BenchSettings(budget=Budget(seconds=None, runs=3, warmup=0), batches=(1,), eager=False),
    )
    rows = [row for row in report.rows if row.backend == "ncnn"]
    modes = ("latency", "throughput")
    assert {(row.artifact, row.mode) for row in rows} == {(name, mode) for name in (FP32, FP16) for mode in modes}
    assert all(row.latency_ms_median > 0 for row in rows)
    assert all(row.faces > 0 for row in rows if row.mode == "latency")


# --- refusals --------------------------------------------------------------------------------------------


def _edit_param(folder: Path, edit) -> Path:
    path = folder / FP32
    path.write_text(edit(path.read_text()))
    return path


TAMPERING = {
    "unknown layer type": (lambda t: t.replace("ReLU ", "Python ", 1), "layer type 'Python'"),
    "layer count that lies": (lambda t: t.replace("\n100 116\n", "\n99 116\n", 1), "the header says 99 layers"),
    "blob count that lies": (lambda t: t.replace("\n100 116\n", "\n100 100\n", 1), "the header says 100 blobs"),
    "path-like layer name": (lambda t: t.replace("convrelu_0", "../../etc/passwd", 1), "not a plain name"),
    "weight size that lies": (lambda t: t.replace("6=216", "6=2160", 1), "weight_data_size 2160"),
    "custom parameter": (lambda t: t.replace("6=216", "6=216 8=1", 1), "parameter 8"),
    "a comment line": (lambda t: t.replace("7767517\n", "7767517\n# hi\n", 1), "second line"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_param_is_refused_before_ncnn_parses_it(copy, monkeypatch, case):
    edit, expected = TAMPERING[case]
    path = _edit_param(copy, edit)
    monkeypatch.setattr(ncnn_runtime, "open_net", lambda *a, **k: pytest.fail("ncnn was reached"))
    with pytest.raises(UntrustedArtifactError) as caught:
        FORMATS["ncnn"].open_runner(path)
    message = str(caught.value)
    assert expected in message and path.name in message and "\n" not in message
    result = CliRunner().invoke(detect_main, [str(require(CROWD_PHOTO)), "--model", str(path)])
    assert result.exit_code != 0 and expected in result.output


def test_a_param_edit_the_validator_accepts_is_caught_by_the_sidecar(copy):
    # nearest → bilinear upsampling: a valid param, not the one the sidecar describes
    path = _edit_param(copy, lambda t: t.replace(" 0=1 3=20 4=20", " 0=2 3=20 4=20", 1))
    parse_param(path, path.read_text())
    with pytest.raises(UntrustedArtifactError, match="describes another param file"):
        FORMATS["ncnn"].open_runner(path)


def test_a_tampered_bin_is_refused(copy):
    weights = copy / f"{STEM}_fp32.ncnn.bin"
    weights.write_bytes(weights.read_bytes() + b"\0" * 8)
    with pytest.raises(UntrustedArtifactError, match="8 bytes more"):
        FORMATS["ncnn"].open_runner(copy / FP32)
    data = bytearray(weights.read_bytes()[:-8])
    data[:4] = (0x000D4B38).to_bytes(4, "little")  # ncnn's INT8 tag
    weights.write_bytes(bytes(data))
    with pytest.raises(UntrustedArtifactError, match="not tagged fp32"):
        FORMATS["ncnn"].open_runner(copy / FP32)


def test_an_input_of_another_size_is_refused(converted):
    run = FORMATS["ncnn"].open_runner(converted / FP32)
    with pytest.raises(UsageError, match="takes 320x320 inputs, got 640x640"):
        run(np.zeros((1, 3, 640, 640), np.float32))


def test_a_missing_extra_names_the_pip_install(converted, monkeypatch, tmp_path):
    real = importlib.import_module

    def without(name, *args):
        if name in ("ncnn", "pnnx"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without)
    with pytest.raises(MissingExtraError, match=r'pip install "retinaface-export\[ncnn\]"'):
        FORMATS["ncnn"].open_runner(converted / FP32)
    with pytest.raises(MissingExtraError, match="pnnx"):
        ncnn_format.pnnx_executable()


def test_a_converter_crash_is_one_line_and_writes_nothing(source_export, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(source_export, folder)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(ncnn_format, "pnnx_executable", lambda: shutil.which("false"))
    result = CliRunner().invoke(convert_main, [str(folder), "--to", "ncnn", "-q"])
    assert result.exit_code != 0
    assert "pnnx exited with 1" in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == before


def test_post_processing_inside_is_refused_before_pnnx_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(ncnn_format, "run_pnnx", lambda *a: pytest.fail("pnnx was run"))
    size = InputSize(320, 320)
    for mode in ("decode", "nms"):
        job = Job(FORMATS["ncnn"], "x_fp32.ncnn.param", size, 1, (size,), postprocess=PostprocessSpec(mode))
        assert re.search(f"pnnx does not convert the scripted post-processing.*{mode}", FORMATS["ncnn"].refusal(job))
    raw = Job(FORMATS["ncnn"], "x_fp32.ncnn.param", size, 1, (size,), postprocess=PostprocessSpec("none"))
    assert FORMATS["ncnn"].refusal(raw) is None  # asked for every job when the run is planned (pipeline/convert)


@pytest.mark.slow
def test_a_post_processing_export_is_refused_and_nothing_written(tmp_path):
    folder = tmp_path / "export"
    export_checkpoint(
        load_checkpoint(require(SHARED / "weights" / "mobilenet0.25_Final.pth")),
        ExportOptions(sizes=(InputSize(320, 320),), formats=("torchscript",), postprocess=PostprocessSpec("decode")),
        folder,
    )
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(convert_main, [str(folder), "--to", "ncnn", "-q"])
    assert result.exit_code != 0 and "pnnx does not convert" in result.output
    assert sorted(p.name for p in folder.iterdir()) == before


# --- slow: 640, dynamic, Resnet50 ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobilenet0.25", "resnet50"])
def test_640_and_dynamic_conversions_are_verified(variant, tmp_path, real_weights, crowd_photo):
    from reference_check import original_faces_missed, reference_weights

    checkpoint = checkpoint_for(variant)
    fixed, dynamic = tmp_path / "fixed", tmp_path / "dynamic"
    sizes = (InputSize(320, 320), InputSize(640, 640))
    export_checkpoint(checkpoint, ExportOptions(sizes=(InputSize(640, 640),)), fixed)
    export_checkpoint(checkpoint, ExportOptions(sizes=sizes, dynamic=True), dynamic)
    for folder in (fixed, dynamic):
        convert_export(folder, ConvertOptions("ncnn", precisions=("fp32", "fp16")))
    (row,) = [a for a in Manifest.read(dynamic).artifacts if a.format == "ncnn" and a.precision == "fp32"]
    assert row.size is None and row.verified_sizes == ((320, 320), (640, 640))
    assert row.verification["passed"] and row.verification["cases"] == 4  # two sizes, batches 1 and 2
    assert "inputshape2=[1,3,640,640]f32" in row.conversion["pnnx_arguments"]
    run = FORMATS["ncnn"].open_runner(dynamic / row.path)
    eager = FORMATS["torchscript"].open_runner(dynamic / row.source.path)
    data = np.random.default_rng(0).normal(0, 50, (1, 3, 416, 480)).astype(np.float32)  # a third size
    for error, spread in _errors(eager(data), run(data)):
        assert error <= PRECISIONS["fp32"].allowed(spread)
    # a sidecar beside the param of another size is refused
    name = f"retinaface_{variant}_640x640_fp32"
    shutil.copy(fixed / f"{name}.ncnn.param", tmp_path / "x.ncnn.param")
    shutil.copy(fixed / f"{name}.ncnn.bin", tmp_path / "x.ncnn.bin")
    shutil.copy(dynamic / row.path.replace(".ncnn.param", ".ncnn.json"), tmp_path / "x.ncnn.json")
    with pytest.raises(UntrustedArtifactError, match="describes another param file"):
        FORMATS["ncnn"].open_runner(tmp_path / "x.ncnn.param")
    # the faces of biubug6's forward + detect.py at 640 (issue 21: FP32 P = R = 1, FP16 P, R >= 0.98)
    weights = reference_weights(variant, tmp_path, real_weights)
    for folder in (fixed, dynamic):
        records = [a for a in Manifest.read(folder).artifacts if a.format == "ncnn"]
        assert len(records) == 2 and not original_faces_missed(folder, records, weights, crowd_photo, 640)


@pytest.mark.parametrize(("name", "threshold", "least"), [(FP32, 0.5, 6), (FP32, 0.02, 100), (FP16, 0.5, 6)])
def test_faces_are_the_original_detect_pipelines(converted, name, threshold, least, real_weights, crowd_photo):
    """Precision = recall = 1 at IoU ≥ 0.9 against biubug6's forward + detect.py on the same letterboxed input."""
    from reference_check import precision_recall

    precision, recall, faces = precision_recall(converted / name, real_weights, crowd_photo, 320, threshold)
    assert faces >= least and (precision, recall) == (1.0, 1.0)
