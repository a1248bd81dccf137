"""The format table drives everything: a new format is one module and one row, and every command sees it."""

import json
from pathlib import Path

import dummy_format
import pytest
from click.testing import CliRunner

from conftest import SHARED, require
from retinaface_export import formats
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.convert import main as convert_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.convert import ConvertOptions, checked_sources, plan
from retinaface_export.export import ExportOptions, export_checkpoint
from retinaface_export.golden import find_golden_sets
from retinaface_export.manifest import Manifest
from retinaface_export.parity import run_parity
from retinaface_export.sizes import InputSize

REPO_GOLDEN = Path(__file__).resolve().parents[1] / "golden"


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


def test_a_new_format_is_a_cli_choice(with_dummy_format):
    help_text = CliRunner().invoke(convert_main, ["--help"], terminal_width=200).output
    assert "onnx-copy" in help_text


def test_without_its_row_the_format_is_unknown(onnx_export):
    result = CliRunner().invoke(convert_main, [str(onnx_export), "--to", "onnx-copy"])
    assert result.exit_code == 2 and "onnx-copy" in result.output


def test_a_new_format_is_planned_converted_and_parity_checked(with_dummy_format, onnx_export, tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(onnx_export, folder)
    options = ConvertOptions("onnx-copy")
    (job,) = plan(checked_sources(folder, Manifest.read(folder), options), options)
    assert job.fmt is dummy_format.FORMAT and job.file_name == "retinaface_mobilenet0.25_320x320.copy.onnx"

    result = CliRunner().invoke(convert_main, [str(folder), "--to", "onnx-copy", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    (row,) = [a for a in manifest["artifacts"] if a["format"] == "onnx-copy"]
    assert row["conversion"] == {"copied": True} and row["verification"]["max_abs_error"]["face_rpn_cls_prob"] == 0.0

    report = run_parity(folder, find_golden_sets(REPO_GOLDEN), [require(SHARED / "images")])
    (checked,) = [a for a in report.artifacts if a.format == "onnx-copy"]
    assert checked.passed and checked.cases >= 1 and checked.detection.faces > 0
    cli = CliRunner().invoke(
        parity_main, [str(folder), "--golden", str(REPO_GOLDEN), "--images", str(SHARED / "images")]
    )
    assert cli.exit_code == 0 and "2 passed, 0 failed" in cli.output
