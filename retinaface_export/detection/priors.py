"""Anchor boxes (priors) for an input size, in the order of the network's output rows.

Same values and order as biubug6 ``layers/functions/prior_box.py``: per feature map (stride 8, 16, 32),
row-major over cells, then each ``min_size`` of that map; ``(cx, cy, w, h)`` normalised by the input
width and height. Vectorised instead of the reference's Python loops.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from retinaface_export.anchors import AnchorConfig


@lru_cache(maxsize=32)
def prior_boxes(anchors: AnchorConfig, height: int, width: int) -> np.ndarray:
    """Priors for an ``height`` × ``width`` input: float32 A×4 ``(cx, cy, w, h)`` in [0, 1] units (read-only)."""
    levels = []
    for step, min_sizes in zip(anchors.steps, anchors.min_sizes, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid(
            (np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width, indexing="ij"
        )
        per_size = [
            np.stack([cx, cy, np.full_like(cx, m / width), np.full_like(cy, m / height)], axis=-1) for m in min_sizes
        ]
        # (rows, cols, sizes, 4): cell-major, then anchor size, as the heads' N×H×W×(anchors·k) reshape
        levels.append(np.stack(per_size, axis=2).reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32)
    priors.flags.writeable = False
    return priors
