import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import CROWD_PHOTO, SHARED, require
from retinaface_export.cli.detect import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def photos():
    return sorted(require(SHARED / "images").glob("wider_sample_*.jpg"))


def test_json_and_drawings(tmp_path, real_weights, photos):
    out_json = tmp_path / "faces.json"
    result = run(*photos, "--weights", real_weights, "--json", out_json, "--output-dir", tmp_path / "drawn", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(out_json.read_text())
    assert [entry["image"] for entry in report] == [str(p) for p in photos]
    total = 0
    for entry, photo in zip(report, photos, strict=True):
        height, width = cv2.imread(str(photo)).shape[:2]
        for face in entry["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0.5 < face["score"] <= 1 and x1 < x2 and y1 < y2
            assert -0.1 * width < x1 and x2 < 1.1 * width and -0.1 * height < y1 and y2 < 1.1 * height
            assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
            # landmarks of a real face sit inside (or at the edge of) its box
            lx, ly = np.array(face["landmarks"]).T
            assert (lx > x1 - 0.2 * (x2 - x1)).all() and (lx < x2 + 0.2 * (x2 - x1)).all()
            assert (ly > y1 - 0.2 * (y2 - y1)).all() and (ly < y2 + 0.2 * (y2 - y1)).all()
            total += 1
        drawn = cv2.imread(str(tmp_path / "drawn" / f"{photo.stem}.png"))
        assert drawn.shape[:2] == (height, width)
        if entry["faces"]:
            assert not np.array_equal(drawn, cv2.imread(str(photo)))
    assert total >= 20


def test_unreadable_images_are_named_and_others_still_processed(tmp_path, real_weights):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    out_json = tmp_path / "faces.json"
    result = run(missing, require(CROWD_PHOTO), broken, "--weights", real_weights, "--json", out_json, "-q")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"retinaface-detect: error: {missing}: no such file",
        f"retinaface-detect: error: {broken}: cannot be read as an image",
    ]
    report = json.loads(out_json.read_text())
    assert [e["image"] for e in report] == [str(CROWD_PHOTO)] and len(report[0]["faces"]) > 300


@pytest.mark.parametrize("args", [[], ["--weights", "a.pth", "--model", "b.onnx"]])
def test_exactly_one_model_source(tmp_path, args):
    result = run(require(CROWD_PHOTO), *args)
    assert result.exit_code == 2
    assert "exactly one of --weights CKPT or --model ARTIFACT" in result.stderr


def test_same_stem_images_get_distinct_drawings(tmp_path, real_weights):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder in (a, b):
        shutil.copy(require(SHARED / "images" / "wider_sample_1.jpg"), folder / "photo.jpg")
    result = run(a / "photo.jpg", b / "photo.jpg", "--weights", real_weights, "--output-dir", tmp_path / "out", "-q")
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.png", "photo_1.png"]


def test_artifact_without_provenance_is_refused(tmp_path):
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    options = ExportOptions(sizes=(InputSize(64, 64),), formats=("onnx",))
    export_checkpoint(synthetic_checkpoint(get_variant("mobilenet0.25")), options, tmp_path / "export")
    model = onnx.load(str(tmp_path / "export" / "retinaface_mobilenet0.25_64x64.onnx"))
    del model.metadata_props[:]  # the contract's graph, without our provenance
    onnx.save(model, tmp_path / "foreign.onnx")
    result = run(require(CROWD_PHOTO), "--model", tmp_path / "foreign.onnx")
    assert result.exit_code == 1
    assert f"{tmp_path / 'foreign.onnx'}: no retinaface-export provenance" in result.stderr


def test_artifact_outside_the_contract_is_refused_before_a_runtime_opens_it(tmp_path):
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["data"], ["out"])],
            "g",
            [onnx.helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
            [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        )
    )
    onnx.save(model, tmp_path / "foreign.onnx")
    result = run(require(CROWD_PHOTO), "--model", tmp_path / "foreign.onnx")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"{tmp_path / 'foreign.onnx'}: outputs are 'out', not the contract's" in line


@pytest.mark.parametrize(
    "name, says", [("model.engine", "not a known artifact type"), ("gone.onnx", "no such artifact file")]
)
def test_bad_model_path(tmp_path, name, says):
    if name == "model.engine":
        (tmp_path / name).write_bytes(b"x")
    result = run(require(CROWD_PHOTO), "--model", tmp_path / name)
    assert result.exit_code == 1 and f"{tmp_path / name}: {says}" in result.stderr


def test_damaged_artifact_is_named(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    result = run(require(CROWD_PHOTO), "--model", tmp_path / "bad.onnx")
    assert result.exit_code == 1 and f"{tmp_path / 'bad.onnx'}: not an ONNX model" in result.stderr
