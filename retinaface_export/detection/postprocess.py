"""Network outputs to faces: threshold, top-k, decode, NMS, top-k (biubug6 ``detect.py``).

The maths is the reference's: ``box_utils.decode``/``decode_landm`` and ``py_cpu_nms`` (with its ``+1``
pixel convention and ``IoU <= threshold`` survival), in float32 like the reference's tensors. Sorting uses
the reference's ``argsort()[::-1]`` so that ties fall the same way. Decoding runs only on the anchors that
pass the score threshold, which gives the same faces as decoding all of them first.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from retinaface_export.errors import UsageError

# Largest candidate count for the all-pairs IoU NMS (a 2048² float32 matrix is 16 MB).
_MATRIX_NMS_MAX = 2048


@dataclass(frozen=True)
class DetectionConfig:
    """Post-processing knobs; defaults follow ``retinaface-detect`` (reference detect.py: 0.02/0.4/5000/750)."""

    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750

    def __post_init__(self) -> None:
        for label, value in (("score threshold", self.score_threshold), ("NMS threshold", self.nms_threshold)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise UsageError(f"the {label} must be a number from 0 to 1, got {value!r}")  # NaN fails too
        for label, count in (("top_k", self.top_k), ("keep_top_k", self.keep_top_k)):
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                raise UsageError(f"{label} must be a positive integer, got {count!r}")


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variance: tuple[float, float]) -> np.ndarray:
    """Box regressions (K×4) to ``x1, y1, x2, y2`` in [0, 1] units of the input."""
    centers = priors[:, :2] + loc[:, :2] * np.float32(variance[0]) * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * np.float32(variance[1]))
    top_left = centers - sizes / 2
    return np.concatenate([top_left, top_left + sizes], axis=1)


def decode_landmarks(pre: np.ndarray, priors: np.ndarray, variance: tuple[float, float]) -> np.ndarray:
    """Landmark regressions (K×10) to five ``x, y`` points (K×10) in [0, 1] units of the input."""
    offsets = pre.reshape(-1, 5, 2) * np.float32(variance[0]) * priors[:, None, 2:]
    return (priors[:, None, :2] + offsets).reshape(-1, 10)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS, reference ``py_cpu_nms``: indices kept, best first. Boxes are pixel ``x1, y1, x2, y2``.

    Up to ``_MATRIX_NMS_MAX`` boxes, all IoUs are computed at once (the same float32 expression, element
    by element, as the reference) and the greedy pass only reads rows; beyond that, the reference loop.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    if len(order) <= _MATRIX_NMS_MAX:
        return _matrix_nms(boxes[order], areas[order], threshold, order)
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _matrix_nms(boxes: np.ndarray, areas: np.ndarray, threshold: float, order: np.ndarray) -> np.ndarray:
    """Greedy NMS on boxes already sorted best first; returns indices into ``order``'s source."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    w = np.maximum(0.0, np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]) + 1)
    h = np.maximum(0.0, np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]) + 1)
    inter = w * h
    suppresses = inter / (areas[:, None] + areas[None, :] - inter) > threshold
    alive = np.ones(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if alive[i]:
            keep.append(i)
            alive[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[np.asarray(keep, dtype=np.int64)]


def postprocess(
    loc: np.ndarray,
    conf: np.ndarray,
    landmarks: np.ndarray,
    priors: np.ndarray,
    variance: tuple[float, float],
    scale: tuple[float, float],
    config: DetectionConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (A×4, A×2, A×10) to (boxes K×4, scores K, landmarks K×10) in input pixels.

    ``scale`` is the network input's ``(width, height)``: decoded [0, 1] coordinates are multiplied by it.
    """
    scores = conf[:, 1]
    candidates = top_candidates(scores, config)
    width, height = np.float32(scale[0]), np.float32(scale[1])
    box_scale = np.array([width, height, width, height], dtype=np.float32)
    boxes = decode_boxes(loc[candidates], priors[candidates], variance) * box_scale
    points = decode_landmarks(landmarks[candidates], priors[candidates], variance) * np.tile(box_scale[:2], 5)
    return suppress(boxes, scores[candidates].astype(np.float32), points, config)


def top_candidates(scores: np.ndarray, config: DetectionConfig) -> np.ndarray:
    """Indices of the scores above the threshold, best first, at most ``top_k`` (the reference's order)."""
    candidates = np.flatnonzero(scores > config.score_threshold)
    return candidates[scores[candidates].argsort()[::-1][: config.top_k]]


def suppress(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, config: DetectionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NMS over candidates (pixel boxes), then the best ``keep_top_k``."""
    keep = nms(boxes, scores, config.nms_threshold)[: config.keep_top_k]
    return boxes[keep], scores[keep], points[keep]


def postprocess_decoded(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, config: DetectionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ``decode`` outputs (A×4 pixel boxes, A scores, A×10 pixel landmarks) to faces."""
    candidates = top_candidates(scores, config)
    return suppress(boxes[candidates], scores[candidates].astype(np.float32), points[candidates], config)
