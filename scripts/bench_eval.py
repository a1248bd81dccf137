"""Time the vectorised WIDER FACE evaluation against a slow transcription of the reference.

Both score the same deterministic prediction set over the full validation ground truth; prints medians and
the ratio, and checks the APs agree to 1e-6. The transcription is ``widerface_reference.py`` beside this file.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from widerface_reference import reference_evaluate  # beside this script (its folder is on sys.path)

from retinaface_export.evaluation import bbox_overlaps, evaluate
from retinaface_export.widerface import GroundTruth, load_ground_truth

REPO = Path(__file__).resolve().parents[1]


def jittered_predictions(truth: GroundTruth, seed: int) -> list[np.ndarray]:
    """Per image N×5 (x y w h score), best first: jittered copies of ~70% of the faces and a few false alarms.

    Scores have two decimals, so many tie; one image in ten has no predictions.
    """
    rng = np.random.default_rng(seed)
    predictions = []
    for boxes in truth.boxes:
        if rng.random() < 0.1:
            predictions.append(np.zeros((0, 5)))
            continue
        hits = boxes[rng.random(len(boxes)) < 0.7] if len(boxes) else np.zeros((0, 4))
        hits = hits + rng.normal(0, 0.08, hits.shape) * np.repeat(hits[:, 2:], 2, axis=1)
        false = rng.uniform(5, 400, (rng.integers(0, 8), 4))
        rows = np.vstack([hits, false])
        scores = np.round(rng.uniform(0, 1, len(rows)), 2)
        order = np.argsort(-scores, kind="stable")
        predictions.append(np.column_stack([rows, scores])[order])
    return predictions


def main() -> int:
    """Run the fast one five times and each slow one once on the full set; print times and ratios."""
    truth = load_ground_truth(REPO.parent / "shared" / "widerface" / "ground_truth")
    preds = jittered_predictions(truth, 9)
    fast_times = []
    for _ in range(5):
        start = time.perf_counter()
        fast = evaluate(preds, truth)
        fast_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    slow = reference_evaluate(preds, truth.boxes, truth.keep, overlaps_fn=bbox_overlaps)
    slow_time = time.perf_counter() - start
    start = time.perf_counter()
    pure = reference_evaluate(preds, truth.boxes, truth.keep)
    pure_time = time.perf_counter() - start
    worst = max(max(abs(fast[s] - slow[s]), abs(fast[s] - pure[s])) for s in fast)
    fast_median = statistics.median(fast_times)
    print(f"{len(truth.images)} images, {sum(len(p) for p in preds)} predictions")
    print(f"vectorised: median {fast_median:.2f} s of 5")
    print(
        f"reference loops, vectorised overlaps (stands in for its Cython kernel): {slow_time:.1f} s, "
        f"{slow_time / fast_median:.0f}x"
    )
    print(f"reference loops, element-by-element overlaps: {pure_time:.1f} s, {pure_time / fast_median:.0f}x")
    print(f"max AP difference {worst:.1e}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
