"""``--protocol omz``: the package's vectorised mAP against the accuracy checker's code, transcribed.

The oracle is ``omz_accuracy_checker.py`` (the checker's converter, postprocessors and ``map`` metric, loop
for loop). Every comparison is ``==``: the same float, not a close one.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from omz_accuracy_checker import retinaface_resnet50_map

from conftest import SHARED, require
from retinaface_export.cli.evaluate import main
from retinaface_export.omz_protocol import annotation_boxes, evaluate_omz
from retinaface_export.widerface import GroundTruth, load_ground_truth, prediction_text

GT_DIR = SHARED / "widerface" / "ground_truth"


@pytest.fixture(scope="module")
def truth():
    return load_ground_truth(require(GT_DIR))


def made_truth(boxes_per_image):
    """Ground truth from lists of x y w h boxes (every face kept in every setting: OMZ does not use them)."""
    boxes = tuple(np.array(b, dtype=float).reshape(-1, 4) for b in boxes_per_image)
    keep = {s: tuple(np.arange(1, len(b) + 1) for b in boxes) for s in ("easy", "medium", "hard")}
    images = tuple(("0--E", f"img{i}") for i in range(len(boxes)))
    return GroundTruth(("0--E",), images, boxes, keep)


def test_hand_computed_map():
    # image 0: a 100 px face found (0.9) and a 40 px face (difficult: under 64 px) also found (0.8, ignored);
    # image 1: a 200 px face missed, a false alarm (0.7); a second box on image 0's face (0.6) is a false alarm
    truth = made_truth([[[10, 10, 100, 100], [300, 300, 40, 40]], [[0, 0, 200, 200]]])
    preds = [
        np.array([[10, 10, 100, 100, 0.9], [300, 300, 40, 40, 0.8], [12, 12, 100, 100, 0.6]]),
        np.array([[500, 500, 50, 50, 0.7]]),
    ]
    # by score: tp (P 1, R 1/2), ignored, fp (P 1/2), fp (P 1/3): AP = 1/2 * 1
    assert evaluate_omz(preds, truth) == 0.5 == retinaface_resnet50_map(truth, preds)


def test_a_face_that_counts_is_preferred_to_a_closer_difficult_one():
    # a 64 px face (counts) and a 63 px one (difficult) at one place: the prediction on the 63 px one overlaps
    # it fully and the 64 px one at 63/64, which is >= 0.5: it finds the face that counts
    truth = made_truth([[[0, 0, 70, 64], [0, 0, 70, 63]]])
    preds = [np.array([[0, 0, 70, 63, 0.9]])]
    assert evaluate_omz(preds, truth) == 1.0 == retinaface_resnet50_map(truth, preds)


def test_annotations_are_rounded_clipped_and_filtered():
    truth = made_truth([[[0, 0, 10, 63], [0, 0, 10, 64], [0, 0, 10, 1023], [0, 0, 10, 1024], [0, 1000, 10, 100]]])
    boxes, difficult, offsets = annotation_boxes(truth)
    # heights 63 and 1024 are out of [64, 1024); the last one is clipped to 1000..1024: 24 px high
    assert difficult.tolist() == [True, False, False, True, True]
    assert boxes[-1].tolist() == [0, 1000, 10, 1024] and offsets.tolist() == [0, 5]
    no_face = made_truth([[[0, 0, 0, 0]], [[5, 5, 80, 80]]])  # the .mat's box for an image without faces
    assert annotation_boxes(no_face)[2].tolist() == [0, 0, 1]


def test_no_prediction_at_all_scores_zero():
    truth = made_truth([[[10, 10, 100, 100]]])
    assert evaluate_omz([np.zeros((0, 5))], truth) == 0.0 == retinaface_resnet50_map(truth, [np.zeros((0, 5))])


def jittered(truth, seed, hit_rate=0.8, noise=0.05, decimals=2):
    """Near-copies of faces, false alarms, tied scores, images without predictions."""
    rng = np.random.default_rng(seed)
    preds = []
    for gt in truth.boxes:
        if rng.random() < 0.05:
            preds.append(np.zeros((0, 5)))
            continue
        hits = gt[rng.random(len(gt)) < hit_rate]
        hits = hits + rng.normal(0, noise, hits.shape) * np.repeat(np.abs(hits[:, 2:]) + 1, 2, axis=1)
        k = int(rng.integers(0, 6))
        false = np.column_stack([rng.uniform(0, 900, (k, 2)), rng.uniform(20, 300, (k, 2))])
        rows = np.vstack([hits, false])
        scores = np.round(np.concatenate([rng.uniform(0.4, 1, len(hits)), rng.uniform(0, 0.7, len(false))]), decimals)
        preds.append(np.column_stack([rows, scores]))
    return preds


def subset(truth, indices):
    return GroundTruth(
        truth.events,
        tuple(truth.images[i] for i in indices),
        tuple(truth.boxes[i] for i in indices),
        {s: tuple(v[i] for i in indices) for s, v in truth.keep.items()},
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_checker_on_real_ground_truth(truth, seed):
    rng = np.random.default_rng(100 + seed)
    small = subset(truth, sorted(rng.choice(len(truth.images), 250, replace=False)))
    preds = jittered(small, seed, decimals=seed % 3 + 1)
    ours = evaluate_omz(preds, small)
    assert ours == retinaface_resnet50_map(small, preds)
    assert 0.2 < ours < 0.99  # found faces and false alarms both


def test_equals_checker_on_the_whole_set(truth):
    preds = jittered(truth, 7)
    assert evaluate_omz(preds, truth) == retinaface_resnet50_map(truth, preds)


def test_equals_checker_on_awkward_cases(truth):
    # the images of odd faces (zero/negative sizes, the .mat's 0 0 0 0 for faceless images, duplicates) and
    # of faces crossing y = 1024, with predictions that copy faces exactly (ties between duplicate faces),
    # straddle the 64 px limit, round half to even, are not boxes, or land on faceless images
    odd = [29, 75, 829, 855, 1060, 1828, 1885, 2501, 3086, 3114, 98, 171, 174, 244]
    small = subset(truth, odd)
    rng = np.random.default_rng(5)
    preds = []
    for gt in small.boxes:
        rows = [gt.copy(), gt + 0.5, gt - 0.5, gt * np.array([1, 1, 1.02, 1.02])]
        rows.append(np.array([[0.5, 1.5, 2.5, 63.5], [10, 10, -5, 80], [0, 0, 0, 0], [3, 3, 100, 64.4999]]))
        rows = np.vstack(rows)
        preds.append(np.column_stack([rows, np.round(rng.uniform(0, 1, len(rows)), 1)]))
    ours = evaluate_omz(preds, small)
    assert ours == retinaface_resnet50_map(small, preds)


def test_equals_checker_with_duplicate_faces_and_ties():
    # several faces at the very same place: a prediction claims them all at once (the checker's np.where)
    rng = np.random.default_rng(11)
    images = []
    for _ in range(40):
        base = np.column_stack([rng.integers(0, 800, (6, 2)), rng.integers(20, 200, (6, 2))])
        images.append(np.vstack([base, base[: rng.integers(0, 4)]]))
    truth = made_truth(images)
    preds = []
    for gt in truth.boxes:
        rows = np.vstack([gt[rng.random(len(gt)) < 0.7], gt[rng.random(len(gt)) < 0.3] + rng.integers(-3, 4, 4)])
        preds.append(np.column_stack([rows, np.round(rng.uniform(0, 1, len(rows)), 1)]))
    ours = evaluate_omz(preds, truth)
    assert ours == retinaface_resnet50_map(truth, preds) and 0.3 < ours < 1


def test_cli_protocol_omz(tmp_path, truth):
    preds = jittered(truth, 3, decimals=4)
    for (event, name), rows in list(zip(truth.images, preds, strict=True))[::10]:  # the others: no file, no faces
        (tmp_path / event).mkdir(exist_ok=True)
        (tmp_path / event / f"{name}.txt").write_text(prediction_text(name, rows))
    result = CliRunner().invoke(
        main, ["--predictions", str(tmp_path), "--ground-truth", str(GT_DIR), "--protocol", "omz", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["protocol"] == "omz"
    # the files hold four decimals: the checker sees what they hold
    from retinaface_export.widerface import read_predictions

    assert written["map"] == retinaface_resnet50_map(truth, read_predictions(tmp_path, truth))
