"""Every command in table mode (no ``-q``), for every post-processing mode and every conversion target.

Summary tables read the records the library writes, and those differ by kind: an ``nms`` artifact's
verification holds detections (F1, faces), not ``max_abs_error``. Before these tests every CLI test passed
``-q``, and ``retinaface-export --postprocess nms`` ended in ``KeyError: 'max_abs_error'`` after writing its
artifacts. mobilenet0.25 at 320 with the real weights. INT8 conversions run in table mode in
``test_no_network.py`` (console scripts: ONNX INT8 of raw outputs in the fast tier, every target for nms in the
slow one) and here for every target and the other modes, marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from conftest import CROWD_PHOTO, REPO, SHARED, require
from retinaface_export.cli import bench, convert, detect, evaluate, export, golden, parity
from retinaface_export.postprocess.settings import POSTPROCESS_MODES

# every command's table for every mode: make test, not the fast tier
pytestmark = pytest.mark.slow

IMAGES = SHARED / "images"
# target -> precisions converted in the fast tier (INT8 needs calibration: slow here, fast in test_no_network)
FAST_CONVERSIONS = {"onnxsim": ("fp32",), "openvino": ("fp32", "fp16"), "onnx": ("fp16",)}
INT8_TARGETS = ("openvino", "onnx")


def invoke(command, *args: str) -> Result:
    """A command in table mode; an exception (a KeyError in a table, say) fails the test with its traceback."""
    assert "-q" not in args and "--quiet" not in args
    return CliRunner().invoke(command.main, list(args), catch_exceptions=False)


def succeeded(result: Result, what: str) -> str:
    """The command's standard output, after checking it exited 0."""
    assert result.exit_code == 0, f"{what} exited {result.exit_code}:\n{result.output[-4000:]}"
    return result.stdout


def manifest_paths(folder: Path) -> list[str]:
    return [artifact["path"] for artifact in json.loads((folder / "manifest.json").read_text())["artifacts"]]


def check_cell(mode: str) -> str:
    """What a check column shows for ``mode``'s records: F1 of detections for nms, max |Δ| of tensors else."""
    return "F1 " if mode == "nms" else "max |Δ| "


def title_line(stdout: str, title: str) -> bool:
    """Whether a table's title is on one line of ``stdout``: file names in titles are not cut on a pipe."""
    return any(line.strip() == title for line in stdout.splitlines())


@pytest.fixture(scope="module", params=POSTPROCESS_MODES)
def exported(request, tmp_path_factory, real_weights) -> tuple[str, Path, Result]:
    """(mode, folder, the table-mode export that made it): TorchScript and ONNX at 320 with ``mode`` inside."""
    mode = request.param
    out = tmp_path_factory.mktemp(f"tables-{mode}") / "out"
    args = ("--weights", str(real_weights), "--size", "320", "--postprocess", mode, "--output-dir", str(out))
    return mode, out, invoke(export, *args)


@pytest.fixture(scope="module")
def converted(exported) -> tuple[str, Path, dict[str, Result]]:
    """(mode, folder, target -> its table-mode convert): the export folder with every fast conversion added."""
    mode, out, result = exported
    succeeded(result, f"export --postprocess {mode}")
    results = {
        target: invoke(convert, str(out), "--to", target, "--precision", *precisions)
        for target, precisions in FAST_CONVERSIONS.items()
    }
    return mode, out, results


def test_export_table(exported):
    mode, out, result = exported
    stdout = succeeded(result, f"export --postprocess {mode}")
    assert title_line(stdout, f"2 artifacts in {out}"), stdout
    for path in manifest_paths(out):
        row = next(line for line in stdout.splitlines() if path in line)
        assert check_cell(mode) in row, row
    assert f"manifest: {out / 'manifest.json'}" in stdout


@pytest.mark.parametrize("target", FAST_CONVERSIONS)
def test_convert_table(converted, target):
    mode, out, results = converted
    stdout = succeeded(results[target], f"convert --to {target} ({mode})")
    count = len(FAST_CONVERSIONS[target])
    assert (f"{count} artifacts in {out}" if count > 1 else f"1 artifact in {out}") in stdout
    rows = [line for line in stdout.splitlines() if "retinaface_mobilenet0.25_320x320" in line]
    assert len(rows) == len(FAST_CONVERSIONS[target]), stdout
    for row in rows:
        assert check_cell(mode) in row or "kept the original graph" in row, row


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8_TARGETS)
@pytest.mark.parametrize("mode", [m for m in POSTPROCESS_MODES if m != "nms"])  # nms: test_no_network.py
def test_int8_convert_table(tmp_path, real_weights, mode, target):
    out = tmp_path / "out"
    succeeded(invoke(export, "--weights", str(real_weights), "--size", "320", "--postprocess", mode,
                     "--format", "onnx", "--output-dir", str(out)), "export")  # fmt: skip
    result = invoke(convert, str(out), "--to", target, "--precision", "int8", "--calibration", str(require(IMAGES)))
    stdout = succeeded(result, f"convert --to {target} --precision int8 ({mode})")
    assert "held-out views" in stdout and f"1 artifact in {out}" in stdout


def test_parity_table(converted):
    mode, out, _ = converted
    stdout = succeeded(invoke(parity, str(out), "--images", str(require(IMAGES))), f"parity ({mode})")
    assert f"parity of {out} against" in stdout
    paths = manifest_paths(out)
    assert len(paths) == 2 + sum(len(p) for p in FAST_CONVERSIONS.values())
    for path in paths:
        row = next(line for line in stdout.splitlines() if path in line)
        assert "✓ F1" in row and "FAIL" not in row, row
        # raw outputs are compared tensor by tensor; in-graph decode and nms on detections only
        assert ("│ - " in row) == (mode != "none"), row
    assert f"parity: {len(paths)} passed, 0 failed" in stdout


def test_bench_table(converted):
    mode, out, _ = converted
    args = (str(out), "--runs", "3", "--warmup", "0", "--mode", "latency", "throughput", "--threads", "1")
    stdout = succeeded(invoke(bench, *args), f"bench ({mode})")
    assert f"latency — {out} — " in stdout and f"throughput — {out} — " in stdout
    for path in manifest_paths(out):
        assert path in stdout


def test_detect_table(converted):
    mode, out, _ = converted
    model = out / next(p for p in manifest_paths(out) if p.endswith("_fp32.xml"))
    stdout = succeeded(invoke(detect, "--model", str(model), str(require(CROWD_PHOTO))), f"detect ({mode})")
    assert title_line(stdout, f"faces (openvino, {model})"), stdout
    row = next(line for line in stdout.splitlines() if str(CROWD_PHOTO) in line)
    assert int(row.split("│")[2]) > 0, row  # the crowd photo's faces
    header = next(line for line in stdout.splitlines() if "┃" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["image", "faces"], header


def _cell(items: list) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for index, item in enumerate(items):
        array[index, 0] = item
    return array


@pytest.fixture(scope="module")
def wider_tree(tmp_path_factory) -> tuple[Path, Path]:
    """(images, ground truth): one WIDER-layout event holding the crowd photo, one hand-placed face box."""
    from scipy.io import savemat

    root = tmp_path_factory.mktemp("wider")
    (root / "images" / "0--Parade").mkdir(parents=True)
    shutil.copy(require(CROWD_PHOTO), root / "images" / "0--Parade" / "crowd.jpg")
    gt = root / "gt"
    gt.mkdir()
    files = _cell([_cell([np.array(["crowd"])])])
    boxes = _cell([_cell([np.array([[100.0, 100.0, 80.0, 100.0]])])])
    savemat(gt / "wider_face_val.mat", {"event_list": _cell([np.array(["0--Parade"])]), "file_list": files,
                                        "face_bbx_list": boxes})  # fmt: skip
    for setting in ("easy", "medium", "hard"):
        savemat(gt / f"wider_{setting}_val.mat", {"gt_list": _cell([_cell([np.array([[1]])])])})
    return root / "images", gt


def test_eval_table(converted, wider_tree):
    mode, out, _ = converted
    images, gt = wider_tree
    model = out / next(p for p in manifest_paths(out) if p.endswith(".sim.onnx"))
    result = invoke(evaluate, "--images", str(images), "--model", str(model), "--ground-truth", str(gt))
    stdout = succeeded(result, f"eval ({mode})")
    assert "WIDER FACE val AP (1 images)" in stdout
    assert all(setting in stdout for setting in ("easy", "medium", "hard"))


def test_golden_record_table(tmp_path, real_weights):
    """Golden sets hold PyTorch's raw outputs whatever the artifacts' post-processing: one mode to run."""
    out = tmp_path / "golden"
    result = invoke(golden, "record", "--weights", str(real_weights), "--size", "320", "--output-dir", str(out))
    assert f"golden set {out}:" in succeeded(result, "golden record")


def test_console_script_export_nms_table(tmp_path, real_weights):
    """The installed console script (the bug's own path: exit 1 with a KeyError after writing the artifacts)."""
    script = shutil.which("retinaface-export", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("retinaface-export is not installed next to this Python")
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = ["--weights", str(real_weights), "--size", "320", "--postprocess", "nms", "--format", "onnx"]
    done = subprocess.run(
        [script, *args, "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"1 artifact in {out}" in done.stdout and "F1 1.000" in done.stdout
