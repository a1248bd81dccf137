"""A detected face (box, score, five landmarks) and faces from post-processed arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_DECIMALS = 3


@dataclass(frozen=True)
class Face:
    """One detection in original-image pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] × 5]}``."""
        return {
            "box": [round(v, _DECIMALS) for v in self.box],
            "score": round(self.score, 6),
            "landmarks": [[round(x, _DECIMALS), round(y, _DECIMALS)] for x, y in self.landmarks],
        }


def faces_from_arrays(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> list[Face]:
    """Faces from post-processed arrays (K×4 boxes, K scores, K×10 landmarks)."""
    return [
        Face(tuple(map(float, box)), float(score), tuple((float(p[0]), float(p[1])) for p in pts.reshape(5, 2)))
        for box, score, pts in zip(boxes, scores, points, strict=True)
    ]
