"""retinaface-bench: latency and throughput rows, consistent statistics, the export's own eager model, refusals."""

import json
import shutil
import statistics
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, SMALL_ANCHORS_WEIGHTS, require
from retinaface_export.anchors import load_anchors
from retinaface_export.bench.stats import MIN_RUNS, Budget, Stats
from retinaface_export.bench.system import int8_capability
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.bench import main
from retinaface_export.errors import UsageError
from retinaface_export.inference.backends import eager_backend
from retinaface_export.inference.detector import Detector
from retinaface_export.manifest import Manifest
from retinaface_export.pipeline.convert import ConvertOptions, convert_export, eager_checkpoint
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize

QUICK = ["--runs", "3", "--warmup", "0", "-q"]
SIZE = InputSize(320, 320)


def bench(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def export_320(real_weights, tmp_path_factory):
    """The real checkpoint copied beside its export (so tests can move or alter it), every backend at 320."""
    folder = tmp_path_factory.mktemp("bench")
    weights = folder / "weights.pth"
    shutil.copyfile(real_weights, weights)
    export_checkpoint(load_checkpoint(weights), ExportOptions(sizes=(SIZE,)), folder / "out")
    convert_export(folder / "out", ConvertOptions("openvino", input_format="u8-nhwc"))
    return folder


@pytest.fixture
def export_copy(export_320, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_320, copy)
    manifest = json.loads((copy / "out" / "manifest.json").read_text())
    manifest["checkpoint"]["path"] = str(copy / "weights.pth")
    (copy / "out" / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_rows_for_both_modes_with_consistent_statistics(export_320, tmp_path):
    result = bench(
        export_320 / "out", *QUICK, "--image", require(CROWD_PHOTO), "--json", tmp_path / "b.json",
        "--markdown", tmp_path / "b.md",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    rows = report["rows"]
    backends = {"torch-eager", "torchscript", "onnxruntime", "openvino"}
    for mode in ("latency", "throughput"):
        assert {r["backend"] for r in rows if r["mode"] == mode} == backends
    # one latency and one throughput row per model: eager, TorchScript, ONNX, the u8 IR
    assert len(rows) == 8
    for row in rows:
        assert row["size"] == [320, 320] and row["batch"] == 1
        assert 0 < row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"]
        assert row["latency_ms_min"] <= row["latency_ms_mean"] and row["latency_ms_std"] >= 0
        assert row["fps"] > 0 and row["seconds"] > 0 and row["streams"] >= 1
        assert row["unstable"] == (row["spread"] > 0.2)
        if row["mode"] == "latency":
            assert row["runs"] == 3 and row["streams"] == 1
            assert row["fps"] == pytest.approx(1000 / row["latency_ms_median"])
            assert row["preprocess_ms_median"] > 0 and row["postprocess_ms_median"] > 0
            assert row["e2e_ms_median"] > 0 and row["overhead_pct"] > 0
        else:
            assert row["runs"] == 3
            assert row["fps_std"] == pytest.approx(row["fps"] * row["latency_ms_std"] / row["latency_ms_mean"])
            assert row["preprocess_ms_median"] is None
    # the runtimes' own parallelism: ONNX Runtime runs --threads requests at once; torch one at a time
    throughput = {r["backend"]: r for r in rows if r["mode"] == "throughput"}
    assert throughput["onnxruntime"]["streams"] == 2 and throughput["torchscript"]["streams"] == 1
    # every letterboxing backend finds the same faces on the photo (all FP32, same anchors); the IR is fed
    # stretched, as its model_info tells clients (resize_type standard), and finds its own
    faces = {r["faces"] for r in rows if r["mode"] == "latency" and r["backend"] != "openvino"}
    assert len(faces) == 1 and faces.pop() > 0
    assert next(r for r in rows if r["mode"] == "latency" and r["backend"] == "openvino")["faces"] > 0
    assert next(r for r in rows if r["backend"] == "openvino")["input_format"] == "u8-nhwc"
    # what ran: OpenVINO says (on a bf16 CPU the u8 IR's fused mean subtraction outputs bf16, exact for
    # integer pixels: tests/test_openvino_precision.py); the other runtimes run the file's precision
    assert {r["backend"]: r["executed"] for r in rows}["openvino"] in ("f32", "bf16+f32")
    assert all(r["executed"] is None for r in rows if r["backend"] != "openvino")
    assert {"torch", "onnxruntime", "openvino"} <= report["versions"].keys()
    assert report["machine"]["int8"] and report["machine"]["cores"] >= 1
    markdown = (tmp_path / "b.md").read_text()
    assert "*latency*" in markdown and "*throughput*" in markdown
    assert "fp32 (ran " in markdown
    assert markdown.count("\n| ") == len(rows) + 2  # a header per table


def test_plot_has_latency_and_throughput(export_320, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    import cv2

    result = bench(export_320 / "out", *QUICK, "--no-eager", "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    plot = cv2.imread(str(tmp_path / "b.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0] and (plot < 200).any()


def test_plot_without_matplotlib_is_a_clear_error_before_timing(export_320, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = bench(export_320 / "out", *QUICK, "--plot", tmp_path / "b.png")
    assert result.exit_code == 2
    assert "matplotlib" in result.stderr and "retinaface-export[plot]" in result.stderr
    assert not (tmp_path / "b.png").exists()


def test_eager_uses_the_exports_anchors(tmp_path, crowd_photo):
    weights = require(SMALL_ANCHORS_WEIGHTS)
    small = load_anchors("small_faces")
    export_checkpoint(
        load_checkpoint(weights, anchors=small), ExportOptions(sizes=(SIZE,), formats=("onnx",)), tmp_path
    )
    checkpoint, note = eager_checkpoint(Manifest.read(tmp_path))
    assert note is None and checkpoint.variant.anchors == small
    # the eager model decodes as the artifact does (the default anchors give boxes ~2x bigger)
    eager = Detector(eager_backend(checkpoint, SIZE)).detect(crowd_photo)
    artifact = Detector.from_artifact(tmp_path / "retinaface_mobilenet0.25_320x320.onnx").detect(crowd_photo)
    assert len(eager) == len(artifact) > 0
    for a, b in zip(eager, artifact, strict=True):
        assert np.abs(np.subtract(a.box, b.box)).max() < 0.5
    report = tmp_path.parent / f"{tmp_path.name}-b.json"  # not inside the export folder, an input
    result = bench(tmp_path, *QUICK, "--mode", "latency", "--json", report)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["torch-eager", "onnxruntime"]


def test_altered_checkpoint_is_refused(export_copy):
    weights = export_copy / "weights.pth"
    weights.write_bytes(weights.read_bytes() + b"\0")
    result = bench(export_copy / "out", *QUICK)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"retinaface-bench: error: {weights}: sha256 differs")


@pytest.mark.parametrize("recorded", ["null", "the-new-files"])
def test_another_checkpoint_is_refused_whatever_the_file_sha256_says(export_copy, recorded):
    """Issue 25: with the manifest's checkpoint.sha256 null, bench loaded whatever file sat at the path."""
    import torch

    from retinaface_export.hashing import sha256_file
    from retinaface_export.synthetic import synthetic_state_dict
    from retinaface_export.variants import get_variant

    weights = export_copy / "weights.pth"
    torch.save(synthetic_state_dict(get_variant("mobilenet0.25")), weights)
    path = export_copy / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["checkpoint"]["sha256"] = None if recorded == "null" else sha256_file(weights)
    path.write_text(json.dumps(manifest))
    result = bench(export_copy / "out", *QUICK)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"retinaface-bench: error: {weights}: state dict sha256 differs"), result.stderr


def test_moved_checkpoint_skips_eager_with_a_note(export_copy, tmp_path):
    (export_copy / "weights.pth").rename(export_copy / "elsewhere.pth")
    result = bench(export_copy / "out", *QUICK, "--mode", "latency", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert "torch-eager" not in {r["backend"] for r in report["rows"]} and len(report["rows"]) == 3
    assert any("weights.pth not found" in note for note in report["notes"])
    assert "eager skipped" in result.stderr


def test_no_eager(export_320, tmp_path):
    result = bench(export_320 / "out", *QUICK, "--mode", "throughput", "--no-eager", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torchscript", "onnxruntime", "openvino"}
    assert {r["mode"] for r in rows} == {"throughput"}


@pytest.mark.parametrize(
    "victim", ["retinaface_mobilenet0.25_320x320.onnx", "retinaface_mobilenet0.25_320x320_fp32_u8.bin"]
)
def test_altered_artifact_is_refused_before_timing(export_copy, victim):
    path = export_copy / "out" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    result = bench(export_copy / "out", *QUICK)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"retinaface-bench: error: {path}: altered")


def test_missing_companion_is_refused(export_copy):
    path = export_copy / "out" / "retinaface_mobilenet0.25_320x320_fp32_u8.bin"
    path.unlink()
    result = bench(export_copy / "out", *QUICK)
    assert result.exit_code == 1 and f"{path}: listed in the manifest but missing" in result.stderr


@pytest.fixture(scope="module")
def dynamic_export(real_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dynamic")
    options = ExportOptions(sizes=(SIZE,), formats=("onnx",), dynamic=True)
    export_checkpoint(load_checkpoint(real_weights), options, folder)
    return folder


def test_dynamic_export_without_size_is_a_clear_error(dynamic_export):
    result = bench(dynamic_export, *QUICK)
    assert result.exit_code == 2
    assert "only dynamic artifacts" in result.stderr and "--size" in result.stderr


def test_dynamic_export_at_size_and_batches(dynamic_export, tmp_path):
    result = bench(dynamic_export, *QUICK, "--size", "256", "--batch", "1", "2", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {tuple(r["size"]) for r in rows} == {(256, 256)}
    got = sorted((r["backend"], r["mode"], r["batch"]) for r in rows)
    expected = [(b, "latency", 1) for b in ("onnxruntime", "torch-eager")]
    expected += [(b, "throughput", n) for b in ("onnxruntime", "torch-eager") for n in (1, 2)]
    assert got == sorted(expected)
    for row in rows:
        if row["mode"] == "throughput":
            assert row["fps"] > 0 and 0 < row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"]


def test_size_no_artifact_has_is_a_clear_error(export_320):
    result = bench(export_320 / "out", *QUICK, "--size", "640")
    assert result.exit_code == 2 and "no artifact of size 640x640" in result.stderr and "320x320" in result.stderr


def test_time_and_runs_together_are_refused(tmp_path):
    result = bench(tmp_path, "--time", "1", "--runs", "3")
    assert result.exit_code == 2 and "--time or --runs" in result.stderr


def test_stats_against_the_statistics_module():
    samples = [5.0, 1.0, 4.0, 2.0, 30.0, 3.0]
    stats = Stats.of(samples)
    assert stats.runs == 6 and stats.min == 1.0 and stats.median == statistics.median(samples)
    assert stats.mean == pytest.approx(statistics.mean(samples))
    assert stats.std == pytest.approx(statistics.stdev(samples))
    assert stats.p90 == pytest.approx(statistics.quantiles(samples, n=10, method="inclusive")[-1])
    assert stats.unstable  # one 30 ms outlier among ~3 ms runs
    assert not Stats.of([10.0, 10.5, 9.5, 10.2, 9.8]).unstable


def test_budget():
    assert not Budget(seconds=None, runs=4).done(3, 100.0) and Budget(seconds=None, runs=4).done(4, 0.0)
    timed = Budget(seconds=1.0)
    assert not timed.done(MIN_RUNS - 1, 10.0) and not timed.done(100, 0.5) and timed.done(MIN_RUNS, 1.0)
    with pytest.raises(UsageError):
        Budget(seconds=1.0, runs=5)


@pytest.mark.parametrize(
    ("flags", "label"),
    [
        ({"avx2", "fma"}, "AVX2 (no VNNI)"),
        ({"avx2", "avx_vnni"}, "AVX-VNNI"),
        ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"}, "AMX"),
        ({"sse4_2"}, "no AVX2"),
    ],
)
def test_int8_capability(flags, label):
    assert int8_capability(flags) == label


def test_nms_artifact_is_timed_with_what_it_leaves_to_do(tmp_path, crowd_photo):
    from retinaface_export.postprocess.settings import PostprocessSpec
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    checkpoint = synthetic_checkpoint(get_variant("mobilenet0.25"))
    for post in (PostprocessSpec(), PostprocessSpec("nms")):
        options = ExportOptions(sizes=(SIZE,), formats=("onnx",), postprocess=post)
        export_checkpoint(checkpoint, options, tmp_path / "out")
    args = [str(tmp_path / "out"), "--mode", "latency", "--no-eager", "--json", str(tmp_path / "b.json"), *QUICK]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {r["artifact"]: r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
    assert set(rows) == {"retinaface_mobilenet0.25_320x320.onnx", "retinaface_mobilenet0.25_320x320_nms.onnx"}
    assert all(r["postprocess_ms_median"] > 0 and r["e2e_ms_median"] > 0 for r in rows.values())
