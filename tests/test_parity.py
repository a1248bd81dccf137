"""retinaface-parity and golden sets: passes on a clean export, fails (naming the artifact) on damage."""

import importlib.util
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import REPO, SHARED, require
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.cli.parity import main
from retinaface_export.formats import FORMATS
from retinaface_export.golden import find_golden_sets, load_golden, record_golden
from retinaface_export.hashing import sha256_file
from retinaface_export.parity import run_parity
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import INPUT_FORMATS
from retinaface_export.sizes import STANDARD_SIZES, InputSize
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant, list_variants

SIZES = (InputSize(640, 640), InputSize(512, 512), InputSize(320, 320))
IMAGES = SHARED / "images"


def _matrix():
    spec = importlib.util.spec_from_file_location("parity_matrix", REPO / "scripts" / "parity_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_format_precision_and_size_has_parity_coverage():
    matrix = _matrix()
    assert set(matrix.VARIANTS) == set(list_variants())
    assert set(matrix.SIZES) == {str(s) for s in STANDARD_SIZES}
    made = set(matrix.EXPORT_FORMATS) | {c[c.index("--to") + 1] for c in matrix.CONVERSIONS}
    assert made == set(FORMATS), f"formats without parity coverage: {set(FORMATS) - made}"
    for variant in list_variants():
        conversions = matrix.conversions_for(variant)
        precisions = {"fp32"} | {p for c in conversions if "--precision" in c for p in c if p in PRECISIONS}
        missing = {(variant, p) for p in set(PRECISIONS) - precisions}
        assert missing <= set(matrix.NOT_JUDGED), f"precisions without parity coverage: {missing}"
        assert all(matrix.NOT_JUDGED[m] for m in missing)  # every exemption says why
    assert all(v in list_variants() and p in PRECISIONS for v, p in matrix.NOT_JUDGED)
    inputs = {c[c.index("--input") + 1] for c in matrix.CONVERSIONS if "--input" in c}
    assert inputs | {"f32-nchw-minus-mean"} == set(INPUT_FORMATS)
    goldens = {g.checkpoint["variant"]: g for g in find_golden_sets(REPO / "golden")}
    for variant in list_variants():
        assert variant in goldens, f"no committed golden set for {variant}"
        assert {s.height for s in goldens[variant].sizes} == set(STANDARD_SIZES)


def test_every_format_is_judged_at_every_precision_it_makes():
    # per format, not only per variant: a precision one format makes (MNN FP16) may not hide behind another's
    matrix = _matrix()
    for variant in list_variants():
        judged = {name: {"fp32"} for name in matrix.EXPORT_FORMATS}
        for conversion in matrix.conversions_for(variant):
            made = conversion[conversion.index("--precision") + 1 :] if "--precision" in conversion else ["fp32"]
            name = conversion[conversion.index("--to") + 1]
            judged.setdefault(name, set()).update(p for p in made if p in PRECISIONS)
        for name, fmt in FORMATS.items():
            missing = {(variant, p) for p in set(fmt.precisions) - judged[name]}
            assert missing <= set(matrix.NOT_JUDGED), f"{name}: precisions without parity coverage: {missing}"


def test_committed_goldens_match_this_machines_pytorch():
    # a torch upgrade that changes numerics, or a non-deterministic synthetic model, shows up here
    for golden in find_golden_sets(REPO / "golden"):
        if golden.checkpoint["synthetic"]:
            checkpoint = synthetic_checkpoint(get_variant(golden.checkpoint["variant"]))
        else:
            checkpoint = load_checkpoint(require(SHARED / "weights" / "mobilenet0.25_Final.pth"))
        assert checkpoint.state_dict_sha256 == golden.checkpoint["state_dict_sha256"]
        case = next(c for c in golden.cases if c.size == InputSize(320, 320) and c.input.photo)
        from retinaface_export.eager import eager_runner
        from retinaface_export.golden import prepared_input
        from retinaface_export.preprocess import to_network_input

        outputs = eager_runner(checkpoint.model)(to_network_input(prepared_input(case, [require(IMAGES)])))
        for out, expected in zip(outputs, case.outputs, strict=True):
            assert float(np.max(np.abs(out[0][case.rows] - expected))) <= 1e-4


@pytest.fixture(scope="module")
def clean_export(real_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=SIZES), folder)
    convert_export(folder, ConvertOptions("onnxsim"))
    convert_export(folder, ConvertOptions("openvino", ("fp32", "fp16", "int8"), calibration=require(IMAGES)))
    convert_export(folder, ConvertOptions("openvino", input_format="u8-nhwc", sizes=SIZES[:1]))
    return folder


@pytest.fixture(scope="module")
def golden_sets():
    return find_golden_sets(REPO / "golden")


def copy_export(source, destination):
    import shutil

    shutil.copytree(source, destination)
    return destination


@pytest.mark.slow
def test_clean_export_passes(clean_export, golden_sets, tmp_path):
    report = run_parity(clean_export, golden_sets, [require(IMAGES)])
    assert report.passed, [a.failures for a in report.artifacts if a.failures] + report.failures
    formats = {(a.format, a.precision) for a in report.artifacts}
    assert formats == {
        ("torchscript", "fp32"),
        ("onnx", "fp32"),
        ("onnxsim", "fp32"),
        ("openvino", "fp32"),
        ("openvino", "fp16"),
        ("openvino", "int8"),
    }
    assert all(a.cases == 2 for a in report.artifacts)  # the photo and the synthetic image at its size
    # the CLI: exit 0, JSON and JUnit written, table on stdout
    result = CliRunner().invoke(
        main,
        [
            str(clean_export),
            "--golden",
            str(REPO / "golden"),
            "--images",
            str(IMAGES),
            "--json",
            str(tmp_path / "p.json"),
            "--junit",
            str(tmp_path / "p.xml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["passed"] is True
    assert 'failures="0"' in (tmp_path / "p.xml").read_text()


def _nudge_onnx(path, factor=1.01):
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 100:
            init.CopyFrom(onnx.numpy_helper.from_array(array * factor, init.name))
    onnx.save(model, str(path))


def _rewrite_sha(folder, name):
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for artifact in manifest["artifacts"]:
        for entry in [artifact, *artifact.get("companions", [])]:
            if entry["path"] == name:
                entry["sha256"] = sha256_file(folder / name)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.slow
def test_weights_nudged_by_one_percent_fail_naming_the_artifact(clean_export, golden_sets, tmp_path):
    folder = copy_export(clean_export, tmp_path / "nudged")
    victim = "retinaface_mobilenet0.25_512x512.onnx"
    _nudge_onnx(folder / victim)
    _rewrite_sha(folder, victim)  # as if a converter bug had written these weights
    ir_bin = "retinaface_mobilenet0.25_640x640_fp32.bin"
    weights = np.fromfile(folder / ir_bin, dtype=np.uint8)
    floats = weights[: weights.size // 4 * 4].view(np.float32)
    floats *= np.float32(1.01)
    weights.tofile(folder / ir_bin)
    _rewrite_sha(folder, ir_bin)
    report = run_parity(folder, golden_sets, [require(IMAGES)])
    assert not report.passed
    failed = {a.path for a in report.artifacts if not a.passed}
    assert failed == {victim, "retinaface_mobilenet0.25_640x640_fp32.xml"}
    onnx_result = next(a for a in report.artifacts if a.path == victim)
    assert any("max abs error" in f for f in onnx_result.failures)
    result = CliRunner().invoke(main, [str(folder), "--golden", str(REPO / "golden"), "--images", str(IMAGES), "-q"])
    assert result.exit_code == 1
    assert f"retinaface-parity: error: {victim}: " in result.stderr
    assert "parity: " in result.stderr and " 2 failed" in result.stderr


@pytest.mark.slow
def test_altered_file_without_manifest_update_fails(clean_export, golden_sets, tmp_path):
    folder = copy_export(clean_export, tmp_path / "altered")
    victim = "retinaface_mobilenet0.25_320x320.torchscript.pt"
    (folder / victim).write_bytes((folder / victim).read_bytes() + b"\0")
    (bad,) = [a for a in run_parity(folder, golden_sets, [require(IMAGES)]).artifacts if not a.passed]
    assert bad.path == victim and "altered since it was written" in bad.failures[0]


def test_nan_output_fails(tmp_path, real_weights, golden_sets):
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=SIZES[2:], formats=("onnx",)), tmp_path)
    name = "retinaface_mobilenet0.25_320x320.onnx"
    model = onnx.load(str(tmp_path / name))
    init = next(i for i in model.graph.initializer if onnx.numpy_helper.to_array(i).size > 100)
    array = onnx.numpy_helper.to_array(init).copy()
    array.flat[0] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    onnx.save(model, str(tmp_path / name))
    _rewrite_sha(tmp_path, name)
    (result,) = run_parity(tmp_path, golden_sets, [require(IMAGES)]).artifacts
    assert not result.passed and "NaN or Inf" in result.failures[0]


def test_golden_of_another_checkpoint_fails(tmp_path, golden_sets):
    export_checkpoint(
        synthetic_checkpoint(get_variant("mobilenet0.25")), ExportOptions(sizes=SIZES[2:], formats=("onnx",)), tmp_path
    )
    report = run_parity(tmp_path, golden_sets, [require(IMAGES)])
    assert not report.passed and "no golden set for checkpoint mobilenet0.25" in report.failures[0]
    result = CliRunner().invoke(main, [str(tmp_path), "--golden", str(REPO / "golden"), "-q"])
    assert result.exit_code == 1 and "no golden set for checkpoint" in result.stderr


def test_nothing_to_compare_fails(tmp_path, real_weights, golden_sets):
    # an export at a size no golden set has
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(256, 256),), formats=("onnx",)), tmp_path
    )
    (result,) = run_parity(tmp_path, golden_sets, [require(IMAGES)]).artifacts
    assert not result.passed and "nothing to compare" in result.failures[0]


def test_missing_runtime_fails(tmp_path, real_weights, golden_sets, monkeypatch):
    from retinaface_export import formats

    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=SIZES[2:], formats=("onnx",)), tmp_path)

    class NoRuntime(type(formats.FORMATS["onnx"])):
        def load(self, path, threads=None, optimize=False):  # what artifact_backend opens an artifact with
            raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setitem(formats.FORMATS, "onnx", NoRuntime())
    (result,) = run_parity(tmp_path, golden_sets, [require(IMAGES)]).artifacts
    assert not result.passed and "runtime missing" in result.failures[0]


def test_moved_photo_is_reported(tmp_path, real_weights, golden_sets):
    export_checkpoint(load_checkpoint(real_weights), ExportOptions(sizes=SIZES[2:], formats=("onnx",)), tmp_path)
    (result,) = run_parity(tmp_path, golden_sets, [tmp_path / "nowhere"]).artifacts
    assert not result.passed and "golden input photo not found" in " ".join(result.failures)


def test_record_golden_round_trip(tmp_path, real_weights):
    checkpoint = load_checkpoint(real_weights)
    golden = record_golden(
        checkpoint, (InputSize(320, 320),), (require(IMAGES / "wider_sample_1.jpg"),), (3,), tmp_path / "g", "test"
    )
    again = load_golden(tmp_path / "g")
    assert [c.input.name for c in again.cases] == ["wider_sample_1", "synthetic-3"]
    assert golden.checkpoint["sha256"] == sha256_file(real_weights)
    assert sum((tmp_path / "g" / n).stat().st_size for n in ("golden.json", "tensors.npz")) < 200_000
    for case in again.cases:
        assert len(case.rows) <= 256 + 768 and len(case.outputs[0]) == len(case.rows)


# ------------------------------------------------ every provenance entry against the manifest (issue 25)


@pytest.fixture(scope="module")
def small_real_export(real_weights, tmp_path_factory):
    """The trained checkpoint as ONNX at 320 and its OpenVINO IR (a few seconds; the packaged golden set fits)."""
    folder = tmp_path_factory.mktemp("provenance")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), folder
    )
    convert_export(folder, ConvertOptions("openvino"))
    return folder


def _onnx_entry(key, value):
    """Set (value not None) or drop one metadata entry of the ONNX artifact."""

    def edit(folder):
        path = next(folder.glob("*.onnx"))
        model = onnx.load(str(path))
        kept = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        if value is not None:
            model.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(model, str(path))
        return path.name

    return edit


def _ir_mean(folder):
    path = next(folder.glob("*.xml"))
    text = path.read_text()
    assert '<mean_values value="104 117 123" />' in text
    path.write_text(text.replace('<mean_values value="104 117 123" />', '<mean_values value="0 0 0" />'))
    return path.name


def _manifest_entry(where, value):
    def edit(folder):
        path = folder / "manifest.json"
        manifest = json.loads(path.read_text())
        target = manifest
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
        path.write_text(json.dumps(manifest))
        return None

    return edit


_WIDE_VARIANCE = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.2, 0.2]}
_SMALL_FACES = {"min_sizes": [[8, 16], [32, 64], [128, 256]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}
# (edit of the export folder returning the artifact it rewrote, what parity's failure says)
PROVENANCE_LIES = {
    "anchors-variance": (_onnx_entry("anchors", _WIDE_VARIANCE), "says anchors="),
    "checkpoint-sha256": (_onnx_entry("checkpoint_sha256", "0" * 64), "says checkpoint_sha256="),
    "state-dict-sha256": (_onnx_entry("checkpoint_state_dict_sha256", "1" * 64), "says checkpoint_state_dict_sha256="),
    "variant": (_onnx_entry("variant", "resnet50"), "says variant='resnet50'"),
    "postprocess": (_onnx_entry("postprocess", {"mode": "decode"}), "says postprocess="),
    "int8-record-on-fp32": (_onnx_entry("int8", {"accuracy": {"f1_drop": 0.0}}), "has int8"),
    "anchors-missing": (_onnx_entry("anchors", None), "lacks anchors"),
    "model-info-mean": (_ir_mean, "says mean_values='0 0 0', the manifest says '104 117 123'"),
    "manifest-anchors": (_manifest_entry(["checkpoint", "anchors"], _SMALL_FACES), "says anchors="),
    "manifest-file-sha256": (_manifest_entry(["checkpoint", "sha256"], None), "says checkpoint_sha256="),
}


def test_the_unedited_small_export_passes(small_real_export, golden_sets):
    report = run_parity(small_real_export, golden_sets, [])
    assert report.passed, [a.failures for a in report.artifacts]


@pytest.mark.parametrize("lie", PROVENANCE_LIES)
def test_every_provenance_entry_is_compared_with_the_manifest(small_real_export, golden_sets, tmp_path, lie):
    """Issue 25: parity compared five keys, so anchors, digests, variant, post-processing, the INT8 record or
    OpenVINO's mean could disagree with the manifest and parity passed while detect decoded differently."""
    edit, says = PROVENANCE_LIES[lie]
    folder = copy_export(small_real_export, tmp_path / "export")
    edited = edit(folder)
    if edited:
        _rewrite_sha(folder, edited)
    report = run_parity(folder, golden_sets, [])
    failures = [f for a in report.artifacts for f in a.failures]
    assert not report.passed and any(says in f for f in failures), failures
