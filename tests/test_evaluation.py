"""WIDER FACE evaluation: hand-computed cases, the slow transcription of the reference as oracle.

APs must equal the reference's to the last digit (``==``), prediction files must parse to the very bits
the reference's line-by-line reader gives.
"""

import itertools
import json
import logging
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from omz_accuracy_checker import retinaface_resnet50_map
from reference_evaluation import read_pred_file, reference_evaluate, vectorised_overlaps
from scipy.io import savemat

from conftest import SHARED, require
from retinaface_export import evaluation, widerface
from retinaface_export.cli.evaluate import main
from retinaface_export.errors import EvaluationError, FileError
from retinaface_export.evaluation import evaluate
from retinaface_export.widerface import (
    CACHE_SUFFIX,
    SETTINGS,
    GroundTruth,
    ground_truth_cache,
    ground_truth_key,
    load_ground_truth,
    prediction_text,
    read_ground_truth_cache,
    read_predictions,
)

GT_DIR = SHARED / "widerface" / "ground_truth"


def tiny_truth(keep_easy, keep_medium, keep_hard):
    boxes = (np.array([[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 30.0, 30.0]]),)
    keep = {"easy": (np.array(keep_easy),), "medium": (np.array(keep_medium),), "hard": (np.array(keep_hard),)}
    return GroundTruth(("0--E",), (("0--E", "img"),), boxes, {k: v for k, v in keep.items()})


def test_thresholds_per_score_equal_the_reference_search():
    # the first counted threshold of each score is computed, not searched: every threshold, a float either side
    # of it, the ends, and NaN (all scores equal normalise to 0/0) against the search the reference's loop is
    thresholds = 1 - (np.arange(1000) + 1) / 1000
    near = np.concatenate([thresholds, np.nextafter(thresholds, 2), np.nextafter(thresholds, -1)])
    scores = np.concatenate([near, np.random.default_rng(5).random(10_000), [0.0, 1.0, np.nan]])
    scores = scores[np.isnan(scores) | ((scores >= 0) & (scores <= 1))]
    expected = 1000 - np.searchsorted(thresholds[::-1], scores, side="right")
    assert np.array_equal(evaluation._thresholds_above(scores), expected)
    assert np.array_equal(evaluation._thresholds_above(scores[:-1]), expected[:-1])  # without NaN: the arithmetic


def test_hand_computed_ap():
    # one hit on box 1 (score 0.9) and one false positive (0.5): normalised to 1.0 and 0.0
    truth = tiny_truth([1], [2], [1, 2])
    preds = [np.array([[10.0, 10.0, 20.0, 20.0, 0.9], [300.0, 300.0, 10.0, 10.0, 0.5]])]
    aps = evaluate(preds, truth)
    # easy: the only kept face found at precision 1 -> 1.0; medium: the hit is on an ignored face, the kept
    # one is never found -> 0.0; hard: one of two faces at precision 1 -> 0.5
    assert aps == {"easy": 1.0, "medium": 0.0, "hard": 0.5}
    assert aps == reference_evaluate(preds, truth.boxes, truth.keep)


def test_predictions_of_an_image_without_faces_are_skipped_as_by_the_reference():
    one = tiny_truth([1], [2], [1, 2])
    two = GroundTruth(
        one.events,
        (*one.images, ("0--E", "empty")),
        (*one.boxes, np.zeros((0, 4))),
        {s: (*k, np.zeros(0, int)) for s, k in one.keep.items()},
    )
    preds = [np.array([[10.0, 10.0, 20.0, 20.0, 0.9], [300.0, 300.0, 10.0, 10.0, 0.5]])]
    preds.append(np.array([[1.0, 1.0, 5.0, 5.0, 0.95], [2.0, 2.0, 5.0, 5.0, 0.1]]))  # no proposals, but normalised
    aps = evaluate(preds, two)
    assert aps == reference_evaluate(preds, two.boxes, two.keep) == {"easy": 1.0, "medium": 0.0, "hard": 0.5}


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
    assert fast == slow  # to the last digit
    assert 0.05 < fast["hard"] < 0.95  # a real mix of hits and misses


def test_unsorted_files_are_taken_in_file_order(truth):
    small = subset(truth, 40)
    preds = [p[::-1].copy() for p in random_predictions(small, 5)]  # worst first, as a careless writer might
    assert evaluate(preds, small) == reference_evaluate(preds, small.boxes, small.keep)


def pick(truth, indices):
    return GroundTruth(
        truth.events,
        tuple(truth.images[i] for i in indices),
        tuple(truth.boxes[i] for i in indices),
        {s: tuple(v[i] for i in indices) for s, v in truth.keep.items()},
    )


def awkward_predictions(truth, seed):
    """Near-copies of faces mixed with boxes that are not boxes: negative or zero sizes, far off, huge, exact
    copies of faces (ties between duplicate faces), tiny shifts around the threshold."""
    rng = np.random.default_rng(seed)
    preds = []
    for gt in truth.boxes:
        rows = [gt + rng.integers(-2, 3, gt.shape)] if len(gt) else []
        rows.append(gt[: rng.integers(0, len(gt) + 1)].copy())  # exact copies
        k = int(rng.integers(1, 6))
        odd = np.column_stack([rng.uniform(-50, 600, (k, 2)), rng.uniform(-30, 30, (k, 2))])  # some negative
        rows.append(odd)
        rows.append(np.array([[1e6, -1e6, 5.0, 5.0], [-3e5, 10.0, 7e5, 40.0], [0.0, 0.0, 0.0, 0.0]]))
        rows = np.vstack(rows)
        scores = np.round(rng.uniform(0, 1, len(rows)), 1)  # few values: many ties
        preds.append(np.column_stack([rows, scores]))
    return preds


@pytest.mark.parametrize("iou", [0.0, 0.3, 0.5, 0.75])
def test_awkward_boxes_and_thresholds_equal_reference(truth, iou):
    # images with faces of zero or negative size, the one with duplicate faces, and a few with ~40 faces
    odd = [29, 75, 829, 855, 1060, 1828, 1885, 2501, 3086, 3114]
    small = pick(truth, odd + [int(i) for i in np.argsort([-len(b) for b in truth.boxes])[300:303]])
    preds = awkward_predictions(small, int(iou * 100))
    # the kernel's arithmetic broadcast (crowded images make the element-by-element one slow)
    slow = reference_evaluate(preds, small.boxes, small.keep, iou_thresh=iou, overlaps_fn=vectorised_overlaps)
    assert evaluate(preds, small, iou) == slow


def edge_faces(rng, iou, boundary, images=60):
    """Per image one prediction (x1 y1 x2 y2) and faces at the edge of reaching ``iou`` with it: widths and
    heights t, 1 and 1/t times its own (±0.1%), edges aligned either side or shifted by (1 - t) of its size,
    so their centres lie as far from its own as IoU >= t allows; plus random faces. Corners, images, offsets.
    """
    preds, faces, counts = [], [], []
    for _ in range(images):
        x1, y1 = rng.uniform(0, 500, 2)
        w, h = rng.uniform(4, 300, 2)
        preds.append([x1, y1, x1 + w - boundary, y1 + h - boundary])
        own = []
        for _ in range(24):
            sides = []
            for start, size in ((x1, w), (y1, h)):
                scale = rng.choice([iou, 1.0, 1 / iou]) * (1 + rng.uniform(-1e-3, 1e-3))
                size_g = size * scale
                at = rng.choice([start, start + size - size_g, start + (1 - iou) * size, start - (1 - iou) * size_g])
                sides.append((at, at + size_g - boundary))
            own.append([sides[0][0], sides[1][0], sides[0][1], sides[1][1]])
        own += [[x, y, x + s, y + s] for x, y, s in rng.uniform([0, 0, 4], [600, 600, 200], (6, 3))]
        faces += own
        counts.append(len(own))
    return np.array(preds), np.arange(images), np.array(faces), np.concatenate(([0], np.cumsum(counts)))


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_faces_at_the_edge_of_the_search_reach_are_compared(iou):
    # the search compares a prediction only with faces whose centres lie near enough to reach the threshold:
    # every hit of an all-pairs search over faces built at that distance must still be found, with its best face
    pred, image, faces, offsets = edge_faces(np.random.default_rng(int(iou * 10)), iou, boundary=1.0)
    xywh = faces.copy()
    xywh[:, 2:] -= xywh[:, :2]
    spans = list(itertools.pairwise(offsets.tolist()))
    truth = GroundTruth(
        ("0--E",),
        tuple(("0--E", f"img{i}") for i in image),
        tuple(xywh[a:b] for a, b in spans),
        {s: tuple(np.arange(1, b - a + 1) for a, b in spans) for s in SETTINGS},
    )
    hit, face = evaluation._hits(np.ascontiguousarray(pred.T), image, truth, iou)
    expected_hit, expected_face = [], []
    for i in image:
        overlaps = evaluation.bbox_overlaps(pred[i : i + 1], truth.corners[offsets[i] : offsets[i + 1]])[0]
        if overlaps.max() >= iou:
            expected_hit.append(i)
            expected_face.append(offsets[i] + overlaps.argmax())
    assert 10 < len(expected_hit) < len(image)  # the faces straddle the threshold
    assert hit.tolist() == expected_hit and face.tolist() == expected_face


@pytest.mark.parametrize("boundary", [0.0, 1.0])
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_candidate_ranges_hold_every_face_that_reaches_the_threshold(iou, boundary):
    # both conventions: the official +1 pixel (boundary 1) and the OMZ checker's (0, which --protocol omz uses)
    from retinaface_export.omz_protocol import _overlaps

    pred, image, faces, offsets = edge_faces(np.random.default_rng(int(iou * 10) + 7), iou, boundary)
    order, first, last = evaluation.candidate_ranges(pred, image, faces, offsets, iou, boundary)
    reaching = 0
    for i in image:
        own = faces[offsets[i] : offsets[i + 1]]
        if boundary:
            overlaps = evaluation.bbox_overlaps(pred[i : i + 1], own)[0]
        else:
            overlaps = _overlaps(np.repeat(pred[i : i + 1], len(own), axis=0), own)
        reaching += int((overlaps >= iou).sum())
        assert set(offsets[i] + np.flatnonzero(overlaps >= iou)) <= set(order[first[i] : last[i]].tolist())
    assert reaching > 10


def test_bad_prediction_arrays_are_refused(truth):
    small = subset(truth, 3)
    preds = random_predictions(small, 0)
    with pytest.raises(EvaluationError, match="prediction arrays for 3"):
        evaluate(preds[:2], small)
    preds[1] = np.full((2, 5), np.nan)
    with pytest.raises(EvaluationError, match=f"{small.images[1][0]}/{small.images[1][1]}"):
        evaluate(preds, small)
    preds[1] = np.zeros((2, 4))
    with pytest.raises(EvaluationError, match="rows of 5"):
        evaluate(preds, small)


def test_full_set_runs(truth):
    # equality with the reference over the whole set takes it a minute: scripts/bench_eval.py checks that
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


@pytest.mark.parametrize("layout", ["plain", "with a file read line by line"])
def test_prediction_rows_come_in_ground_truth_order_last_file_of_an_image_winning(tmp_path, layout):
    # files in name order: b.txt names image 2 (read first, counted first), a.txt and c.txt both name image 0
    # (the later, c.txt, counts: the reference's dict), d.txt names an image not in the ground truth
    images = [("0--E", "img0"), ("0--E", "img1"), ("0--E", "img2")]
    keep = {s: (np.array([1]),) * 3 for s in SETTINGS}
    small = GroundTruth(("0--E",), tuple(images), (np.array([[10.0, 10.0, 20.0, 20.0]]),) * 3, keep)
    rows = {
        "a": np.array([[1.0, 2.0, 3.0, 4.0, 0.5]]),
        "b": np.array([[5.0, 6.0, 7.0, 8.0, 0.25], [9.0, 9.0, 9.0, 9.0, 0.125]]),
        "c": np.array([[10.0, 10.0, 20.0, 20.0, 0.75]]),
        "d": np.array([[1.0, 1.0, 1.0, 1.0, 1.0]]),
    }
    (tmp_path / "0--E").mkdir()
    for file, name in (("a", "img0"), ("b", "img2"), ("c", "img0"), ("d", "stray")):
        text = prediction_text(name, rows[file])
        if file == "c" and layout != "plain":
            text = text.replace("0.7500000000", "7.5e-1")  # an exponent: read line by line
        (tmp_path / "0--E" / f"{file}.txt").write_text(text)
    got, counts = widerface.read_prediction_rows(tmp_path, small)
    assert counts.tolist() == [1, 0, 2]
    assert np.array_equal(got, np.vstack([rows["c"], rows["b"]]))
    split = widerface.split_rows(got, counts)
    assert [len(p) for p in split] == [1, 0, 2] and np.array_equal(split[2], rows["b"])
    assert evaluation.evaluate_rows(got, counts, small) == evaluate(split, small)


def test_evaluate_rows_refuses_rows_that_do_not_match(truth):
    small = subset(truth, 40)
    preds = random_predictions(small, 0)
    rows, counts = np.vstack(preds), np.array([len(p) for p in preds])
    aps = evaluation.evaluate_rows(rows, counts, small)
    assert aps == evaluate(preds, small) and all(0 < ap < 1 for ap in aps.values())
    with pytest.raises(EvaluationError, match="row counts"):
        evaluation.evaluate_rows(rows, counts + 1, small)
    with pytest.raises(EvaluationError, match="row counts"):
        evaluation.evaluate_rows(rows, counts[:2], small)
    with pytest.raises(EvaluationError, match="rows of 5"):
        evaluation.evaluate_rows(rows[:, :4], counts, small)
    image = int(np.flatnonzero(counts[1:])[0]) + 1  # an image with rows after the first
    rows[counts[:image].sum(), 2] = np.inf  # its first row
    with pytest.raises(EvaluationError, match=f"{small.images[image][0]}/{small.images[image][1]}"):
        evaluation.evaluate_rows(rows, counts, small)


def test_images_turn_the_cycle_collector_back_on(tmp_path, truth):
    # the console script turns it off for a short run over prediction files; a model run is a long one
    import gc

    (tmp_path / "images").mkdir()
    gc.disable()
    try:
        result = CliRunner().invoke(main, ["--images", str(tmp_path / "images"), "--ground-truth", str(GT_DIR)])
        assert gc.isenabled()
    finally:
        gc.enable()
    assert result.exit_code == 2 and "give exactly one of --model ARTIFACT or --weights CKPT" in result.output


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
    # a real detector's predictions, scored as the OMZ accuracy checker scores them
    omz = CliRunner().invoke(
        main, ["--predictions", str(out), "--ground-truth", str(gt), "--protocol", "omz", "--json", "-", "-q"]
    )
    assert omz.exit_code == 0, omz.output
    small = load_ground_truth(gt)
    assert json.loads(omz.stdout)["map"] == retinaface_resnet50_map(small, read_predictions(out, small))


# --- prediction files: the one-pass parser against the reference's reader ----------------------------------

FIELD_STYLES = {
    "biubug6": lambda v, rng: str(int(v)),  # test_widerface.py writes int boxes and str(np.float32) scores
    "fixed4": lambda v, rng: f"{v:.4f}",
    "repr": lambda v, rng: repr(float(v)),
    "short": lambda v, rng: f"{v:.{int(rng.integers(0, 4))}f}",
    "signed": lambda v, rng: f"{-v:.3f}" if rng.random() < 0.3 else f"{v:.2f}",
    "dots": lambda v, rng: rng.choice([f"{v:.0f}.", f".{int(abs(v)) % 1000}", "-0", "0.000", "-.5"]),
    "long": lambda v, rng: f"{v:.14f}",  # past the vectorised width: read one by one
    "exponent": lambda v, rng: f"{v:.3e}",  # not taken by the one-pass parser: read line by line
}


def styled_file(name, rows, style, rng, newline="\n", trailing=""):
    lines = [name, str(len(rows))]
    for row in rows:
        fields = [FIELD_STYLES[style](v, rng) for v in row[:4]]
        score = str(np.float32(row[4])) if style == "biubug6" else FIELD_STYLES[style](row[4], rng)
        lines.append(" ".join([*fields, score]) + trailing)
    return newline.join(lines) + newline


@pytest.mark.parametrize("style", sorted(FIELD_STYLES))
def test_parser_matches_reference_reader_bit_for_bit(tmp_path, truth, style):
    small = subset(truth, 60)
    rng = np.random.default_rng(len(style))
    preds = random_predictions(small, 4)
    for i, ((event, name), rows) in enumerate(zip(small.images, preds, strict=True)):
        (tmp_path / event).mkdir(exist_ok=True)
        newline = "\r\n" if i % 7 == 3 else "\n"
        trailing = " " if style == "biubug6" or i % 5 == 1 else ""
        text = styled_file(name, rows, style, rng, newline, trailing)
        if i % 11 == 4:
            text = text.rstrip("\n")  # no newline after the last row
        (tmp_path / event / f"{name}.txt").write_bytes(text.encode())
    read = read_predictions(tmp_path, small)
    for (event, name), rows in zip(small.images, read, strict=True):
        key, expected = read_pred_file(str(tmp_path / event / f"{name}.txt"))
        assert key.rstrip(".jpg") == name
        expected = expected.reshape(-1, 5)
        assert rows.shape == expected.shape and np.array_equal(rows.view(np.int64), expected.view(np.int64)), name


def test_parser_odd_layouts_match_reference_reader(tmp_path, truth):
    small = subset(truth, 12)
    event = small.images[0][0]
    (tmp_path / event).mkdir()
    bodies = [
        "1 2 3 4 0.5\n\n5 6 7 8 0.25\n",  # a blank line: skipped
        "1 2 3 4 0.5 extra fields\n",  # more than five fields: the first five
        " 1 2 3 4 0.5\n7 8 9 10 0.1\n",  # a line starting with a space: skipped
        "1 2 3 4 0.5  \n",  # two trailing spaces
        "0001 002.50 -0 -.5 1.\n",  # leading zeros, signs, bare dots
        "123456789012345 1 1 1 1\n",  # fifteen digits
        "",  # no rows
    ]
    for (_, name), body in zip(small.images, bodies, strict=False):
        (tmp_path / event / f"{name}.txt").write_text(f"{name}\n9\n{body}")
    read = read_predictions(tmp_path, small)
    for (_, name), rows, _ in zip(small.images, read, bodies, strict=False):
        _, expected = read_pred_file(str(tmp_path / event / f"{name}.txt"))
        expected = expected.reshape(-1, 5)
        assert rows.shape == expected.shape and np.array_equal(rows.view(np.int64), expected.view(np.int64)), name


def random_field(rng):
    """A number as writers write them (signs, bare dots, 1 to 19 digits, up to 12 decimals), or digit soup."""
    if rng.random() < 0.96:
        digits = "".join(rng.choice(list("0123456789"), int(rng.integers(1, 20))))
        decimals = "".join(rng.choice(list("0123456789"), int(rng.integers(0, 13))))
        return rng.choice(["", "-"]) + digits + rng.choice(["", ".", "." + decimals])
    return "".join(rng.choice(list("0123456789.-"), int(rng.integers(1, 21))))


def test_parser_fuzz_matches_reference_reader(tmp_path, truth):
    # files of random fields: each one read alone (package error <=> the reference's reader fails) and the
    # readable ones together, bit for bit against the reference's reader
    rng = np.random.default_rng(23)
    small = subset(truth, 400)
    readable = []
    for i, (_, name) in enumerate(small.images):
        lines = [" ".join(random_field(rng) for _ in range(5)) + rng.choice(["", " "]) for _ in range(3)]
        path = tmp_path / f"{i}.txt"
        path.write_text(f"{name}\n3\n" + "\n".join(lines) + "\n")
        try:
            expected = read_pred_file(str(path))[1]
        except ValueError:
            with pytest.raises(FileError, match=r"line \d: not 'x y w h score' numbers"):
                widerface.read_prediction_file(path)
            continue
        rows = widerface.read_prediction_file(path)[1]
        assert np.array_equal(rows.view(np.int64), expected.view(np.int64)), path.read_text()
        readable.append((small.images[i], path, expected))
    assert 100 < len(readable) < 350  # both kinds
    for (event, name), path, _ in readable:
        (tmp_path / "all" / event).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "all" / event / f"{name}.txt")
    together = dict(zip(small.images, read_predictions(tmp_path / "all", small), strict=True))
    for image, _, expected in readable:
        assert np.array_equal(together[image].view(np.int64), expected.view(np.int64))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1 2 3 4 0.5\n1 2 3.4.5 4 0.5\n", r"line 4: not 'x y w h score' numbers"),
        ("1 2 3 4\n", r"line 3: 4 numbers where 'x y w h score' needs 5"),
        ("1 2 3 4 0.5\n1 2 3 4 1e999\n", r"line 4: NaN or infinite value"),
        ("1 2 3 4 nan\n", r"line 3: NaN or infinite value"),
        ("1 2 - 4 0.5\n", r"line 3: not 'x y w h score' numbers"),
        ("1 2 3 4 0.5-\n", r"line 3: not 'x y w h score' numbers"),
        ("1  2 3 4 0.5\n", r"line 3: not 'x y w h score' numbers"),  # an empty field, as split(" ") sees it
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, truth, body, message):
    event, name = truth.images[5]
    (tmp_path / event).mkdir()
    good = truth.images[6][1]
    (tmp_path / event / f"{good}.txt").write_text(f"{good}\n1\n1 2 3 4 0.5\n")  # a good file beside it
    (tmp_path / event / f"{name}.txt").write_text(f"{name}\n2\n{body}")
    with pytest.raises(FileError, match=message) as error:
        read_predictions(tmp_path, truth)
    assert str(error.value).startswith(str(tmp_path / event / f"{name}.txt"))
    result = CliRunner().invoke(main, ["--predictions", str(tmp_path), "--ground-truth", str(GT_DIR)])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / event / (name + '.txt')}: line" in result.stderr


def test_a_line_break_inside_the_name_line_shifts_the_rows_as_for_the_reference(tmp_path, truth):
    # a lone CR ends a line for the reference's text-mode reader too: the count line becomes the first row
    event, name = truth.images[0]
    (tmp_path / event).mkdir()
    path = tmp_path / event / f"{name}.txt"
    path.write_bytes(f"{name}\rjunk\n1\n1 2 3 4 0.5\n".encode())
    with pytest.raises(IndexError):
        read_pred_file(str(path))
    with pytest.raises(FileError, match="line 3: 1 numbers where 'x y w h score' needs 5"):
        read_predictions(tmp_path, truth)


def test_empty_prediction_file_is_named(tmp_path, truth):
    event, name = truth.images[0]
    (tmp_path / event).mkdir()
    (tmp_path / event / f"{name}.txt").write_bytes(b"")
    with pytest.raises(FileError, match="empty prediction file"):
        read_predictions(tmp_path, truth)


# --- ground truth: parsed once per process, cached only where the user says ----------------------------------


def same_ground_truth(a, b):
    assert a.events == b.events and a.images == b.images
    for x, y in zip(a.boxes, b.boxes, strict=True):
        assert x.dtype == y.dtype == np.float64 and np.array_equal(x, y)
    for setting in ("easy", "medium", "hard"):
        for x, y in zip(a.keep[setting], b.keep[setting], strict=True):
            assert x.dtype == y.dtype == np.int64 and np.array_equal(x, y)


def mat_files(folder):
    return {key: (folder / name, (folder / name).read_bytes()) for key, name in widerface._MAT_FILES.items()}


def test_small_mat_reader_equals_scipy_on_the_official_files(truth):
    files = mat_files(GT_DIR)
    fast = widerface._ground_truth_mat5(GT_DIR, files)
    assert fast is not None  # the official files are read without scipy
    same_ground_truth(fast, widerface._ground_truth_scipy(GT_DIR, files))


def test_official_ground_truth_loads_without_scipy(truth):
    import subprocess
    import sys

    code = "import sys; from retinaface_export.widerface import load_ground_truth as f; f(sys.argv[1]); "
    code += "print('scipy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, str(GT_DIR)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # importing scipy.io costs more than a whole evaluation


@pytest.mark.parametrize("compress", [False, True])
def test_small_mat_reader_equals_scipy_on_files_scipy_writes(tmp_path, compress):
    rng = np.random.default_rng(3)
    names = [["a_1", "b_2"], ["c_3"], []]
    boxes = [[rng.integers(0, 900, (3, 4)).astype(np.uint16), np.zeros((0, 4))], [rng.uniform(0, 9, (1, 4))], []]
    keep = [[np.array([[1], [3]], np.uint8), np.zeros((0, 1))], [np.array([[1.0]])], []]
    events = _cell([np.array([e]) for e in ("0--A", "1--B", "2--C")])
    files = _cell([_cell([np.array([n]) for n in event]) for event in names])
    face_boxes = _cell([_cell(event) for event in boxes])
    gt = _cell([_cell(event) for event in keep])
    savemat(
        tmp_path / "wider_face_val.mat",
        {"event_list": events, "file_list": files, "face_bbx_list": face_boxes},
        do_compression=compress,
    )
    for setting in ("easy", "medium", "hard"):
        savemat(tmp_path / f"wider_{setting}_val.mat", {"gt_list": gt}, do_compression=compress)
    files = mat_files(tmp_path)
    fast = widerface._ground_truth_mat5(tmp_path, files)
    assert fast is not None and len(fast.images) == 3
    same_ground_truth(fast, widerface._ground_truth_scipy(tmp_path, files))


def test_damaged_mat_file_is_still_named(tmp_path):
    for name in widerface._MAT_FILES.values():
        shutil.copy(GT_DIR / name, tmp_path / name)
    data = (tmp_path / "wider_hard_val.mat").read_bytes()
    (tmp_path / "wider_hard_val.mat").write_bytes(data[:200])  # cut short
    with pytest.raises(FileError, match=r"wider_hard_val\.mat: not a MATLAB file scipy can read"):
        load_ground_truth(tmp_path)


def test_ground_truth_is_parsed_once_per_process(truth):
    assert load_ground_truth(GT_DIR) is load_ground_truth(GT_DIR)


def test_ground_truth_cache_round_trip(tmp_path, truth):
    key = ground_truth_key(GT_DIR)
    (tmp_path / "gt.npys").write_bytes(ground_truth_cache(truth, key))
    again = read_ground_truth_cache(tmp_path / "gt.npys", key)
    assert again.events == truth.events and again.images == truth.images
    assert all(np.array_equal(a, b) for a, b in zip(again.boxes, truth.boxes, strict=True))
    for setting in ("easy", "medium", "hard"):
        assert all(np.array_equal(a, b) for a, b in zip(again.keep[setting], truth.keep[setting], strict=True))
    # what scoring reads comes with it, as the per-image lists give it
    fresh = GroundTruth(truth.events, truth.images, truth.boxes, truth.keep)
    assert np.array_equal(again.offsets, fresh.offsets) and np.array_equal(again.corners, fresh.corners)
    assert all(np.array_equal(again.counted[s], fresh.counted[s]) for s in SETTINGS)
    assert again.kept_total == fresh.kept_total
    preds = random_predictions(truth, 2)
    assert evaluate(preds, again) == evaluate(preds, truth)
    with pytest.raises(FileError, match="not a ground-truth cache file"):
        read_ground_truth_cache(tmp_path / "gt.npys", "0" * 64)  # written for other .mat files
    (tmp_path / "bad.npys").write_bytes(b"\x93NUMPY not a cache")
    with pytest.raises(FileError, match="not a ground-truth cache file"):
        read_ground_truth_cache(tmp_path / "bad.npys", key)


def test_cli_cache_dir_writes_only_there_and_is_used(tmp_path, truth, monkeypatch):
    preds = random_predictions(truth, 1)
    write_folder(tmp_path / "preds", truth, preds)
    cache = tmp_path / "cache"
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(GT_DIR), "--cache-dir", str(cache)]
    first = CliRunner().invoke(main, [*args, "--json", "-"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "cache"])
    (cached,) = cache.iterdir()
    assert cached.name == f"wider_val_ground_truth-{ground_truth_key(GT_DIR)}{CACHE_SUFFIX}"
    # a second process would find it: with the in-process copy and scipy out of the way, it still scores
    monkeypatch.setattr(widerface, "_LOADED", {})
    monkeypatch.setattr(widerface, "_parse_mats", lambda *a: pytest.fail("parsed the .mat files again"))
    second = CliRunner().invoke(main, [*args, "--json", "-"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout) == json.loads(first.stdout) == evaluate(preds, truth)
    # a damaged copy is reported and rebuilt
    monkeypatch.undo()
    cached.write_bytes(b"damaged")
    third = CliRunner().invoke(main, [*args, "--json", "-"])
    assert third.exit_code == 0 and json.loads(third.stdout) == json.loads(first.stdout)
    squeezed = "".join(third.stderr.split())  # the log handler wraps long lines
    assert f"{cached.name}:notaground-truthcachefile" in squeezed and "rebuildingit" in squeezed
    assert read_ground_truth_cache(cached, ground_truth_key(GT_DIR)).images == truth.images


def test_cli_cache_dir_problems(tmp_path, truth, monkeypatch):
    write_folder(tmp_path / "preds", truth, random_predictions(truth, 8))
    args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(GT_DIR), "--json", "-"]
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "a-file" / "cache")])
    assert result.exit_code == 1 and "a-file: is not a folder" in result.stderr
    assert not (tmp_path / "a-file" / "cache").exists()

    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("retinaface_export.safety.atomic.atomic_write_bytes", refuse)
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0 and "cannotwritetheground-truthcache" in "".join(result.stderr.split())
    assert json.loads(result.stdout) == evaluate(read_predictions(tmp_path / "preds", truth), truth)


def test_json_outputs_follow_the_schema(tmp_path, truth):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    import retinaface_export

    schema = json.loads((Path(retinaface_export.__file__).parent / "eval.schema.json").read_text())
    write_folder(tmp_path / "preds", truth, random_predictions(truth, 6))
    for protocol in ("official", "omz"):
        args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(GT_DIR), "--protocol", protocol]
        result = CliRunner().invoke(main, [*args, "-q", "--json", "-"])
        assert result.exit_code == 0, result.output
        jsonschema.validate(json.loads(result.stdout), schema)


def test_a_prediction_file_whose_read_fails_is_named(tmp_path, truth, monkeypatch):
    """EIO while reading (a failing disk, a network file system): one line naming the file (issue 25)."""
    import errno
    import os

    write_folder(tmp_path / "preds", truth, random_predictions(truth, 2))
    real_fstat = os.fstat

    def failing_fstat(fd):
        if str(os.readlink(f"/proc/self/fd/{fd}")).endswith(".txt"):
            raise OSError(errno.EIO, "Input/output error")
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", failing_fstat)
    args = ["--predictions", str(tmp_path / "preds"), "--ground-truth", str(GT_DIR), "--json", "-"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert ".txt: cannot be read (Input/output error)" in result.stderr


def test_predictions_that_all_score_the_same_are_the_references_zero_with_one_warning(truth, caplog):
    small = subset(truth, 40)
    preds = [np.array([[10.0, 10.0, 30.0, 30.0, 0.9]]) for _ in small.images]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in divide" would be an error here
        with caplog.at_level(logging.WARNING, logger="retinaface_export.evaluation"):
            aps = evaluate(preds, small)
    assert aps == reference_evaluate(preds, small.boxes, small.keep) == {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    assert [r.getMessage() for r in caplog.records] == [
        "every prediction scores 0.9: the reference's score normalisation divides by zero there, and the APs "
        "are the reference's for that case (0)"
    ]
