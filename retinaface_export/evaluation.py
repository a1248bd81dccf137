"""WIDER FACE validation AP (easy, medium, hard): the official protocol, vectorised.

The protocol is the one biubug6's ``widerface_evaluate/evaluation.py`` implements. Kept exactly, because
the numbers are compared with published ones: scores normalised over the whole set
(min starts at 1, max at 0); predictions taken in file order, not re-sorted; IoU with the ``+1`` pixel
convention of its Cython ``bbox_overlaps``; 1,000 thresholds ``1 - (t+1)/1000``; a prediction whose best
ground truth is outside the setting's keep list is no proposal; VOC AP over the precision envelope (NaN from
0/0 precision propagates as it does there). What is vectorised: the overlaps (one matrix per image),
per-image recall (first hits + cumulative sum) and the threshold sweep (each prediction's first qualifying
threshold by an exact searchsorted, then a running maximum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def _last_index_per_threshold(scores: np.ndarray) -> np.ndarray:
    """For each threshold t, the last prediction index with score >= 1 - (t+1)/1000, or -1."""
    thresholds = 1 - (np.arange(THRESHOLDS) + 1) / THRESHOLDS  # the reference's values, decreasing
    ascending = thresholds[::-1]
    first_t = THRESHOLDS - np.searchsorted(ascending, scores, side="right")  # count of thresholds above s
    last = np.full(THRESHOLDS + 1, -1, dtype=np.int64)
    np.maximum.at(last, first_t, np.arange(len(scores)))
    return np.maximum.accumulate(last)[:THRESHOLDS]


@dataclass(frozen=True)
class _ImageMatch:
    best_gt: np.ndarray  # per prediction, index of the ground truth with the highest IoU (first on ties)
    matched: np.ndarray  # per prediction, best IoU >= threshold
    last: np.ndarray  # per threshold, last qualifying prediction (-1: none)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the reference's backward loop of np.maximum
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate(
    predictions: list[np.ndarray], truth: GroundTruth, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float]:
    """AP per setting for predictions (N×5 ``x y w h score`` per ground-truth image, in its order)."""
    predictions = normalise_scores(predictions)
    matches: list[_ImageMatch | None] = []
    for boxes, gt in zip(predictions, truth.boxes, strict=True):
        if len(gt) == 0 or len(boxes) == 0:
            matches.append(None)
            continue
        pred = boxes[:, :4].copy()
        pred[:, 2:] += pred[:, :2]
        gt_xyxy = gt.copy()
        gt_xyxy[:, 2:] += gt_xyxy[:, :2]
        overlaps = bbox_overlaps(pred, gt_xyxy)
        matches.append(
            _ImageMatch(
                overlaps.argmax(axis=1), overlaps.max(axis=1) >= iou_threshold, _last_index_per_threshold(boxes[:, 4])
            )
        )
    aps = {}
    for setting in SETTINGS:
        pr_curve = np.zeros((THRESHOLDS, 2))
        count_face = 0
        for match, gt, keep in zip(matches, truth.boxes, truth.keep[setting], strict=True):
            count_face += len(keep)
            if match is None:
                continue
            counted = np.zeros(len(gt), dtype=bool)
            if len(keep):
                counted[keep - 1] = True
            kept_hit = match.matched & counted[match.best_gt]
            proposal = ~(match.matched & ~counted[match.best_gt])
            first = np.zeros(len(kept_hit), dtype=bool)
            hits = np.flatnonzero(kept_hit)
            if len(hits):
                _, first_of_each = np.unique(match.best_gt[hits], return_index=True)
                first[hits[first_of_each]] = True
            pred_recall = np.cumsum(first)
            proposals = np.cumsum(proposal)
            has = match.last >= 0
            pr_curve[has, 0] += proposals[match.last[has]]
            pr_curve[has, 1] += pred_recall[match.last[has]]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr_curve[:, 1] / pr_curve[:, 0]
            recall = pr_curve[:, 1] / count_face
        aps[setting] = _voc_ap(recall, precision)
    return aps
