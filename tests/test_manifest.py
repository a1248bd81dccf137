"""Manifests: every one the commands write validates against the shipped schema; a malformed one is one
clear error; every provenance block inside every artifact describes that artifact."""

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from conftest import SHARED, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.convert import main as convert_main
from retinaface_export.cli.parity import main as parity_main
from retinaface_export.errors import ManifestError
from retinaface_export.formats import FORMATS
from retinaface_export.manifest import Manifest, schema_path
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.provenance import provenance_problems
from retinaface_export.sizes import InputSize

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# An export with every conversion, INT8 included (~25 s): the tests that read it run in make test, not the fast tier.
@pytest.fixture(scope="module")
def folders(tmp_path_factory, real_weights):
    """A fixed-size export with every conversion (INT8 included) and a dynamic one, as the commands write them."""
    checkpoint = load_checkpoint(real_weights)
    fixed, dynamic = tmp_path_factory.mktemp("fixed"), tmp_path_factory.mktemp("dynamic")
    export_checkpoint(checkpoint, ExportOptions(sizes=(InputSize(320, 320),)), fixed)
    convert_export(fixed, ConvertOptions("onnxsim"))
    convert_export(fixed, ConvertOptions("openvino", ("fp32", "fp16", "int8"), calibration=require(SHARED / "images")))
    convert_export(fixed, ConvertOptions("openvino", input_format="u8-nhwc"))
    sizes = (InputSize(320, 320), InputSize(256, 384))
    export_checkpoint(checkpoint, ExportOptions(sizes=sizes, dynamic=True), dynamic)
    convert_export(dynamic, ConvertOptions("openvino", input_format="f32-nchw"))
    return fixed, dynamic


@pytest.mark.slow
def test_every_written_manifest_validates_against_the_shipped_schema(folders):
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for folder in folders:
        data = json.loads((folder / "manifest.json").read_text())
        jsonschema.validate(data, schema)
        assert {a["format"] for a in data["artifacts"]} <= set(FORMATS)
    kinds = {
        (a["format"], a["precision"], a["input_format"])
        for a in json.loads((folders[0] / "manifest.json").read_text())["artifacts"]
    }
    assert len(kinds) == 7  # torchscript, onnx, onnxsim, IR fp32/fp16/int8, IR u8


@pytest.mark.slow
def test_the_int8_row_records_its_search_and_views_no_step_fitted_on(folders):
    artifacts = json.loads((folders[0] / "manifest.json").read_text())["artifacts"]
    (row,) = [a for a in artifacts if a["precision"] == "int8"]
    search = row["conversion"]["int8_search"]
    assert search["seconds"] > 0
    assert 2 <= search["evaluations"] <= search["most"]  # the float and the INT8 model at least
    assert "int8_search" not in FORMATS["openvino"].read_provenance(folders[0] / row["path"])  # not in the file
    unseen = row["verification"]["held_out_views"]
    photos = row["conversion"]["int8"]["validation"]["images"]
    assert unseen["views"] == ["stretch", "stretch-flip", "scale-50%", "scale-75%"]
    assert unseen["samples"] == 4 * photos and 0.0 <= unseen["f1"] <= 1.0


@pytest.mark.slow
def test_every_provenance_block_describes_its_artifact(folders):
    checked = 0
    for folder in folders:
        manifest = Manifest.read(folder)
        for record in manifest.artifacts:
            blocks = FORMATS[record.format].provenance_blocks(folder / record.path)
            assert "retinaface_export" in blocks
            assert provenance_problems(record.to_dict(), blocks, manifest.checkpoint) == [], record.path
            checked += len(blocks)
    assert checked >= 10


def test_a_block_that_describes_the_source_is_caught():
    record = {"format": "openvino", "precision": "int8", "size": [640, 640], "batch": 1, "input_format": "u8-nhwc"}
    blocks = {
        "retinaface_export": {"precision": "int8", "input_size": [640, 640], "input_format": "u8-nhwc"},
        "framework": {"precision": "fp32", "input_size": [320, 320]},
    }
    problems = provenance_problems(record, blocks)
    assert len(problems) == 2 and all("'framework'" in p for p in problems)


def _mutate(data, mutation):
    data = copy.deepcopy(data)
    mutation(data)
    return data


def _set(path, value):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


# (mutation, fragment the one-line error must hold)
MALFORMED = {
    "artifacts is a string": (_set(["artifacts"], "oops"), "'artifacts' must be a list"),
    "path leaves the folder": (_set(["artifacts", 0, "path"], "../outside/evil.onnx"), "plain file name"),
    "absolute path": (_set(["artifacts", 0, "path"], "/tmp/evil.onnx"), "plain file name"),
    "missing path": (_delete(["artifacts", 0, "path"]), "'path' is missing"),
    "missing format": (_delete(["artifacts", 0, "format"]), "'format' is missing"),
    "unknown format": (_set(["artifacts", 0, "format"], "tensorrt"), "'format' must be one of"),
    "missing sha256": (_delete(["artifacts", 0, "sha256"]), "'sha256' is missing"),
    "sha256 not hex": (_set(["artifacts", 0, "sha256"], "x" * 64), "not a sha256"),
    "size is a string": (_set(["artifacts", 0, "size"], "640"), "'size' must be a list"),
    "huge size": (_set(["artifacts", 0, "size"], [99968, 99968]), "multiples of 32 up to"),
    "huge batch": (_set(["artifacts", 0, "batch"], 100000), "'batch' must be from 1 to"),
    "batch is a bool": (_set(["artifacts", 0, "batch"], True), "'batch' must be an integer"),
    "missing checkpoint": (_delete(["checkpoint"]), "'checkpoint' is missing"),
    "checkpoint anchors broken": (_set(["checkpoint", "anchors"], {"steps": [8]}), "anchor configuration"),
    "duplicate entries": (lambda d: d["artifacts"].append(copy.deepcopy(d["artifacts"][0])), "more than once"),
    "row is a list": (_set(["artifacts", 0], []), "expected an object"),
    "old schema": (_set(["schema"], 1), "schema 1 is not 2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_manifest_is_one_clear_error(folders, tmp_path, name):
    mutation, fragment = MALFORMED[name]
    folder = tmp_path / "export"
    shutil.copytree(folders[0], folder)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(_mutate(json.loads(manifest.read_text()), mutation)))
    with pytest.raises(ManifestError, match=r"manifest\.json") as caught:
        Manifest.read(folder)
    assert fragment in str(caught.value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for command, args in (
        (convert_main, [str(folder), "--to", "onnxsim", "-q"]),
        (parity_main, [str(folder), "--golden", str(folder), "-q"]),
    ):
        result = CliRunner().invoke(command, args)
        assert (result.exit_code == 1 and result.exception is None) or isinstance(result.exception, SystemExit)
        (line,) = result.output.strip().splitlines()
        assert "manifest.json" in line and fragment in line and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, inside or outside


@pytest.mark.slow
def test_nan_in_a_manifest_is_refused(folders, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(folders[0], folder)
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"bytes": ', '"bytes": NaN, "x": ', 1))
    with pytest.raises(ManifestError, match=r"not valid JSON"):
        Manifest.read(folder)


@pytest.mark.slow
def test_a_symlink_that_leaves_the_folder_is_refused(folders, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(folders[0], folder)
    record = Manifest.read(folder).artifacts[0]
    outside = tmp_path / "outside.bin"
    shutil.move(folder / record.path, outside)
    (folder / record.path).symlink_to(outside)
    result = CliRunner().invoke(convert_main, [str(folder), "--to", "onnxsim", "-q"])
    if record.format == "onnx":
        assert result.exit_code == 1 and "resolves outside its export folder" in result.output
    report = CliRunner().invoke(parity_main, [str(folder), "--golden", str(GOLDEN), "--json", str(tmp_path / "p.json")])
    assert report.exit_code == 1
    rows = json.loads((tmp_path / "p.json").read_text())["artifacts"]
    (row,) = [r for r in rows if r["path"] == record.path]
    assert any("resolves outside its export folder" in f for f in row["failures"])


@pytest.mark.slow
def test_every_ir_tells_model_api_readers_how_to_feed_it(folders):
    from retinaface_export.converters.openvino.runtime import openvino_core

    checked = 0
    for folder in folders:
        for record in Manifest.read(folder).artifacts:
            if record.format != "openvino":
                continue
            model = openvino_core().read_model(str(folder / record.path))
            info = {key: value.astype(str) for key, value in model.get_rt_info()["model_info"].items()}
            # colour order, scale, resize and wrapper stated in every IR, INT8 ones too (every mode: test_omz_client)
            assert info["reverse_input_channels"] == "False" and info["scale_values"] == "1 1 1", record.path
            assert info["resize_type"] == "standard" and info["model_type"] == "RetinaFace-PyTorch", record.path
            assert info["postprocess"] == record.postprocess["mode"], record.path
            raw_pixels = record.input_format != "f32-nchw-minus-mean"
            assert info["mean_values"] == ("0 0 0" if raw_pixels else "104 117 123"), record.path
            assert info["layout"] == ("data:NHWC" if record.input_format == "u8-nhwc" else "data:NCHW")
            # every IR asks for f32 (the CPU plugin ignores this entry: the per-layer precision marks are what
            # keep a client's compile in f32, tests/test_openvino_precision.py)
            assert model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "f32"
            marks = (folder / record.path).read_text().count('<attribute name="precise" version="0"')
            assert (marks > 100) == (record.precision != "int8"), record.path
            checked += 1
    assert checked == 5


# ---------------------------------------------------------------- the reader and its schema are one (issue 25)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """A synthetic mobilenet0.25 TorchScript at 320 (a few seconds): a real manifest to mutate."""
    from retinaface_export.cli.export import main as export_main

    folder = tmp_path_factory.mktemp("small")
    args = ["--size", "320", "--format", "torchscript", "--output-dir", str(folder), "-q"]
    assert CliRunner().invoke(export_main, args, catch_exceptions=False).exit_code == 0
    return folder


# What the typed reader used to accept although manifest.schema.json rejects it (mutation, what the error says).
SCHEMA_ONLY = {
    "unknown top-level field": (_set(["evil"], 1), "'evil' is not a field of it"),
    "created missing": (_delete(["created"]), "'created' is missing"),
    "checkpoint path missing": (_delete(["checkpoint", "path"]), "checkpoint: 'path' is missing"),
    "checkpoint sha256 missing": (_delete(["checkpoint", "sha256"]), "checkpoint: 'sha256' is missing"),
    "unknown artifact field": (_set(["artifacts", 0, "evil"], 1), "artifacts[0]: 'evil' is not a field of it"),
    "unknown tensor field": (_set(["artifacts", 0, "inputs", 0, "evil"], 1), "is not a field of it"),
    "unknown post-processing field": (_set(["artifacts", 0, "postprocess", "evil"], 1), "is not a field of it"),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_ONLY))
def test_the_reader_refuses_what_the_schema_refuses(small_export, tmp_path, name):
    mutation, fragment = SCHEMA_ONLY[name]
    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    data = _mutate(json.loads((folder / "manifest.json").read_text()), mutation)
    with pytest.raises(jsonschema.ValidationError):  # the row is one the schema rejects
        jsonschema.validate(data, json.loads(schema_path().read_text()))
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        Manifest.read(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'manifest.json'}: ") and "\n" not in message, message
    assert fragment in message, message


def test_the_shipped_schema_uses_only_what_the_reader_checks(small_export):
    from retinaface_export.json_schema import schema_problem, unknown_keywords

    schema = json.loads(schema_path().read_text())
    assert unknown_keywords(schema) == set()
    data = json.loads((small_export / "manifest.json").read_text())
    jsonschema.validate(data, schema)
    assert schema_problem(data, schema) is None
    Manifest.read(small_export)
