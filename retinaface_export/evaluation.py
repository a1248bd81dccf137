"""WIDER FACE validation AP (easy, medium, hard): the official protocol, vectorised.

The protocol is the one biubug6's ``widerface_evaluate/evaluation.py`` implements. Kept exactly, because
the numbers are compared with published ones: scores normalised over the whole set
(min starts at 1, max at 0); predictions taken in file order, not re-sorted; IoU with the ``+1`` pixel
convention of its Cython ``bbox_overlaps``; 1,000 thresholds ``1 - (t+1)/1000``; a prediction whose best
ground truth is outside the setting's keep list is no proposal; VOC AP over the precision envelope (NaN from
0/0 precision propagates as it does there). What is vectorised: the overlaps, for the whole set at once but
only between a prediction and the faces whose centre lies where IoU >= the threshold is possible (by x
:func:`candidate_ranges`, then by y; the others cannot be a hit, and a prediction's best face matters only
when it is one); the threshold sweep, as each prediction's first counted threshold (an exact searchsorted,
then a suffix minimum per image) so that every image's curve adds up in one bincount, from which the hits
on ignored faces are taken out; and recall, as the first hit of each kept face over the whole set. The APs
are the reference's to the last digit.
"""

from __future__ import annotations

import logging

import numpy as np

from retinaface_export.errors import EvaluationError
from retinaface_export.widerface import SETTINGS, GroundTruth

log = logging.getLogger(__name__)

THRESHOLDS = 1000
IOU_THRESHOLD = 0.5
# (prediction, ground truth) pairs whose overlaps are computed at once: a few MB of temporaries, which stay in
# the CPU's cache (a million at once spent more time in fresh memory than in arithmetic)
_PAIRS_PER_CHUNK = 1 << 16
# candidate_ranges compares a prediction with every face of an image that has at most this many
_COMPARE_ALL = 4
# the reference's thresholds, decreasing, then two below any score (the index past the last, and one more)
_THRESHOLDS = np.append(1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS, [-np.inf, -np.inf])


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
    """How many of the reference's thresholds lie above each score (scores in [0, 1]): counted from a guess.

    Exactly ``THRESHOLDS - searchsorted(thresholds[::-1], scores, side="right")``. The arithmetic guess is
    off by at most one either way, so the count is at most two past ``guess - 1``: those two thresholds
    are compared with the score. The counts are checked (the threshold below each is not above the score,
    the one above it is) and searched for if any is not.
    """
    guess = np.ceil((1 - scores) * THRESHOLDS) - 2  # NaN (0/0 when every score is equal): 0, then checked
    start = np.clip(np.nan_to_num(guess, nan=0.0), 0, THRESHOLDS - 1).astype(np.int64)
    count = start + (_THRESHOLDS[start] > scores) + (_THRESHOLDS[start + 1] > scores)
    # the count is right if it stopped short of two (the threshold after it is not above the score) or the
    # third one is not above it either, and if it moved or started at 0 or after a threshold above the score
    whole = count < start + 2
    whole |= _THRESHOLDS[start + 2] <= scores
    moved = count > start
    moved |= start == 0
    moved |= _THRESHOLDS[start - 1] > scores
    if whole.all() and moved.all():
        return count
    return THRESHOLDS - np.searchsorted(_THRESHOLDS[THRESHOLDS - 1 :: -1], scores, side="right")


def _pair_overlaps(pred: np.ndarray, gt: np.ndarray, pred_index: np.ndarray, gt_index: np.ndarray) -> np.ndarray:
    """IoU of prediction ``pred_index[i]`` with ground truth ``gt_index[i]``: :func:`bbox_overlaps`' arithmetic.

    ``pred`` and ``gt`` are boxes by coordinate (4×N: the x1, y1, x2, y2 rows; gathers from a row are faster
    than from columns of N×4). Pairs that do not overlap in x get 0 at once; height, areas and the division
    are computed for the others only.
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


def _reach(iou_threshold: float) -> float:
    """How far apart two box centres can be, in widths of the first box, for their IoU to reach ``iou_threshold``.

    For proper boxes (W, H > 0) IoU >= t needs the overlap along x ``iw >= t·max(Wp, Wg)`` (the intersection
    is at most ``iw`` times either height, the union at least either area), so ``Wg <= Wp / t``; and two
    intervals overlap by at most ``(Wp + Wg) / 2 - |cp - cg|``. Over every such ``Wg``:
    ``|cp - cg| <= Wp·max(1 - t, (1/t - 1) / 2)``. The same holds along y with heights.
    """
    return max(1 - iou_threshold, (1 / iou_threshold - 1) / 2)


def _search(
    pred: np.ndarray, image: np.ndarray, gt: np.ndarray, gt_offsets: np.ndarray, iou_threshold: float, boundary: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`candidate_ranges` of boxes by coordinate (4×N rows), and each prediction's reach along y.

    The reach is how far the y centres of faces that can reach the threshold lie from its own (the bound of
    :func:`_reach`): finite for every proper prediction that lies within ±1e5, in any image (a face that is
    not a proper box cannot reach a threshold above 0 at all), infinite for the others and when t <= 0.
    """
    gt_image = np.repeat(np.arange(len(gt_offsets) - 1), np.diff(gt_offsets))
    # a sort key that keeps images apart: centres clipped far outside any photo, images 1e7 apart
    gt_key = gt_image * 1e7 + np.clip((gt[0] + gt[2] + boundary) / 2, -1e6, 1e6)
    order = np.argsort(gt_key, kind="stable")
    first, last = gt_offsets[:-1][image], gt_offsets[1:][image]
    if iou_threshold <= 0 or not gt.shape[1]:
        return order, first, last, np.full(len(image), np.inf)
    reach = _reach(iou_threshold * 0.99)
    x_reach = (pred[2] - pred[0] + boundary) * reach + 1
    y_reach = (pred[3] - pred[1] + boundary) * reach + 1
    centre = (pred[0] + pred[2] + boundary) / 2
    # proper predictions (infinite and negative sizes are not) whose reach lies well inside the keys' range
    bounded = (x_reach > 1) & (y_reach > 1) & (np.abs(centre) + x_reach < 1e5)
    bounded &= np.abs(pred[1] + pred[3] + boundary) / 2 + y_reach < 1e5
    y_reach[~bounded] = np.inf
    # images whose faces are all compared: those with a face that is not a proper box or is far out (past
    # ±1e5: its key may be clipped), and those with few faces (comparing them all costs less than searching)
    whole_image = np.diff(gt_offsets) <= _COMPARE_ALL  # (np.unique would import numpy.ma: 10 ms)
    gt_width, gt_height = gt[2] - gt[0] + boundary, gt[3] - gt[1] + boundary
    odd = ~((gt_width > 0) & (gt_height > 0) & (np.abs(gt) < 1e5).all(axis=0))
    whole_image[gt_image[odd]] = True
    searched = np.flatnonzero(bounded & ~whole_image[image])
    if len(searched):
        sorted_key, low, high = gt_key[order], first[searched], last[searched]
        centre, x_reach = image[searched] * 1e7 + centre[searched], x_reach[searched]
        first[searched] = np.clip(np.searchsorted(sorted_key, centre - x_reach, side="left"), low, high)
        last[searched] = np.clip(np.searchsorted(sorted_key, centre + x_reach, side="right"), first[searched], high)
    return order, first, last, y_reach


def candidate_ranges(
    pred: np.ndarray,
    image: np.ndarray,
    gt: np.ndarray,
    gt_offsets: np.ndarray,
    iou_threshold: float,
    boundary: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth sorted by image then x centre, and per prediction the range of it that can reach the threshold.

    Boxes are x1 y1 x2 y2 rows; ``image`` is each prediction's image, ``gt_offsets`` where each image's ground
    truth starts. Widths are ``W = x2 - x1 + boundary`` and centres ``c = (x1 + x2 + boundary) / 2``; a face
    whose centre is further than ``Wp·_reach(t)`` from the prediction's cannot reach IoU t. The bound is
    widened (t taken 1% lower, a pixel more each side) so rounding can never leave a pair that reaches t
    out. A prediction that is not a proper box (or lies past ±1e5), one in an image with a face that is not
    (or lies that far out) or with at most ``_COMPARE_ALL`` faces, and every prediction when t <= 0, gets
    all of its image's ground truth.

    Returns:
        (order: sorted position -> ground-truth id, first, last + 1) with first/last positions in ``order``.
    """
    rows = np.ascontiguousarray(pred.T), np.ascontiguousarray(gt.T)
    return _search(*rows[:1], image, rows[1], gt_offsets, iou_threshold, boundary)[:3]


def _hits(
    pred: np.ndarray, image: np.ndarray, truth: GroundTruth, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions whose best IoU reaches ``iou_threshold``, ascending; that best ground truth's global id).

    ``pred`` holds x1 y1 x2 y2 rows (4×N), ``image`` each one's image. The best is the reference's ``argmax``
    over the image's faces: the highest IoU, ties to the lowest id. Only the faces that can reach the
    threshold are compared (a prediction whose best is below it has no hit, whichever face that is): those
    :func:`candidate_ranges` finds whose y centre is also near enough (the same bound, in every image), in
    chunks of at most ``_PAIRS_PER_CHUNK`` (prediction, face) pairs.
    """
    gt, offsets = truth.corners, truth.offsets
    order, first, last, y_reach = _search(pred, image, gt.T, offsets, iou_threshold, 1.0)
    gt = np.ascontiguousarray(gt[order].T)
    # clipped so that no difference is inf - inf (NaN): the faces that can reach the threshold of a prediction
    # with a finite reach have centres within ±2e5, never clipped
    centre = np.clip((pred[1] + pred[3] + 1) / 2, -1e7, 1e7)
    gt_centre = np.clip((gt[1] + gt[3] + 1) / 2, -1e7, 1e7)
    hit_pred, hit_gt = [], []
    counts = last - first
    pairs = np.cumsum(counts)
    start = 0
    while start < len(counts):
        done = pairs[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(pairs, done + _PAIRS_PER_CHUNK, side="right")))
        count = counts[start:stop]
        owner = np.repeat(np.arange(start, stop), count)
        position = np.arange(len(owner)) + np.repeat(first[start:stop] - (pairs[start:stop] - count - done), count)
        near = np.abs(centre.take(owner) - gt_centre.take(position)) <= y_reach.take(owner)
        owner, position = owner[near], position[near]
        iou = _pair_overlaps(pred, gt, owner, position)
        hit = np.flatnonzero(iou >= iou_threshold)
        if len(hit):  # owners ascend: per owner the highest IoU, then the lowest id among those
            owner, face, iou = owner[hit], order[position[hit]], iou[hit]
            starts = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
            best = np.repeat(np.maximum.reduceat(iou, starts), np.diff(np.append(starts, len(owner))))
            hit_pred.append(owner[starts])
            hit_gt.append(np.minimum.reduceat(np.where(iou == best, face, np.iinfo(np.int64).max), starts))
        start = stop
    if not hit_pred:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(hit_pred), np.concatenate(hit_gt)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the reference's backward loop of np.maximum
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _curve(first_t: np.ndarray) -> np.ndarray:
    """Per threshold, how many of the predictions whose first counted thresholds are ``first_t`` count by then."""
    return np.cumsum(np.bincount(first_t, minlength=THRESHOLDS + 1))[:THRESHOLDS]


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
    return _finite(stacked, counts, truth), counts


def _finite(rows: np.ndarray, counts: np.ndarray, truth: GroundTruth) -> np.ndarray:
    """``rows`` (checked to be finite) for ``counts`` rows per ground-truth image.

    Raises:
        EvaluationError: naming the first image with a value that is not.
    """
    if not np.isfinite(rows).all():
        finite = np.isfinite(rows).all(axis=1)
        event, name = truth.images[int(np.searchsorted(np.cumsum(counts), np.flatnonzero(~finite)[0], side="right"))]
        raise EvaluationError(f"predictions for {event}/{name} are not rows of 5 finite numbers (x y w h score)")
    return rows


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
    return _evaluate(*_stacked(predictions, truth), truth, iou_threshold)


def evaluate_rows(
    rows: np.ndarray, counts: np.ndarray, truth: GroundTruth, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float]:
    """:func:`evaluate` of every image's predictions in one array (as ``read_prediction_rows`` reads them).

    Args:
        rows: R×5 ``x y w h score``: the rows of each ground-truth image in turn (``truth.images`` order).
        counts: how many rows each ground-truth image has.
        truth: the validation ground truth.
        iou_threshold: the overlap that makes a hit.

    Raises:
        EvaluationError: rows that are not R×5 finite numbers, or counts that do not add up to them.
    """
    rows, counts = np.asarray(rows, dtype=float), np.asarray(counts)
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise EvaluationError(f"predictions of shape {rows.shape} are not rows of 5 numbers (x y w h score)")
    if counts.shape != (len(truth.images),) or (counts < 0).any() or counts.sum() != len(rows):
        raise EvaluationError(f"row counts for {len(counts)} images do not match {len(rows)} rows and the ground truth")
    return _evaluate(_finite(rows, counts, truth), counts, truth, iou_threshold)


def _evaluate(boxes: np.ndarray, counts: np.ndarray, truth: GroundTruth, iou_threshold: float) -> dict[str, float]:
    """:func:`evaluate` of checked rows (``counts`` per image); ``boxes`` is not changed."""
    image = np.repeat(np.arange(len(counts)), counts)
    scores = boxes[:, 4]
    max_score = max(float(scores.max()), 0.0) if len(scores) else 0.0
    min_score = min(float(scores.min()), 1.0) if len(scores) else 1.0
    if len(scores) and max_score == min_score:
        log.warning(
            "every prediction scores %g: the reference's score normalisation divides by zero there, and the APs "
            "are the reference's for that case (0)",
            max_score,
        )
    with np.errstate(divide="ignore", invalid="ignore"):  # the same NaN scores as the reference, without numpy's line
        scores = (scores - min_score) / (max_score - min_score)  # the reference's norm_score
    if not (np.diff(truth.offsets) > 0).all():  # the reference skips images without ground truth
        rows = np.flatnonzero(np.diff(truth.offsets)[image] > 0)
        boxes, image, scores = boxes[rows], image[rows], scores[rows]
    pred = np.ascontiguousarray(boxes[:, :4].T)
    pred[2:] += pred[:2]
    hit, face = _hits(pred, image, truth, iou_threshold)
    first = _first_counted_threshold(scores, image)
    every = _curve(first)  # the proposals if no prediction hit an ignored face
    aps = {}
    for setting in SETTINGS:
        counted = truth.counted[setting][face]
        kept_hit, kept_face = hit[counted], face[counted]
        _, first_of_each = np.unique(kept_face, return_index=True)  # a face is recalled once, first
        proposals = every - _curve(first[hit[~counted]])  # a hit on an ignored face is no proposal
        true_positives = _curve(first[kept_hit[first_of_each]])
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = true_positives / proposals
            recall = true_positives / truth.kept_total[setting]
        aps[setting] = _voc_ap(recall, precision)
    return aps
