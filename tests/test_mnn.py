"""MNN artifacts: converted from our ONNX by mnnconvert, verified by MNN's interpreter, refused when tampered.

Fast tier: mobilenet0.25 (real weights) at 320, FP32 and FP16. Slow: 640 and dynamic for both backbones, decode.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, REPO, SHARED, checkpoint_for, photo_input, require
from retinaface_export.bench.run import BenchSettings, bench_export
from retinaface_export.bench.stats import Budget
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.converters.mnn import runtime as mnn_runtime
from retinaface_export.converters.mnn.format import FORMAT, NMS_REFUSAL
from retinaface_export.converters.mnn.half import nearest_half
from retinaface_export.converters.mnn.trust import SEAL_KEY, check_mnn_file
from retinaface_export.converters.onnx.runtime import onnxruntime_runner
from retinaface_export.errors import MissingExtraError, UntrustedArtifactError, UsageError
from retinaface_export.format_api import Job
from retinaface_export.images import read_image
from retinaface_export.manifest import Manifest
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.sizes import InputSize

pytest.importorskip("MNN", reason="the mnn extra is not installed")

FP32 = "retinaface_mobilenet0.25_320x320_fp32.mnn"
FP16 = "retinaface_mobilenet0.25_320x320_fp16.mnn"
ONNX = "retinaface_mobilenet0.25_320x320.onnx"


def _rows(folder: Path) -> dict[str, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {row["path"]: row for row in manifest["artifacts"]}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("mnn")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), out
    )
    convert_export(out, ConvertOptions("mnn", precisions=("fp32", "fp16")))
    return out


def _errors(expected: list[np.ndarray], got: list[np.ndarray]) -> list[tuple[float, float]]:
    """(max abs error, allowed by the FP32 rule) per output."""
    fp32 = PRECISIONS["fp32"]
    return [
        (float(np.abs(g - e).max()), fp32.allowed(float(e.max() - e.min()))) for e, g in zip(expected, got, strict=True)
    ]


def test_fp32_and_fp16_are_verified_by_mnn_and_recorded(converted):
    rows = _rows(converted)
    for name, limit in ((FP32, 1e-5), (FP16, 0.03)):
        row = rows[name]
        assert row["backend"] == "mnn" and row["verification"]["passed"]
        assert max(row["verification"]["max_error_of_range"].values()) < limit
        assert row["conversion"]["runtime"] == mnn_runtime.RUNTIME_OPTIONS
    assert rows[FP16]["conversion"]["weights"] == "float16" and "--fp16" in rows[FP16]["conversion"]["arguments"]
    assert "nearest" in rows[FP16]["conversion"]["weight_rounding"]
    assert "weight_rounding" not in rows[FP32]["conversion"]
    assert (converted / FP16).stat().st_size < 0.6 * (converted / FP32).stat().st_size
    assert "mnn" in json.loads((converted / "manifest.json").read_text())["versions"]


def test_fp32_equals_onnxruntime_on_a_real_photo(converted, crowd_photo):
    data = photo_input(crowd_photo, 320, 320)
    expected = onnxruntime_runner(converted / ONNX)(data)
    for error, allowed in _errors(expected, FORMAT.open_runner(converted / FP32)(data)):
        assert error <= allowed


def _conv_weights_in_half(source: Path, target: Path) -> None:
    """``source`` with every Conv weight rounded to the nearest float16 (what FP16 storage should hold)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    for init in model.graph.initializer:
        if init.name in weights:
            half = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(half, init.name))
    onnx.save(model, str(target))


def test_fp16_holds_the_nearest_half_of_each_weight(converted, crowd_photo, tmp_path):
    # mnnconvert --fp16 alone truncates each weight toward zero (MNN 3.6.1): here that misses this reference by
    # 270x the FP32 rule (6.9% of range on the synthetic Resnet50's scores, see converters/mnn/half.py); with the
    # weights rounded first, the FP16 file computes exactly what ONNX Runtime does with the same half weights
    _conv_weights_in_half(converted / ONNX, tmp_path / "half.onnx")
    data = photo_input(crowd_photo, 320, 320)
    expected = onnxruntime_runner(tmp_path / "half.onnx")(data)
    for error, allowed in _errors(expected, FORMAT.open_runner(converted / FP16)(data)):
        assert error <= allowed


def test_half_rounding_is_to_nearest_and_stays_finite():
    weights = np.array([1e6, -1e6, 0.1, 1 + 2**-11 + 2**-20, -(1 + 2**-11 + 2**-20)], np.float32)
    # beyond the half range: clamped as MNN does; otherwise the nearest half, not the one toward zero
    assert nearest_half(weights).tolist() == [65504.0, -65504.0, float(np.float16(0.1)), 1 + 2**-10, -(1 + 2**-10)]


def test_winograd_would_break_the_fp32_rule(converted, crowd_photo, monkeypatch):
    # MNN's default (Winograd convolution on) is measurably not float32-exact: the option is what makes FP32 pass
    monkeypatch.setitem(mnn_runtime.RUNTIME_OPTIONS, "hints", {"WINOGRAD_MEMORY_LEVEL": 3})
    data = photo_input(crowd_photo, 320, 320)
    expected = onnxruntime_runner(converted / ONNX)(data)
    errors = _errors(expected, FORMAT.open_runner(converted / FP32)(data))
    assert any(error > allowed for error, allowed in errors), errors


def test_provenance_is_read_back_without_mnn(converted, monkeypatch):
    monkeypatch.setattr(mnn_runtime, "_mnn", [])
    monkeypatch.setitem(sys.modules, "MNN", None)  # importing MNN now fails
    provenance = FORMAT.read_provenance(converted / FP16)
    assert provenance["precision"] == "fp16" and provenance["input_size"] == [320, 320]
    assert provenance["source"] == ONNX and provenance["runtime"]["hints"] == {"WINOGRAD_MEMORY_LEVEL": 0}
    assert len(provenance[SEAL_KEY]) == 64
    with pytest.raises(MissingExtraError, match=r'pip install "retinaface-export\[mnn\]"'):
        FORMAT.open_runner(converted / FP16)


def _flip(data: bytes, positions) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[position] ^= 0xFF
    return bytes(out)


TAMPERING = {
    "truncated": lambda d: d[: len(d) // 2],
    "last byte cut": lambda d: d[:-1],
    "one weight byte flipped": lambda d: _flip(d, [len(d) // 2]),
    # 20 flips that made MNN 3.6.1 crash with SIGSEGV on the unchecked file (see trust.py)
    "twenty bytes flipped": lambda d: _flip(d, np.random.default_rng(1).integers(0, len(d), 20)),
    "header flipped": lambda d: _flip(d, [4, 5]),
    "garbage": lambda d: np.random.default_rng(0).bytes(len(d)),
    "empty": lambda d: b"",
    "text": lambda d: b"not a model\n" * 100,
}


@pytest.mark.parametrize("tamper", TAMPERING)
def test_tampered_files_are_refused_before_mnn_opens_them(converted, tmp_path, tamper):
    bad = tmp_path / FP32
    bad.write_bytes(TAMPERING[tamper]((converted / FP32).read_bytes()))
    with pytest.raises(UntrustedArtifactError) as refused:
        FORMAT.load(bad)
    assert str(bad) in str(refused.value) and "\n" not in str(refused.value)


def test_a_tampered_file_is_one_line_from_detect(converted, tmp_path):
    bad = tmp_path / FP32
    data = (converted / FP32).read_bytes()
    bad.write_bytes(_flip(data, [len(data) // 2]))  # a weight: the flatbuffer's structure is intact
    result = CliRunner().invoke(detect_main, [str(require(CROWD_PHOTO)), "--model", str(bad), "-q"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("retinaface-detect: error: ") and "content sha256 mismatch" in line


def test_a_file_without_our_provenance_is_refused(converted, tmp_path):
    plain = tmp_path / "plain.mnn"
    mnn_runtime.run_tool(
        "mnnconvert", ["-f", "ONNX", "--modelFile", str(converted / ONNX), "--MNNModel", str(plain)], "t"
    )
    with pytest.raises(UntrustedArtifactError, match="no retinaface-export provenance"):
        check_mnn_file(plain)


def test_an_input_of_another_size_is_refused(converted):
    run = FORMAT.open_runner(converted / FP32)
    with pytest.raises(UsageError, match="fixed 320x320"):
        run(np.zeros((1, 3, 640, 640), np.float32))


def test_nms_sources_are_refused_before_any_work(tmp_path):
    job = Job(FORMAT, "x_fp32.mnn", InputSize(320, 320), 1, (InputSize(320, 320),), postprocess=PostprocessSpec("nms"))
    assert FORMAT.refusal(job) == NMS_REFUSAL  # asked for every job when the run is planned (pipeline/convert)


def test_int8_is_not_offered():
    with pytest.raises(UsageError, match="makes fp32, fp16"):
        ConvertOptions("mnn", precisions=("int8",), calibration=SHARED / "images")


def test_parity_detect_and_bench_use_the_artifacts(converted, tmp_path):
    images = str(require(SHARED / "images"))
    report = tmp_path / "parity.json"
    cli = CliRunner().invoke(
        parity_main, [str(converted), "--golden", str(REPO / "golden"), "--images", images, "--json", str(report)]
    )
    assert cli.exit_code == 0, cli.output
    checked = [a for a in json.loads(report.read_text())["artifacts"] if a["format"] == "mnn"]
    assert len(checked) == 2 and all(a["passed"] and a["detection"]["faces"] > 0 for a in checked)
    faces = {}
    for name in (FP32, ONNX):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(
            detect_main, [str(require(CROWD_PHOTO)), "--model", str(converted / name), "--json", str(out), "-q"]
        )
        assert result.exit_code == 0, result.output
        faces[name] = json.loads(out.read_text())[0]["faces"]
    assert len(faces[FP32]) == len(faces[ONNX]) > 0
    report = bench_export(
        converted,
        read_image(require(CROWD_PHOTO)),
        BenchSettings(budget=Budget(seconds=None, runs=3, warmup=0), batches=(1,), eager=False),
    )
    rows = [row for row in report.rows if row.format == "mnn"]
    assert {(row.precision, row.mode) for row in rows} == {
        (p, m) for p in ("fp32", "fp16") for m in ("latency", "throughput")
    }
    assert all(row.backend == "mnn" and row.latency_ms_median > 0 for row in rows)


def test_json_on_standard_output_stays_clean(converted):
    # MNN prints from C on import and per runtime manager; `--json -` must still be JSON
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "retinaface_export",
            "detect",
            str(require(CROWD_PHOTO)),
            "--model",
            str(converted / FP32),
            "--json",
            "-",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["faces"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobilenet0.25", "resnet50"])
def test_640_and_dynamic_are_verified_at_their_sizes(variant, tmp_path, real_weights, crowd_photo):
    from reference_check import original_faces_missed, reference_weights

    # Resnet50 (synthetic) FP16 used to miss the FP16 rule (scores 6.9% of range at 640: mnnconvert --fp16
    # truncates the weights); with the weights rounded to nearest first it is 2.2% (ONNX FP16 2.4%)
    checkpoint = checkpoint_for(variant)
    sizes = (InputSize(320, 320), InputSize(640, 640))
    export_checkpoint(checkpoint, ExportOptions(sizes=sizes[1:], formats=("onnx",)), tmp_path / "fixed")
    export_checkpoint(checkpoint, ExportOptions(sizes=sizes, formats=("onnx",), dynamic=True), tmp_path / "dynamic")
    for folder in ("fixed", "dynamic"):
        convert_export(tmp_path / folder, ConvertOptions("mnn", precisions=("fp32", "fp16")))
    rows = _rows(tmp_path / "fixed") | _rows(tmp_path / "dynamic")
    dynamic = rows[f"retinaface_{variant}_dynamic_fp32.mnn"]
    assert dynamic["verified_sizes"] == [[320, 320], [640, 640]]
    assert dynamic["verification"]["cases"] == 4  # two sizes at batch 1 and 2
    mnn_rows = [row for row in rows.values() if row["format"] == "mnn"]
    assert len(mnn_rows) == 4
    for row in mnn_rows:
        # FP32: 3.3e-6 (mobilenet0.25) and 2.3e-5 (Resnet50's larger range of sums) of range measured
        limit = (1e-5 if variant == "mobilenet0.25" else 1e-4) if row["precision"] == "fp32" else 0.03
        assert row["verification"]["passed"] and max(row["verification"]["max_error_of_range"].values()) < limit
    # and the faces of biubug6's forward + detect.py at 640 (issue 21: FP32 P = R = 1, FP16 P, R >= 0.98)
    weights = reference_weights(variant, tmp_path, real_weights)
    for folder in ("fixed", "dynamic"):
        records = [a for a in Manifest.read(tmp_path / folder).artifacts if a.format == "mnn"]
        assert not original_faces_missed(tmp_path / folder, records, weights, crowd_photo, 640)


@pytest.mark.slow
def test_decode_graphs_convert(tmp_path, real_weights):
    decode = ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",), postprocess=PostprocessSpec("decode"))
    export_checkpoint(load_checkpoint(real_weights), decode, tmp_path / "decode")
    convert_export(tmp_path / "decode", ConvertOptions("mnn"))
    (row,) = [r for r in _rows(tmp_path / "decode").values() if r["format"] == "mnn"]
    assert row["verification"]["passed"] and row["postprocess"]["mode"] == "decode"


@pytest.mark.parametrize(("name", "threshold", "least"), [(FP32, 0.5, 6), (FP32, 0.02, 100), (FP16, 0.5, 6)])
def test_faces_are_the_original_detect_pipelines(converted, name, threshold, least, real_weights, crowd_photo):
    """Precision = recall = 1 at IoU ≥ 0.9 against biubug6's forward + detect.py on the same letterboxed input."""
    from reference_check import precision_recall

    precision, recall, faces = precision_recall(converted / name, real_weights, crowd_photo, 320, threshold)
    assert faces >= least and (precision, recall) == (1.0, 1.0)
