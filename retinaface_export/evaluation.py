"""WIDER FACE validation AP (easy, medium, hard): the official protocol, vectorised.

The protocol is the one biubug6's ``widerface_evaluate/evaluation.py`` implements. Kept exactly, because
the numbers are compared with published ones: scores normalised over the whole set
(min starts at 1, max at 0); predictions taken in file order, not re-sorted; IoU with the ``+1`` pixel
convention of its Cython ``bbox_overlaps``; 1,000 thresholds ``1 - (t+1)/1000``; a prediction whose best
ground truth is outside the setting's keep list is no proposal; VOC AP over the precision envelope (NaN from
0/0 precision propagates as it does there). What is vectorised: the overlaps, for the whole set at once but
only between a prediction and the faces whose x1 lies where IoU >= the threshold is possible
(:func:`candidate_ranges`; the others cannot be a hit, and a prediction's best face matters only when it
is one); the threshold sweep, as each prediction's first counted threshold (an exact searchsorted, then a
suffix minimum per image) so that every image's curve adds up in one weighted bincount; and recall, as the
first hit of each kept face over the whole set. The APs are the reference's to the last digit.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.errors import EvaluationError
from retinaface_export.widerface import SETTINGS, GroundTruth

THRESHOLDS = 1000
IOU_THRESHOLD = 0.5
# (prediction, ground truth) pairs whose overlaps are computed at once: a few MB of temporaries, which stay in
# the CPU's cache (a million at once spent more time in fresh memory than in arithmetic)
_PAIRS_PER_CHUNK = 1 << 16
# candidate_ranges compares a prediction with every face of an image that has at most this many
_COMPARE_ALL = 4
# the reference's thresholds, decreasing, then one below any score (the index past the last)
_THRESHOLDS = np.append(1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS, -np.inf)


def bbox_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU (N×K) of x1 y1 x2 y2 boxes with the ``+1`` convention; zero unless width and height overlap."""
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    query_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    inter = iw * ih
    union = box_area[:, None] + query_area[None, :] - inter
    valid = (iw > 0) & (ih > 0)
    return np.where(valid, inter / np.where(valid, union, 1.0), 0.0)


def normalise_scores(predictions: list[np.ndarray]) -> list[np.ndarray]:
    """Scores mapped to [0, 1] over the whole set (copies; min starts at 1 and max at 0, as the reference)."""
    scores = np.concatenate([boxes[:, -1] for boxes in predictions]) if predictions else np.zeros(0)
    max_score = max(float(scores.max()), 0.0) if len(scores) else 0.0
    min_score = min(float(scores.min()), 1.0) if len(scores) else 1.0
    diff = max_score - min_score
    normalised = []
    for boxes in predictions:
        boxes = boxes.copy()
        if len(boxes):
            boxes[:, -1] = (boxes[:, -1] - min_score) / diff
        normalised.append(boxes)
    return normalised


def _first_counted_threshold(scores: np.ndarray, image: np.ndarray) -> np.ndarray:
    """For each prediction (file order within its image), the first threshold index t at which it is counted.

    The reference counts an image's predictions up to its last one scoring >= 1 - (t+1)/1000, so prediction i
    is in from the first t at which it or any later prediction of its image qualifies: a suffix minimum of
    each one's own first t within its image. ``image`` holds each prediction's image index, non-decreasing.
    """
    own = _thresholds_above(scores)
    # one suffix minimum over the whole set that restarts at each image: read backwards, every image's values
    # are shifted below all those read before it (own is in [0, THRESHOLDS])
    shift = (image.astype(np.int64) - (int(image.max()) if len(image) else 0)) * (2 * THRESHOLDS + 2)
    return (np.minimum.accumulate((own + shift)[::-1])[::-1] - shift).astype(np.int64)


def _thresholds_above(scores: np.ndarray) -> np.ndarray:
    """How many of the reference's thresholds lie above each score (scores in [0, 1]): a guess, then corrected.

    Exactly ``THRESHOLDS - searchsorted(thresholds[::-1], scores, side="right")``; the arithmetic guess is off
    by at most one either way and is corrected against the thresholds themselves (a searchsorted if not).
    """
    guess = np.ceil((1 - scores) * THRESHOLDS) - 1  # NaN (0/0 when every score is equal): 0, then checked
    guess = np.clip(np.nan_to_num(guess, nan=0.0), 0, THRESHOLDS).astype(np.int64)
    for _ in range(2):
        guess += _THRESHOLDS[guess] > scores
        guess -= (guess > 0) & (_THRESHOLDS[guess - 1] <= scores)
    if (_THRESHOLDS[guess] <= scores).all() and ((guess == 0) | (_THRESHOLDS[guess - 1] > scores)).all():
        return guess
    return THRESHOLDS - np.searchsorted(_THRESHOLDS[THRESHOLDS - 1 :: -1], scores, side="right")


def _pair_overlaps(pred: np.ndarray, gt: np.ndarray, pred_index: np.ndarray, gt_index: np.ndarray) -> np.ndarray:
    """IoU of prediction ``pred_index[i]`` with ground truth ``gt_index[i]``: :func:`bbox_overlaps`' arithmetic.

    ``pred`` and ``gt`` are boxes by coordinate (4×N: the x1, y1, x2, y2 rows; gathers from a row are faster
    than from columns of N×4). Most pairs do not overlap in x; height, areas and the division are computed
    for the others only.
    """
    iou = np.zeros(len(pred_index))
    px1, py1, px2, py2 = pred
    gx1, gy1, gx2, gy2 = gt
    iw = np.minimum(px2.take(pred_index), gx2.take(gt_index)) - np.maximum(px1.take(pred_index), gx1.take(gt_index)) + 1
    pairs = np.flatnonzero(iw > 0)
    p, g = pred_index.take(pairs), gt_index.take(pairs)
    ih = np.minimum(py2.take(p), gy2.take(g)) - np.maximum(py1.take(p), gy1.take(g)) + 1
    overlapping = ih > 0
    pairs, p, g, iw, ih = pairs[overlapping], p[overlapping], g[overlapping], iw[pairs][overlapping], ih[overlapping]
    pred_area = (px2.take(p) - px1.take(p) + 1) * (py2.take(p) - py1.take(p) + 1)
    gt_area = (gx2.take(g) - gx1.take(g) + 1) * (gy2.take(g) - gy1.take(g) + 1)
    inter = iw * ih
    iou[pairs] = inter / (pred_area + gt_area - inter)
    return iou


def candidate_ranges(
    pred: np.ndarray,
    image: np.ndarray,
    gt: np.ndarray,
    gt_offsets: np.ndarray,
    iou_threshold: float,
    boundary: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth sorted by image then x1, and per prediction the range of it that can reach ``iou_threshold``.

    Boxes are x1 y1 x2 y2; ``image`` is each prediction's image, ``gt_offsets`` where each image's ground
    truth starts. With widths ``W = x2 - x1 + boundary`` of proper boxes (W, H > 0), IoU >= t needs the x
    overlap ``iw >= t·Wp`` and ``Wg <= Wp / t``, hence ``x1p + Wp·(t - 1/t) <= x1g <= x2p + boundary - t·Wp``;
    the bounds are widened (t taken 1% lower, a pixel more each side) so rounding can never leave a pair
    that reaches t out. A prediction that is not a proper box (or has a coordinate past ±1e5), one in an
    image with a ground-truth box that is not or with at most ``_COMPARE_ALL`` faces, and every prediction
    when t <= 0, gets all of its image's ground truth.

    Returns:
        (order: sorted position -> ground-truth id, first, last + 1) with first/last positions in ``order``.
    """
    gt_image = np.repeat(np.arange(len(gt_offsets) - 1), np.diff(gt_offsets))
    # a sort key that keeps images apart: coordinates clipped far outside any photo, images 1e7 apart
    gt_key = gt_image * 1e7 + np.clip(gt[:, 0], -1e6, 1e6)
    order = np.argsort(gt_key, kind="stable")
    sorted_key = gt_key[order]
    first_all, last_all = gt_offsets[image], gt_offsets[image + 1]
    if iou_threshold <= 0 or not len(gt):
        return order, first_all, last_all
    t = iou_threshold * 0.99
    width = pred[:, 2] - pred[:, 0] + boundary
    gt_proper = (gt[:, 2] - gt[:, 0] + boundary > 0) & (gt[:, 3] - gt[:, 1] + boundary > 0)
    gt_proper &= (np.abs(gt) < 1e5).all(axis=1)
    # images whose faces are all compared: those with a ground-truth box that is not proper, and those with
    # few faces (comparing them all costs less than searching; the pairs that cannot reach t just miss)
    whole_image = np.diff(gt_offsets) <= _COMPARE_ALL  # (np.unique would import numpy.ma: 10 ms)
    whole_image[gt_image[~gt_proper]] = True
    proper = (width > 0) & (pred[:, 3] - pred[:, 1] + boundary > 0) & (np.abs(pred[:, :4]) < 1e5).all(axis=1)
    searched = np.flatnonzero(proper & ~whole_image[image])
    first, last = first_all.copy(), last_all.copy()
    if len(searched):
        box, key = pred[searched], image[searched] * 1e7
        low = box[:, 0] + width[searched] * (t - 1 / t) - 1
        high = box[:, 2] + boundary - t * width[searched] + 1
        found = np.searchsorted(sorted_key, key + np.clip(low, -1e6, 1e6), side="left")
        first[searched] = np.clip(found, first_all[searched], last_all[searched])
        found = np.searchsorted(sorted_key, key + np.clip(high, -1e6, 1e6), side="right")
        last[searched] = np.clip(found, first[searched], last_all[searched])
    return order, first, last


def _best_ground_truth(
    pred: np.ndarray, first: np.ndarray, last: np.ndarray, order: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction, its best ground truth among ``order[first:last]`` and that IoU.

    Boxes are 4×N, as :func:`_pair_overlaps` takes them. Ties go to the lowest ground-truth id, as
    ``argmax`` over a row of :func:`bbox_overlaps` decides.
    A prediction without candidates gets IoU 0 (and id -1). Inputs are finite, so no IoU is NaN.
    """
    count = last - first
    best_gt, best_iou = np.full(len(count), -1, np.int64), np.zeros(len(count))
    some = np.flatnonzero(count > 0)
    if not len(some):
        return best_gt, best_iou
    count = count[some]
    starts = np.cumsum(count) - count
    owner = np.repeat(some, count)
    gt_index = order[first[owner] + np.arange(len(owner)) - np.repeat(starts, count)]
    iou = _pair_overlaps(pred, gt, owner, gt_index)
    best = np.maximum.reduceat(iou, starts)
    tied = np.where(iou == np.repeat(best, count), gt_index, np.iinfo(np.int64).max)
    best_gt[some], best_iou[some] = np.minimum.reduceat(tied, starts), best
    return best_gt, best_iou


def _matches(
    boxes: np.ndarray, counts: np.ndarray, truth: GroundTruth, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the predictions of images that have ground truth: best global ground-truth id, hit, first t.

    ``boxes`` holds every image's rows (x y w h normalised score) one after the other, ``counts`` how many
    each has. Only the ground truth that can reach the threshold is compared (:func:`candidate_ranges`),
    in chunks of at most ``_PAIRS_PER_CHUNK`` (prediction, ground truth) pairs.
    """
    gt_offsets = truth.offsets
    image = np.repeat(np.arange(len(counts)), counts)
    rows = np.flatnonzero(np.diff(gt_offsets)[image] > 0)  # the reference skips images without ground truth
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
    boxes, image = boxes[rows], image[rows]
    pred = boxes[:, :4].copy()
    pred[:, 2:] += pred[:, :2]
    gt = truth.corners
    order, first, last = candidate_ranges(pred, image, gt, gt_offsets, iou_threshold)
    pairs = np.cumsum(last - first)
    pred_rows, gt_rows = np.ascontiguousarray(pred.T), np.ascontiguousarray(gt.T)
    best_gt, best_iou = np.zeros(len(pred), np.int64), np.zeros(len(pred))
    start = 0
    while start < len(pred):
        done = pairs[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(pairs, done + _PAIRS_PER_CHUNK, side="right")))
        chunk = slice(start, stop)
        best_gt[chunk], best_iou[chunk] = _best_ground_truth(
            pred_rows[:, chunk], first[chunk], last[chunk], order, gt_rows
        )
        start = stop
    return best_gt, best_iou >= iou_threshold, _first_counted_threshold(boxes[:, 4], image)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the reference's backward loop of np.maximum
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _curve(first_t: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per threshold, the summed weights of the predictions counted by then."""
    return np.cumsum(np.bincount(first_t, weights=weights, minlength=THRESHOLDS + 1))[:THRESHOLDS]


def _stacked(predictions: list[np.ndarray], truth: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """(every image's rows one after the other, rows per image), checked to be N×5 finite numbers.

    Raises:
        EvaluationError: naming the first image whose predictions are not.
    """
    if len(predictions) != len(truth.images):
        raise EvaluationError(f"{len(predictions)} prediction arrays for {len(truth.images)} ground-truth images")
    for (event, name), boxes in zip(truth.images, predictions, strict=True):
        if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 5:
            raise EvaluationError(f"predictions for {event}/{name} are not rows of 5 finite numbers (x y w h score)")
    counts = np.array([len(boxes) for boxes in predictions], dtype=np.int64)
    stacked = np.concatenate(predictions, dtype=float, casting="unsafe") if len(predictions) else np.zeros((0, 5))
    if not np.isfinite(stacked).all():
        finite = np.isfinite(stacked).all(axis=1)
        event, name = truth.images[int(np.searchsorted(np.cumsum(counts), np.flatnonzero(~finite)[0], side="right"))]
        raise EvaluationError(f"predictions for {event}/{name} are not rows of 5 finite numbers (x y w h score)")
    return stacked, counts


def evaluate(
    predictions: list[np.ndarray], truth: GroundTruth, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float]:
    """AP per setting for predictions (N×5 ``x y w h score`` per ground-truth image, in its order).

    Args:
        predictions: one N×5 array per ground-truth image (``truth.images`` order), rows in file order.
        truth: the validation ground truth (:func:`retinaface_export.widerface.load_ground_truth`).
        iou_threshold: the overlap that makes a hit.

    Returns:
        {"easy": AP, "medium": AP, "hard": AP}, equal to the reference evaluator's to the last digit.

    Raises:
        EvaluationError: predictions that are not N×5 finite numbers, or not one array per image.
    """
    boxes, counts = _stacked(predictions, truth)
    scores = boxes[:, 4]
    max_score = max(float(scores.max()), 0.0) if len(scores) else 0.0
    min_score = min(float(scores.min()), 1.0) if len(scores) else 1.0
    boxes[:, 4] = (scores - min_score) / (max_score - min_score)  # the reference's norm_score (a copy)
    best, hit, first = _matches(boxes, counts, truth, iou_threshold)
    aps = {}
    for setting in SETTINGS:
        counted, count_face = truth.counted[setting], truth.kept_total[setting]
        proposal = ~(hit & ~counted[best])  # a hit on an ignored face is no proposal
        kept_hits = np.flatnonzero(hit & counted[best])
        first_hit = np.zeros(len(best))
        _, first_of_each = np.unique(best[kept_hits], return_index=True)  # a face is recalled once, first
        first_hit[kept_hits[first_of_each]] = 1.0
        proposals, true_positives = _curve(first, proposal.astype(float)), _curve(first, first_hit)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = true_positives / proposals
            recall = true_positives / count_face
        aps[setting] = _voc_ap(recall, precision)
    return aps
