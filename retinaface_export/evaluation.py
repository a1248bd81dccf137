"""WIDER FACE validation AP (easy, medium, hard): the official protocol, vectorised.

The protocol is the one biubug6's ``widerface_evaluate/evaluation.py`` implements. Kept exactly, because
the numbers are compared with published ones: scores normalised over the whole set
(min starts at 1, max at 0); predictions taken in file order, not re-sorted; IoU with the ``+1`` pixel
convention of its Cython ``bbox_overlaps``; 1,000 thresholds ``1 - (t+1)/1000``; a prediction whose best
ground truth is outside the setting's keep list is no proposal; VOC AP over the precision envelope (NaN from
0/0 precision propagates as it does there). What is vectorised: the overlaps (one matrix per image); the
threshold sweep, as each prediction's first counted threshold (an exact searchsorted, then a suffix
minimum) so that every image's curve adds up in one weighted bincount; and recall, as the first hit of
each kept face over the whole set.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.errors import EvaluationError
from retinaface_export.widerface import SETTINGS, GroundTruth

THRESHOLDS = 1000
IOU_THRESHOLD = 0.5


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
    max_score, min_score = 0.0, 1.0
    for boxes in predictions:
        if len(boxes):
            max_score = max(np.max(boxes[:, -1]), max_score)
            min_score = min(np.min(boxes[:, -1]), min_score)
    diff = max_score - min_score
    normalised = []
    for boxes in predictions:
        boxes = boxes.copy()
        if len(boxes):
            boxes[:, -1] = (boxes[:, -1] - min_score) / diff
        normalised.append(boxes)
    return normalised


def _first_counted_threshold(scores: np.ndarray) -> np.ndarray:
    """For each prediction of one image (file order), the first threshold index t at which it is counted.

    The reference counts predictions up to the last one scoring >= 1 - (t+1)/1000, so prediction i is in from
    the first t at which it or any later prediction qualifies: a suffix minimum of each one's own first t.
    """
    thresholds = 1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS  # the reference's values, decreasing
    own = THRESHOLDS - np.searchsorted(thresholds[::-1], scores, side="right")  # thresholds above the score
    return np.minimum.accumulate(own[::-1])[::-1]


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
    gt_offsets = np.concatenate(([0], np.cumsum([len(b) for b in truth.boxes])))
    best_gt, matched, first_t = [], [], []
    for index, (boxes, gt) in enumerate(zip(predictions, truth.boxes, strict=True)):
        if len(gt) == 0 or len(boxes) == 0:
            continue  # the reference skips the image; its faces still count
        pred = boxes[:, :4].copy()
        pred[:, 2:] += pred[:, :2]
        gt_xyxy = gt.copy()
        gt_xyxy[:, 2:] += gt_xyxy[:, :2]
        overlaps = bbox_overlaps(pred, gt_xyxy)
        best_gt.append(overlaps.argmax(axis=1) + gt_offsets[index])  # global ground-truth ids
        matched.append(overlaps.max(axis=1) >= iou_threshold)
        first_t.append(_first_counted_threshold(boxes[:, 4]))
    best = np.concatenate(best_gt) if best_gt else np.zeros(0, np.int64)
    hit = np.concatenate(matched) if matched else np.zeros(0, bool)
    first = np.concatenate(first_t) if first_t else np.zeros(0, np.int64)
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
