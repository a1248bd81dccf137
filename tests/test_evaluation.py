"""WIDER FACE evaluation: hand-computed cases, the slow transcription of the reference as oracle."""

import json
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from reference_evaluation import reference_evaluate
from scipy.io import savemat

from conftest import SHARED, require
from retinaface_export.cli.evaluate import main
from retinaface_export.errors import FileError
from retinaface_export.evaluation import evaluate
from retinaface_export.widerface import GroundTruth, load_ground_truth, prediction_text, read_predictions

GT_DIR = SHARED / "widerface" / "ground_truth"


def tiny_truth(keep_easy, keep_medium, keep_hard):
    boxes = (np.array([[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 30.0, 30.0]]),)
    keep = {"easy": (np.array(keep_easy),), "medium": (np.array(keep_medium),), "hard": (np.array(keep_hard),)}
    return GroundTruth(("0--E",), (("0--E", "img"),), boxes, {k: v for k, v in keep.items()})


def test_hand_computed_ap():
    # one hit on box 1 (score 0.9) and one false positive (0.5): normalised to 1.0 and 0.0
    truth = tiny_truth([1], [2], [1, 2])
    preds = [np.array([[10.0, 10.0, 20.0, 20.0, 0.9], [300.0, 300.0, 10.0, 10.0, 0.5]])]
    aps = evaluate(preds, truth)
    # easy: the only kept face found at precision 1 -> 1.0; medium: the hit is on an ignored face, the kept
    # one is never found -> 0.0; hard: one of two faces at precision 1 -> 0.5
    assert aps == {"easy": 1.0, "medium": 0.0, "hard": 0.5}
    assert aps == reference_evaluate(preds, truth.boxes, truth.keep)


def test_image_without_predictions_still_counts_its_faces():
    truth = tiny_truth([1, 2], [1, 2], [1, 2])
    aps = evaluate([np.zeros((0, 5))], truth)
    assert aps == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


@pytest.fixture(scope="module")
def truth():
    return load_ground_truth(require(GT_DIR))


def test_real_ground_truth_loads(truth):
    assert len(truth.events) == 61 and len(truth.images) == 3226
    assert sum(len(b) for b in truth.boxes) == 39708
    assert {s: sum(len(k) for k in keep) for s, keep in truth.keep.items()} == {
        "easy": 7211,
        "medium": 13319,
        "hard": 31958,
    }


def subset(truth, count):
    return GroundTruth(
        truth.events, truth.images[:count], truth.boxes[:count], {s: v[:count] for s, v in truth.keep.items()}
    )


def random_predictions(truth, seed):
    """Jittered copies of some ground-truth boxes, random false positives, tied scores, empty images."""
    rng = np.random.default_rng(seed)
    preds = []
    for gt in truth.boxes:
        if rng.random() < 0.1:
            preds.append(np.zeros((0, 5)))
            continue
        hits = gt[rng.random(len(gt)) < 0.7] if len(gt) else np.zeros((0, 4))
        hits = hits + rng.normal(0, 0.08, hits.shape) * np.repeat(hits[:, 2:], 2, axis=1)
        false = rng.uniform(5, 400, (rng.integers(0, 8), 4))
        rows = np.vstack([hits, false])
        scores = np.round(rng.uniform(0, 1, len(rows)), 2)  # two decimals: many ties
        order = np.argsort(-scores, kind="stable")  # files are written best first
        preds.append(np.column_stack([rows, scores])[order])
    return preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_evaluation_equals_reference_transcription(truth, seed):
    small = subset(truth, 120)
    preds = random_predictions(small, seed)
    fast, slow = evaluate(preds, small), reference_evaluate(preds, small.boxes, small.keep)
    for setting in ("easy", "medium", "hard"):
        assert abs(fast[setting] - slow[setting]) <= 1e-6, (setting, fast, slow)
    assert 0.05 < fast["hard"] < 0.95  # a real mix of hits and misses


def test_unsorted_files_are_taken_in_file_order(truth):
    small = subset(truth, 40)
    preds = [p[::-1].copy() for p in random_predictions(small, 5)]  # worst first, as a careless writer might
    fast, slow = evaluate(preds, small), reference_evaluate(preds, small.boxes, small.keep)
    assert all(abs(fast[s] - slow[s]) <= 1e-6 for s in fast)


def test_full_set_runs(truth):
    aps = evaluate(random_predictions(truth, 9), truth)
    assert all(0 < ap < 1 for ap in aps.values())


def write_folder(folder, truth, preds):
    for (event, name), rows in zip(truth.images, preds, strict=True):
        (folder / event).mkdir(parents=True, exist_ok=True)
        (folder / event / f"{name}.txt").write_text(prediction_text(name, rows))


def test_prediction_files_round_trip_and_cli(tmp_path, truth):
    preds = random_predictions(truth, 3)
    write_folder(tmp_path / "preds", truth, preds)
    read = read_predictions(tmp_path / "preds", truth)
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(read, preds, strict=True))
    result = CliRunner().invoke(
        main,
        ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(GT_DIR), "--json", str(tmp_path / "ap.json")],
    )
    assert result.exit_code == 0, result.output
    aps = json.loads((tmp_path / "ap.json").read_text())
    assert aps == pytest.approx(evaluate(read, truth), abs=1e-12)


def test_malformed_line_names_file_and_line(tmp_path, truth):
    event, name = truth.images[0]
    (tmp_path / event).mkdir()
    (tmp_path / event / f"{name}.txt").write_text(f"{name}\n2\n1 2 3 4 0.5\n1 2 three 4 0.5\n")
    with pytest.raises(FileError, match=r"line 4: not 'x y w h score' numbers"):
        read_predictions(tmp_path, truth)
    result = CliRunner().invoke(main, ["--predictions", str(tmp_path), "--ground-truth", str(GT_DIR)])
    assert result.exit_code == 1 and f"{tmp_path / event / (name + '.txt')}: line 4" in result.stderr


def test_unknown_image_and_missing_events_are_warned(tmp_path, truth, caplog):
    event, name = truth.images[0]
    (tmp_path / event).mkdir()
    (tmp_path / event / f"{name}.txt").write_text(f"{name}\n1\n1 2 3 4 0.5\n")
    (tmp_path / event / "stray.txt").write_text("not_in_gt\n0\n")
    with caplog.at_level(logging.WARNING):
        preds = read_predictions(tmp_path, truth)
    assert "not_in_gt is not in the ground truth" in caplog.text
    assert (
        "no event folder" in caplog.text and "3225 of 3226 ground-truth images have no prediction file" in caplog.text
    )
    assert len(preds) == 3226 and len(preds[0]) == 1


def _cell(items):
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    return array


def test_model_over_a_wider_layout_tree(tmp_path, real_weights):
    # two events, three photos from ../shared, ground truth = hand-made boxes around their faces' area
    photos = {"0--Parade": ["wider_sample_1", "wider_sample_2"], "1--Handshaking": ["wider_sample_3"]}
    from retinaface_export.inference.detector import Detector

    detector = Detector.from_checkpoint(real_weights)
    boxes_per_event, names_per_event = [], []
    for event, names in photos.items():
        (tmp_path / "images" / event).mkdir(parents=True)
        event_boxes = []
        for name in names:
            shutil.copy(require(SHARED / "images" / f"{name}.jpg"), tmp_path / "images" / event / f"{name}.jpg")
            import cv2

            faces = detector.detect(cv2.imread(str(tmp_path / "images" / event / f"{name}.jpg")))
            event_boxes.append(
                np.array(
                    [[f.box[0], f.box[1], f.box[2] - f.box[0], f.box[3] - f.box[1]] for f in faces if f.score > 0.9]
                ).reshape(-1, 4)
            )
        boxes_per_event.append(event_boxes)
        names_per_event.append(names)
    gt = tmp_path / "gt"
    gt.mkdir()
    events = _cell([np.array([e]) for e in photos])
    files = _cell([_cell([np.array([n]) for n in names]) for names in names_per_event])
    face_boxes = _cell([_cell(list(event_boxes)) for event_boxes in boxes_per_event])
    keep = _cell(
        [_cell([np.arange(1, len(b) + 1).reshape(-1, 1) for b in event_boxes]) for event_boxes in boxes_per_event]
    )
    savemat(gt / "wider_face_val.mat", {"event_list": events, "file_list": files, "face_bbx_list": face_boxes})
    for setting in ("easy", "medium", "hard"):
        savemat(gt / f"wider_{setting}_val.mat", {"gt_list": keep})
    out = tmp_path / "preds"
    result = CliRunner().invoke(
        main,
        [
            "--images",
            str(tmp_path / "images"),
            "--weights",
            str(real_weights),
            "--ground-truth",
            str(gt),
            "--save-predictions",
            str(out),
            "--json",
            str(tmp_path / "ap.json"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    aps = json.loads((tmp_path / "ap.json").read_text())
    assert all(ap > 0.9 for ap in aps.values()), aps  # its own confident faces are the ground truth
    assert sorted(p.name for p in (out / "0--Parade").iterdir()) == ["wider_sample_1.txt", "wider_sample_2.txt"]
    again = CliRunner().invoke(
        main, ["--predictions", str(out), "--ground-truth", str(gt), "--json", str(tmp_path / "ap2.json"), "-q"]
    )
    assert again.exit_code == 0 and json.loads((tmp_path / "ap2.json").read_text()) == pytest.approx(aps, abs=1e-4)
