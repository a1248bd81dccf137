import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from checkpoint_cases import BAD_CHECKPOINTS
from retinaface_export import __version__, formats
from retinaface_export.cli.common import expand_multi_value
from retinaface_export.cli.export import main
from retinaface_export.converters.onnx.format import OnnxExporter, OnnxFormat
from retinaface_export.converters.torchscript.format import FORMAT as TORCHSCRIPT
from retinaface_export.hashing import sha256_file


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def folder_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=lambda c: c.name)
def test_bad_checkpoint_one_line_nonzero_exit_nothing_written(tmp_path, case):
    weights = case.build(tmp_path)
    out = tmp_path / "out"
    result = run("--weights", str(weights), "--output-dir", str(out), *case.extra_args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"retinaface-export: error: {weights}: ")
    assert case.says in lines[0]
    assert folder_is_empty(out)
    assert not list(tmp_path.glob(".out.staging-*"))


@pytest.mark.parametrize("size", ["650", "0", "640x100", "big"])
def test_bad_size_exits_2_with_a_clear_message(tmp_path, size):
    result = run("--size", "640", size, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "--size" in result.stderr and size in result.stderr
    assert folder_is_empty(tmp_path / "out")


def test_bad_anchors_file_is_named(tmp_path):
    result = run("--anchors", str(tmp_path / "missing.toml"), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'missing.toml'}: no such anchors file" in result.stderr
    assert folder_is_empty(tmp_path / "out")


def test_unknown_backbone_lists_choices(tmp_path):
    result = run("--backbone", "resnet18", "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "mobilenet0.25" in result.stderr and "resnet50" in result.stderr


def test_multi_value_expansion_keeps_other_arguments():
    options = {"--size": lambda t: not t.startswith("-")}
    assert expand_multi_value(["--size", "640", "512", "-q", "--size", "320"], options) == [
        "--size",
        "640",
        "--size",
        "512",
        "-q",
        "--size",
        "320",
    ]
    assert expand_multi_value(["--size", "--", "x"], options) == ["--size", "--", "x"]


def test_main_job_writes_six_artifacts_and_manifest(tmp_path, real_weights):
    out = tmp_path / "out"
    result = run("--weights", str(real_weights), "--size", "640", "512", "320", "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["artifacts"]) == 6
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [a["path"] for a in manifest["artifacts"]] + ["manifest.json"]
    )
    assert manifest["checkpoint"]["sha256"] == sha256_file(real_weights)
    assert manifest["checkpoint"]["synthetic"] is False
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(manifest["versions"])
    seen = set()
    for artifact in manifest["artifacts"]:
        assert artifact["sha256"] == sha256_file(out / artifact["path"])
        assert artifact["precision"] == "fp32" and artifact["variant"] == "mobilenet0.25"
        seen.add((artifact["format"], tuple(artifact["size"])))
    assert seen == {(f, (s, s)) for f in ("onnx", "torchscript") for s in (640, 512, 320)}


def test_provenance_inside_artifacts(tmp_path, real_weights):
    out = tmp_path / "out"
    assert run("--weights", str(real_weights), "--size", "320", "--output-dir", str(out), "-q").exit_code == 0
    digest = sha256_file(real_weights)
    proto = onnx.load(str(out / "retinaface_mobilenet0.25_320x320.onnx"))
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert meta["checkpoint_sha256"] == digest
    assert meta["variant"] == "mobilenet0.25" and meta["tool_version"] == __version__
    assert json.loads(meta["input_size"]) == [320, 320] and json.loads(meta["opset"]) == 17
    ts = TORCHSCRIPT.read_provenance(str(out / "retinaface_mobilenet0.25_320x320.torchscript.pt"))
    assert ts["checkpoint_sha256"] == digest and ts["input_size"] == [320, 320] and ts["opset"] is None


def test_onnx_contract_names_order_and_check(tmp_path, real_weights):
    out = tmp_path / "out"
    assert (
        run(
            "--weights",
            str(real_weights),
            "--size",
            "416",
            "--format",
            "onnx",
            "--opset",
            "13",
            "--output-dir",
            str(out),
            "-q",
        ).exit_code
        == 0
    )
    model = onnx.load(str(out / "retinaface_mobilenet0.25_416x416.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13
    assert [i.name for i in model.graph.input] == ["data"]
    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert [o.name for o in model.graph.output] == ["face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred"]
    assert dims == [[1, 7098, 4], [1, 7098, 2], [1, 7098, 10]]
    assert not (out / "retinaface_mobilenet0.25_416x416.torchscript.pt").exists()


def test_synthetic_model_is_announced_and_recorded(tmp_path):
    out = tmp_path / "out"
    result = run("--backbone", "mobilenet0.25", "--size", "320", "--format", "onnx", "--output-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert "SYNTHETIC" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"]["synthetic"] is True and manifest["checkpoint"]["sha256"] is None


def test_failed_run_keeps_earlier_export_intact(tmp_path, monkeypatch, real_weights):
    out = tmp_path / "out"
    assert run("--weights", str(real_weights), "--size", "320", "--output-dir", str(out), "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class CrashesAt640(OnnxExporter):
        def artifact(self, job, anchors, provenance):
            if job.size.height == 640:
                raise RuntimeError("simulated exporter crash")
            return super().artifact(job, anchors, provenance)

    class CrashingOnnx(OnnxFormat):
        def exporter(self, model, example, opset):
            return CrashesAt640(model, example, opset)

    monkeypatch.setitem(formats.FORMATS, "onnx", CrashingOnnx())
    # both formats at 320 are rebuilt (and would replace the old files), then onnx at 640 fails: nothing may change
    result = run("--weights", str(real_weights), "--size", "320", "640", "--output-dir", str(out), "-q")
    assert result.exit_code == 1
    assert (
        "retinaface_mobilenet0.25_640x640.onnx: onnx export failed: RuntimeError: simulated exporter crash"
        in result.stderr
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.staging-*"))


def test_export_of_another_checkpoint_is_refused(tmp_path, real_weights):
    out = tmp_path / "out"
    assert run("--size", "320", "--format", "onnx", "--output-dir", str(out), "-q").exit_code == 0  # synthetic
    before = sorted(p.name for p in out.iterdir())
    result = run("--weights", str(real_weights), "--size", "320", "--output-dir", str(out), "-q")
    assert result.exit_code == 1
    assert "holds an export of another checkpoint" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_second_run_extends_the_manifest(tmp_path, real_weights):
    out = tmp_path / "out"
    for size in ("320", "416"):
        assert (
            run(
                "--weights", str(real_weights), "--size", size, "--format", "onnx", "--output-dir", str(out), "-q"
            ).exit_code
            == 0
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["size"] for a in manifest["artifacts"]] == [[320, 320], [416, 416]]


def test_installed_console_script_runs(tmp_path):
    script = shutil.which("retinaface-export", path=os.path.dirname(sys.executable))
    assert script, "retinaface-export is not installed next to this Python"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert __version__ in version.stdout
    out = tmp_path / "out"
    done = subprocess.run(
        [script, "--size", "320", "--format", "onnx", "--output-dir", str(out), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "retinaface_mobilenet0.25_320x320.onnx").is_file()
    bad = subprocess.run(
        [script, "--weights", str(tmp_path / "none.pth"), "--output-dir", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and bad.stderr.strip().endswith("none.pth: no such file")
