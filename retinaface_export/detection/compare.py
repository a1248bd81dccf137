"""How far two detection sets agree: greedy IoU matching, F1, mean IoU, landmark error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinaface_export.detection.faces import Face


@dataclass(frozen=True)
class Agreement:
    """Faces of a candidate matched to a reference's (one-to-one, IoU >= the matching threshold)."""

    reference_faces: int
    candidate_faces: int
    matched: int
    mean_iou: float
    max_landmark_error_px: float

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 1.0 when both sets are empty."""
        total = self.reference_faces + self.candidate_faces
        return 1.0 if total == 0 else 2 * self.matched / total


def _boxes(faces: list[Face]) -> np.ndarray:
    return np.array([face.box for face in faces], dtype=np.float64).reshape(-1, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def tolerant_f1(
    reference: list[Face], candidate: list[Face], threshold: float, margin: float, min_iou: float = 0.5
) -> float:
    """F1 where a face above ``threshold`` on one side is found by a face above ``threshold - margin``.

    Both lists must hold faces down to at least ``threshold - margin``.
    """
    ref_strong = [f for f in reference if f.score > threshold]
    cand_strong = [f for f in candidate if f.score > threshold]
    total = len(ref_strong) + len(cand_strong)
    if total == 0:
        return 1.0
    low = threshold - margin
    recalled = compare_faces(ref_strong, [f for f in candidate if f.score > low], min_iou).matched
    precise = compare_faces(cand_strong, [f for f in reference if f.score > low], min_iou).matched
    return (recalled + precise) / total


def compare_faces(reference: list[Face], candidate: list[Face], min_iou: float = 0.5) -> Agreement:
    """Match ``candidate`` to ``reference`` greedily by descending IoU and summarise the agreement."""
    if not reference or not candidate:
        return Agreement(len(reference), len(candidate), 0, 0.0, 0.0)
    ious = _iou(_boxes(reference), _boxes(candidate))
    used_ref, used_cand, pairs = set(), set(), []
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        i, j = divmod(int(flat), ious.shape[1])
        if ious[i, j] < min_iou:
            break
        if i not in used_ref and j not in used_cand:
            used_ref.add(i)
            used_cand.add(j)
            pairs.append((i, j))
    if not pairs:
        return Agreement(len(reference), len(candidate), 0, 0.0, 0.0)
    landmark_error = max(
        float(np.max(np.abs(np.subtract(reference[i].landmarks, candidate[j].landmarks)))) for i, j in pairs
    )
    mean_iou = float(np.mean([ious[i, j] for i, j in pairs]))
    return Agreement(len(reference), len(candidate), len(pairs), mean_iou, landmark_error)
