"""Time the vectorised WIDER FACE evaluation against the slow transcription of the reference (tests/).

Both score the same deterministic prediction set over the full validation ground truth; prints medians and
the ratio, and checks the APs agree to 1e-6.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reference_evaluation import reference_evaluate  # noqa: E402
from test_evaluation import random_predictions  # noqa: E402

from retinaface_export.evaluation import bbox_overlaps, evaluate  # noqa: E402
from retinaface_export.widerface import load_ground_truth  # noqa: E402


def main() -> int:
    """Run the fast one five times and each slow one once on the full set; print times and ratios."""
    truth = load_ground_truth(REPO.parent / "shared" / "widerface" / "ground_truth")
    preds = random_predictions(truth, 9)
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
