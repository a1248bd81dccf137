"""WIDER FACE validation AP (easy, medium, hard): the official protocol, vectorised.

The protocol is the one biubug6's ``widerface_evaluate/evaluation.py`` implements. Kept exactly, because
the numbers are compared with published ones: scores normalised over the whole set
(min starts at 1, max at 0); predictions taken in file order, not re-sorted; IoU with the ``+1`` pixel
convention of its Cython ``bbox_overlaps``; 1,000 thresholds ``1 - (t+1)/1000``; a prediction whose best
ground truth is outside the setting's keep list is no proposal; VOC AP over the precision envelope (NaN from
0/0 precision propagates as it does there). What is vectorised: the overlaps (every prediction against its
image's ground truth, for many images at once); the threshold sweep, as each prediction's first counted
threshold (an exact searchsorted, then a suffix minimum per image) so that every image's curve adds up in
one weighted bincount; and recall, as the first hit of each kept face over the whole set.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.errors import EvaluationError
from retinaface_export.widerface import SETTINGS, GroundTruth

THRESHOLDS = 1000
IOU_THRESHOLD = 0.5
# (prediction, ground truth) pairs whose overlaps are computed at once: ~100 MB of temporaries
_PAIRS_PER_CHUNK = 1 << 20


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
    thresholds = 1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS  # the reference's values, decreasing
    own = THRESHOLDS - np.searchsorted(thresholds[::-1], scores, side="right")  # thresholds above the score
    # one suffix minimum over the whole set that restarts at each image: read backwards, every image's values
    # are shifted below all those read before it (own is in [0, THRESHOLDS])
    shift = (image.astype(np.int64) - (int(image.max()) if len(image) else 0)) * (2 * THRESHOLDS + 2)
    return (np.minimum.accumulate((own + shift)[::-1])[::-1] - shift).astype(np.int64)


def _pair_overlaps(pred: np.ndarray, gt: np.ndarray, pred_index: np.ndarray, gt_index: np.ndarray) -> np.ndarray:
    """IoU of ``pred[pred_index[i]]`` with ``gt[gt_index[i]]`` (x1 y1 x2 y2 rows): :func:`bbox_overlaps`' arithmetic.

    Most pairs do not overlap in x; height, areas and the division are computed for the others only.
    """
    iou = np.zeros(len(pred_index))
    iw = np.minimum(pred[pred_index, 2], gt[gt_index, 2]) - np.maximum(pred[pred_index, 0], gt[gt_index, 0]) + 1
    pairs = np.flatnonzero(iw > 0)
    p, g = pred_index[pairs], gt_index[pairs]
    ih = np.minimum(pred[p, 3], gt[g, 3]) - np.maximum(pred[p, 1], gt[g, 1]) + 1
    overlapping = ih > 0
    pairs, p, g, iw, ih = pairs[overlapping], p[overlapping], g[overlapping], iw[pairs][overlapping], ih[overlapping]
    pred_area = (pred[p, 2] - pred[p, 0] + 1) * (pred[p, 3] - pred[p, 1] + 1)
    gt_area = (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1)
    inter = iw * ih
    iou[pairs] = inter / (pred_area + gt_area - inter)
    return iou


def _best_ground_truth(
    pred: np.ndarray, gt_first: np.ndarray, gt_count: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction (x1 y1 x2 y2), its best ground truth among ``gt[first : first + count]`` and that IoU.

    Every (prediction, ground truth) pair of the chunk at once; ties go to the first ground truth, as
    ``argmax`` over a row of :func:`bbox_overlaps` decides. Inputs are finite, so no IoU is NaN.
    """
    starts = np.cumsum(gt_count) - gt_count
    owner = np.repeat(np.arange(len(pred)), gt_count)
    gt_index = gt_first[owner] + np.arange(len(owner)) - starts[owner]
    iou = _pair_overlaps(pred, gt, owner, gt_index)
    best = np.maximum.reduceat(iou, starts)
    first = np.flatnonzero(iou == best[owner])
    return gt_index[first[np.searchsorted(first, starts)]], best


def _matches(
    predictions: list[np.ndarray], truth: GroundTruth, gt_offsets: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the predictions of images that have ground truth: best global ground-truth id, hit, first t.

    Images are taken in chunks of at most ``_PAIRS_PER_CHUNK`` (prediction, ground truth) pairs, so the
    overlaps of a whole chunk are computed at once without holding the whole set's.
    """
    counts = np.array([len(boxes) for boxes in predictions], dtype=np.int64)
    gt_counts = np.diff(gt_offsets)
    active = np.flatnonzero((counts > 0) & (gt_counts > 0))  # the reference skips the others
    if not len(active):
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
    boxes = np.concatenate([predictions[i] for i in active])
    image = np.repeat(active, counts[active])
    pred = boxes[:, :4].copy()
    pred[:, 2:] += pred[:, :2]
    gt = np.concatenate(truth.boxes).astype(float)
    gt[:, 2:] += gt[:, :2]
    pairs = np.cumsum(counts[active] * gt_counts[active])
    bounds = np.concatenate(([0], np.cumsum(counts[active])))
    best_gt, best_iou = np.zeros(len(pred), np.int64), np.zeros(len(pred))
    first_image = 0
    while first_image < len(active):
        done = pairs[first_image - 1] if first_image else 0
        last = max(first_image + 1, int(np.searchsorted(pairs, done + _PAIRS_PER_CHUNK, side="right")))
        rows = slice(bounds[first_image], bounds[last])
        chunk_images = image[rows]
        best_gt[rows], best_iou[rows] = _best_ground_truth(
            pred[rows], gt_offsets[chunk_images], gt_counts[chunk_images], gt
        )
        first_image = last
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


def evaluate(
    predictions: list[np.ndarray], truth: GroundTruth, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float]:
    """AP per setting for predictions (N×5 ``x y w h score`` per ground-truth image, in its order).

    Raises:
        EvaluationError: predictions that are not N×5 finite numbers, or not one array per image.
    """
    if len(predictions) != len(truth.images):
        raise EvaluationError(f"{len(predictions)} prediction arrays for {len(truth.images)} ground-truth images")
    for (event, name), boxes in zip(truth.images, predictions, strict=True):
        if boxes.ndim != 2 or boxes.shape[1] != 5 or not np.isfinite(boxes).all():
            raise EvaluationError(f"predictions for {event}/{name} are not rows of 5 finite numbers (x y w h score)")
    predictions = normalise_scores(predictions)
    gt_offsets = np.concatenate(([0], np.cumsum([len(b) for b in truth.boxes]))).astype(np.int64)
    best, hit, first = _matches(predictions, truth, gt_offsets, iou_threshold)
    aps = {}
    for setting in SETTINGS:
        counted = np.zeros(gt_offsets[-1], dtype=bool)
        keeps = [k - 1 + gt_offsets[i] for i, k in enumerate(truth.keep[setting]) if len(k)]
        if keeps:
            counted[np.concatenate(keeps)] = True
        count_face = sum(len(k) for k in truth.keep[setting])
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
