"""bf16 OpenVINO IRs (issue 22, item 2): judged by their faces on photos and by a stated tensor rule.

A bf16 IR asks the CPU plugin for bf16 (rt_info) and carries no precision marks, so on a CPU with bf16
(AVX512-BF16, AMX) every client runs it in bf16; elsewhere OpenVINO runs it in f32 and the record says that
bf16 was not checked. The conversion's verification is the bf16 tensor rule on the verification inputs plus
strict detection F1 against the FP32 source on the photos given (``--validation``).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SHARED, photo_input, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli import convert as convert_cli
from retinaface_export.comparison import Case, compare_outputs
from retinaface_export.converters.openvino.runtime import compile_model, executed_precision, openvino_core
from retinaface_export.errors import ExportError, UsageError
from retinaface_export.pipeline.convert import ConvertOptions, convert_export, unchecked_precision
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.precision import PRECISIONS
from retinaface_export.sizes import InputSize

STEM = "retinaface_mobilenet0.25_320x320"
HAS_BF16 = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
NO_BF16 = "this CPU has no bf16 (OpenVINO OPTIMIZATION_CAPABILITIES): a bf16 IR runs in f32 here"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("bf16-export")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), out
    )
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos with faces: the crowd photo and two small ones."""
    folder = tmp_path_factory.mktemp("bf16-photos")
    for name in ("crowd_selfie.jpg", "wider_sample_1.jpg", "wider_sample_2.jpg"):
        shutil.copy(require(SHARED / "images" / name), folder / name)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, exported, photos):
    out = tmp_path_factory.mktemp("bf16")
    shutil.copytree(exported, out, dirs_exist_ok=True)
    convert_export(out, ConvertOptions("openvino", precisions=("fp32", "bf16"), validation=photos))
    return out


def _row(folder: Path, precision: str) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    (row,) = [a for a in manifest["artifacts"] if a["format"] == "openvino" and a["precision"] == precision]
    return row


def test_the_bf16_ir_is_judged_by_tensors_and_by_faces_on_the_photos(converted, photos):
    row = _row(converted, "bf16")
    verification = row["verification"]
    assert verification["passed"] and verification["kind"] == "tensors"
    assert verification["rule"] == PRECISIONS["bf16"].describe()
    detections = verification["detections"]
    assert detections["photos"]["folder"] == str(photos) and detections["photos"]["images"] == 3
    assert detections["samples"] == 3 * len(detections["photos"]["augmentations"])
    assert detections["f1"] >= 0.99 and detections["min_f1"] == 0.99
    for name, mean in verification["mean_error_of_range"].items():
        assert 0 < mean <= PRECISIONS["bf16"].mean_range_fraction, name  # > 0: it did not run in f32


def test_the_ir_asks_for_bf16_and_is_not_marked(converted):
    xml = (converted / f"{STEM}_bf16.xml").read_text()
    assert 'name="precise"' not in xml
    assert '<INFERENCE_PRECISION_HINT value="bf16"' in xml
    assert 'name="precise"' in (converted / f"{STEM}_fp32.xml").read_text()  # the FP32 IR of the same run is


@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
def test_on_a_bf16_cpu_every_client_runs_it_in_bf16(converted, crowd_photo):
    row = _row(converted, "bf16")
    executed = row["verification"]["executed"]
    assert executed["executed"] == "bf16+f32" and executed["client_default"] == "bf16+f32"
    assert executed["runtime_precisions"]["bf16"] > 0
    assert "not_checked" not in row["verification"]
    path = converted / f"{STEM}_bf16.xml"
    client = openvino_core().compile_model(str(path), "CPU")  # what a user's code does
    assert executed_precision(client)["executed"] == "bf16+f32"
    data = photo_input(crowd_photo, 320, 320)
    got = [np.asarray(client({0: data})[port]) for port in client.outputs]
    f32 = compile_model(path, precision="f32")
    want = [np.asarray(f32({0: data})[port]) for port in f32.outputs]
    worst = max(float(np.abs(g - w).max() / (w.max() - w.min())) for g, w in zip(got, want, strict=True))
    assert 1e-3 < worst <= PRECISIONS["bf16"].range_fraction


def test_a_bf16_ir_run_in_f32_says_bf16_was_not_checked():
    """The branch a CPU without bf16 takes (OpenVINO then runs the IR in f32): the record must say so."""
    note = unchecked_precision("bf16", {"executed": "f32"})
    assert note and "were not checked here" in note and "in f32" in note
    assert unchecked_precision("bf16", {"executed": "bf16+f32"}) is None
    assert unchecked_precision("fp32", {"executed": "f32"}) is None


def test_the_mean_rule_fails_a_graph_that_is_off_everywhere():
    """bf16's max bound is loose (a few anchors land far off); the mean bound is what catches a broken graph."""
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=(1, 100, 4)).astype(np.float32)]
    span = float(reference[0].max() - reference[0].min())
    tolerance = PRECISIONS["bf16"]
    close = [reference[0] + rng.normal(scale=0.002 * span, size=reference[0].shape).astype(np.float32)]
    shifted = [reference[0] + np.float32(0.05 * span)]  # within the max bound, off everywhere
    assert compare_outputs([Case("close", reference, close)], tolerance, ["out"]).passed
    verdict = compare_outputs([Case("shifted", reference, shifted)], tolerance, ["out"])
    assert not verdict.passed and "mean abs error" in verdict.failures[0]


def test_the_detection_rule_can_refuse_and_nothing_is_written(exported, photos, tmp_path, monkeypatch):
    """A bf16 IR whose faces miss the rule is not committed (the rule raised past what bf16 reaches)."""
    from dataclasses import replace

    out = tmp_path / "out"
    shutil.copytree(exported, out)
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setitem(PRECISIONS, "bf16", replace(PRECISIONS["bf16"], min_f1=1.01))
    with pytest.raises(ExportError, match=r"strict detection F1 against FP32 .* < 1\.01"):
        convert_export(out, ConvertOptions("openvino", precisions=("bf16",), validation=photos))
    assert sorted(p.name for p in out.iterdir()) == before


def test_bf16_needs_photos_and_is_openvino_only(photos):
    with pytest.raises(UsageError, match="judged by its detections on photos"):
        ConvertOptions("openvino", precisions=("bf16",))
    with pytest.raises(UsageError, match="makes fp16, int8, not bf16"):
        ConvertOptions("onnx", precisions=("bf16",), validation=photos)
    ConvertOptions("openvino", precisions=("bf16",), calibration=photos)  # a calibration folder serves too


def test_the_cli_names_the_missing_photos(exported):
    result = CliRunner().invoke(convert_cli.main, [str(exported), "--to", "openvino", "--precision", "bf16"])
    assert result.exit_code != 0 and "--validation DIR" in result.output
