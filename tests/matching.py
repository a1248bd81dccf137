"""Greedy IoU matching of two detection sets (test helper).

Deliberately separate from retinaface_export.detection.compare: the tests that check the detector
against the reference pipeline measure with code that is not part of the package.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain IoU (no +1) between box sets a (N×4) and b (M×4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def greedy_match(a: np.ndarray, b: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, iou) matched greedily by descending IoU, each box used once, IoU >= min_iou."""
    if len(a) == 0 or len(b) == 0:
        return []
    ious = iou_matrix(a, b)
    pairs = []
    used_a, used_b = set(), set()
    for flat in np.argsort(-ious, axis=None):
        i, j = divmod(int(flat), ious.shape[1])
        if ious[i, j] < min_iou:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j, float(ious[i, j])))
    return pairs
