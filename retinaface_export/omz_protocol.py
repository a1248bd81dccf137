"""WIDER FACE validation AP as the Open Model Zoo accuracy checker computes it for retinaface-resnet50-pytorch.

``models/public/retinaface-resnet50-pytorch/accuracy-check.yml`` (open_model_zoo) scores the whole
validation set with one ``map`` metric (reference 0.9178), after these steps, which this module follows:

- annotations (the ``wider`` converter): every face of ``wider_face_val_bbx_gt.txt`` as x, y, x + w, y + h.
  That file lists an image without faces with a count of 0, where the .mat files hold one 0 0 0 0 box:
  such a box is no annotation here either;
- ``cast_to_int`` (both sides): coordinates rounded half to even (``np.rint``);
- ``clip_boxes`` (annotations, size 1024): coordinates clipped to [0, 1024];
- ``filter`` (annotations): a face whose height is outside [64, 1024) (``height_range: 64, 1024``) or
  whose width or height is <= 0 (``is_empty``) is *difficult*: ignored, neither to find nor a false alarm;
- ``map`` with ``ignore_difficult: True``, ``include_boundaries: False`` (IoU without the ``+1``),
  ``allow_multiple_matches_per_ignored: False``, ``distinct_conf: False``, overlap 0.5, VOC ``max``
  integral: every prediction of the set taken by descending score (NumPy's default ``argsort`` of the
  negated scores, ground-truth image order then file order, as the checker concatenates them); each one
  takes the face(s) it overlaps most, preferring faces that count; a face that counts is found once
  (true positive), a second prediction on it is a false positive; a prediction whose best overlap is a
  difficult face is ignored the first time and a false positive after; below 0.5 it is a false positive.

Predictions come from the same WIDER-format files as the official protocol (``x y w h score`` in image
pixels), read as the converter reads ground truth: x2 = x + w, y2 = y + h. Scores are used as they are.
The implementation is vectorised (candidate faces by sorted x, each face's first claimant by a sort);
images where a prediction ties between two faces are replayed one prediction at a time, exactly.
``tests/omz_accuracy_checker.py`` transcribes the checker's own code, and the tests compare the two.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.evaluation import _stacked, candidate_ranges
from retinaface_export.widerface import GroundTruth

CLIP_SIZE = 1024
HEIGHT_RANGE = (64.0, 1024.0)  # [min, max): the checker's in_interval
OVERLAP_THRESHOLD = 0.5
# accuracy-check.yml's reference for retinaface-resnet50-pytorch (OpenVINO, 640×640 stretch)
REFERENCE_MAP = 0.9178
_CHUNK_PAIRS = 1 << 20


def annotation_boxes(truth: GroundTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x1 y1 x2 y2 after rounding and clipping, difficult, per-image offsets) of the checker's annotations.

    Boxes are in image order; images without faces (the .mat's single 0 0 0 0 box) have none.
    """
    corners = truth.corners
    counts = np.diff(truth.offsets)
    no_face = (counts == 1) & (corners[truth.offsets[:-1].clip(max=max(len(corners) - 1, 0))] == 0).all(axis=1)
    present = ~np.repeat(no_face, counts)
    boxes = np.clip(np.rint(corners[present]), 0, CLIP_SIZE)
    offsets = np.concatenate(([0], np.cumsum(np.where(no_face, 0, counts)))).astype(np.int64)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    in_range = (HEIGHT_RANGE[0] <= height) & (height < HEIGHT_RANGE[1])
    difficult = ~in_range | (width <= 0) | (height <= 0)
    return boxes, difficult, offsets


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise IoU of x1 y1 x2 y2 boxes as the checker's ``IOU`` (no ``+1``; 0 where the union is 0)."""
    x_mins = np.maximum(gt[:, 0], pred[:, 0])
    y_mins = np.maximum(gt[:, 1], pred[:, 1])
    x_maxs = np.maximum(x_mins, np.minimum(gt[:, 2], pred[:, 2]))
    y_maxs = np.maximum(y_mins, np.minimum(gt[:, 3], pred[:, 3]))
    inter = (x_maxs - x_mins) * (y_maxs - y_mins)
    unions = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]) + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    unions = unions - inter
    return np.divide(inter, unions, out=np.zeros_like(inter), where=unions != 0)


def _claims(
    pred: np.ndarray, image: np.ndarray, gt: np.ndarray, difficult: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction: the (prediction, face) pairs of the faces it claims, as two index arrays.

    A prediction claims the faces at its best overlap when that is >= 0.5: the best over faces that count,
    or, when none of those reaches 0.5, the best over difficult ones; every face at exactly that overlap
    is claimed (the checker's ``np.where(overlaps == max_overlap)``).
    """
    order, first, last = candidate_ranges(pred, image, gt, offsets, OVERLAP_THRESHOLD, boundary=0.0)
    owners, faces = [], []
    pairs = np.cumsum(last - first)
    start = 0
    while start < len(pred):
        done = pairs[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(pairs, done + _CHUNK_PAIRS, side="right")))
        count = last[start:stop] - first[start:stop]
        owner = np.repeat(np.arange(start, stop), count)
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
        face = order[first[owner] + offset]
        iou = _overlaps(pred[owner], gt[face])
        keep = iou >= OVERLAP_THRESHOLD
        owner, face, iou = owner[keep], face[keep], iou[keep]
        # per prediction, the best overlap among faces that count, else among difficult ones
        counted = ~difficult[face]
        best_counted = np.full(len(pred), -np.inf)
        np.maximum.at(best_counted, owner[counted], iou[counted])
        best_difficult = np.full(len(pred), -np.inf)
        np.maximum.at(best_difficult, owner[~counted], iou[~counted])
        best = np.where(best_counted > -np.inf, best_counted, best_difficult)
        claimed = iou == best[owner]
        owners.append(owner[claimed])
        faces.append(face[claimed])
        start = stop
    return np.concatenate(owners) if owners else np.zeros(0, np.int64), (
        np.concatenate(faces) if faces else np.zeros(0, np.int64)
    )


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """The checker's VOC ``max`` integral, with its sentinels and envelope."""
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    change_point = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[change_point + 1] - recall[change_point]) * precision[change_point + 1]))


def evaluate_omz(predictions: list[np.ndarray], truth: GroundTruth) -> float:
    """The accuracy checker's ``map`` over the whole validation set, as retinaface-resnet50-pytorch configures it.

    Args:
        predictions: one N×5 ``x y w h score`` array per ground-truth image (``truth.images`` order), rows in
            file order (as :func:`retinaface_export.widerface.read_predictions` returns them).
        truth: the validation ground truth.

    Returns:
        The average precision (0.0 when there is no prediction at all, as the checker reports it).

    Raises:
        EvaluationError: predictions that are not N×5 finite numbers, or not one array per image.
    """
    boxes, counts = _stacked(predictions, truth)
    if not len(boxes):
        return 0.0
    gt, difficult, offsets = annotation_boxes(truth)
    faces_that_count = int(len(gt) - difficult.sum())
    image = np.repeat(np.arange(len(counts)), counts)
    pred = np.rint(np.column_stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]]))
    rank = np.empty(len(boxes), np.int64)
    rank[np.argsort(-boxes[:, 4])] = np.arange(len(boxes))  # the checker's sort, its ties included
    has_gt = np.diff(offsets)[image] > 0
    rows = np.flatnonzero(has_gt)
    owner, face = _claims(pred[rows], image[rows], gt, difficult, offsets)
    owner = rows[owner]
    true_positive = np.zeros(len(boxes), np.int64)
    false_positive = np.ones(len(boxes), np.int64)  # no claim: a false positive
    claims = np.bincount(owner, minlength=len(boxes))
    false_positive[claims > 0] = 0
    single = claims[owner] == 1
    replay = np.zeros(len(counts), bool)
    replay[image[owner[~single]]] = True  # images with a prediction claiming several faces
    simple = single & ~replay[image[owner]]
    # each face's claimants by rank: the first finds it (or is ignored, on a difficult face), the rest are wrong
    by_face = np.lexsort((rank[owner[simple]], face[simple]))
    simple_owner, simple_face = owner[simple][by_face], face[simple][by_face]
    first = np.ones(len(simple_face), bool)
    first[1:] = simple_face[1:] != simple_face[:-1]
    true_positive[simple_owner[first & ~difficult[simple_face]]] = 1
    false_positive[simple_owner[~first]] = 1
    if replay.any():
        _replay(np.flatnonzero(replay[image[owner]]), owner, face, rank, difficult, true_positive, false_positive)
    order = np.argsort(rank)
    tp, fp = np.cumsum(true_positive[order]), np.cumsum(false_positive[order])
    precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
    recall = tp / np.maximum(faces_that_count, np.finfo(float).eps)
    return _average_precision(precision, recall)


def _replay(
    pairs: np.ndarray,
    owner: np.ndarray,
    face: np.ndarray,
    rank: np.ndarray,
    difficult: np.ndarray,
    true_positive: np.ndarray,
    false_positive: np.ndarray,
) -> None:
    """The checker's loop, prediction by prediction in score order, over the claims ``pairs`` (in place)."""
    claimed: dict[int, list[int]] = {}
    for pair in pairs:
        claimed.setdefault(int(owner[pair]), []).append(int(face[pair]))
    used: set[int] = set()
    for prediction in sorted(claimed, key=lambda p: rank[p]):
        faces = claimed[prediction]
        taken = any(f in used for f in faces)
        if not difficult[faces].any():
            true_positive[prediction], false_positive[prediction] = (0, 1) if taken else (1, 0)
        else:
            true_positive[prediction], false_positive[prediction] = 0, int(taken)
        used.update(faces)
