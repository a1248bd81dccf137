"""The format table drives everything: a new format with a runtime of its own is one module and one row.

``tests/dummy_format.py`` is such a format (ONNX run by ``onnx.reference``, not ONNX Runtime). With its row
added, and no other file touched, it must appear in ``--to`` choices and be converted, verified, parity
checked, used by ``retinaface-detect`` and timed by ``retinaface-bench``; without the row it is unknown.
"""

import json
import shutil
from pathlib import Path

import dummy_format
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, SHARED, require
from retinaface_export import formats
from retinaface_export.bench.run import BenchSettings, bench_export
from retinaface_export.bench.stats import Budget
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.bench import main as bench_main
from retinaface_export.cli.convert import main as convert_main
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.images import read_image
from retinaface_export.manifest import Manifest
from retinaface_export.pipeline.convert import ConvertOptions, checked_sources, plan
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize

REPO_GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NAME = "retinaface_mobilenet0.25_320x320.ref.onnx"


@pytest.fixture()
def with_dummy_format(monkeypatch):
    monkeypatch.setitem(formats.FORMATS, dummy_format.FORMAT.name, dummy_format.FORMAT)  # the one row


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("formats")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), out
    )
    return out


@pytest.fixture()
def converted(with_dummy_format, onnx_export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(onnx_export, folder)
    result = CliRunner().invoke(convert_main, [str(folder), "--to", "onnx-reference", "-q"])
    assert result.exit_code == 0, result.output
    return folder


def test_the_dummy_runtime_is_not_onnxruntime():
    assert dummy_format.FORMAT.backend == "onnx-reference"
    assert {fmt.backend for fmt in formats.FORMATS.values()}.isdisjoint({"onnx-reference"})


def test_a_new_format_is_a_cli_choice(with_dummy_format):
    help_text = CliRunner().invoke(convert_main, ["--help"], terminal_width=200).output
    assert "onnx-reference" in help_text


def test_without_its_row_the_format_is_unknown(onnx_export):
    result = CliRunner().invoke(convert_main, [str(onnx_export), "--to", "onnx-reference"])
    assert result.exit_code == 2 and "onnx-reference" in result.output


def test_a_new_format_is_planned_converted_and_verified_by_its_own_runtime(with_dummy_format, converted):
    options = ConvertOptions("onnx-reference")
    (job,) = plan(checked_sources(converted, Manifest.read(converted), options), options)
    assert job.fmt is dummy_format.FORMAT and job.file_name == NAME
    manifest = json.loads((converted / "manifest.json").read_text())
    (row,) = [a for a in manifest["artifacts"] if a["format"] == "onnx-reference"]
    assert row["backend"] == "onnx-reference" and row["conversion"] == {"copied": True}
    verification = row["verification"]
    assert verification["passed"] and verification["reference"].startswith("its source")
    # another runtime computes the same graph: close to ONNX Runtime's outputs, but not bit for bit
    assert 0.0 < max(verification["max_abs_error"].values()) < 1e-4
    assert "onnx" in manifest["versions"]


def test_a_new_format_is_parity_checked(converted, tmp_path):
    report = tmp_path / "parity.json"
    images = str(require(SHARED / "images"))
    cli = CliRunner().invoke(
        parity_main, [str(converted), "--golden", str(REPO_GOLDEN), "--images", images, "--json", str(report)]
    )
    assert cli.exit_code == 0, cli.output
    assert "2 passed, 0 failed" in cli.output
    (checked,) = [a for a in json.loads(report.read_text())["artifacts"] if a["format"] == "onnx-reference"]
    assert checked["passed"] and checked["cases"] >= 1 and checked["detection"]["faces"] > 0


def test_a_new_format_detects_faces(converted, tmp_path):
    photo = require(CROWD_PHOTO)
    faces = {}
    for name in (NAME, "retinaface_mobilenet0.25_320x320.onnx"):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(
            detect_main, [str(photo), "--model", str(converted / name), "--json", str(out), "-q"]
        )
        assert result.exit_code == 0, result.output
        faces[name] = json.loads(out.read_text())[0]["faces"]
    assert len(faces[NAME]) == len(faces["retinaface_mobilenet0.25_320x320.onnx"]) > 0


def test_a_new_format_is_timed_by_the_bench(converted, tmp_path):
    report = bench_export(
        converted,
        read_image(require(CROWD_PHOTO)),
        BenchSettings(budget=Budget(seconds=None, runs=3, warmup=0), batches=(1,), eager=False),
    )
    rows = [row for row in report.rows if row.format == "onnx-reference"]
    assert {row.mode for row in rows} == {"latency", "throughput"}
    assert all(row.backend == "onnx-reference" and row.latency_ms_median > 0 for row in rows)
    (latency,) = [row for row in rows if row.mode == "latency"]
    assert latency.faces and latency.faces > 0
    result = CliRunner().invoke(bench_main, [str(converted), "--runs", "3", "--warmup", "0", "--no-eager", "-q"])
    assert result.exit_code == 0, result.output
