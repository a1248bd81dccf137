"""Precisions and how close an artifact of each must stay to its FP32 reference: the one table of tolerances.

Verification, conversion checks, onnxsim's own check and parity all read :data:`PRECISIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact of one precision must stay to its FP32 reference."""

    # max |artifact - reference| <= atol + rtol * (the reference output's range, max - min), or None when not
    # judged on tensors this way. Float32 accumulation-order noise scales with a tensor's magnitude, not with
    # each element: rtol lets ~1e-5-relative noise on landmarks (range ~20) pass, while a 1% weight change
    # (errors ~1e-2) still fails by two orders of magnitude.
    atol: float | None
    rtol: float
    # Largest |artifact - reference| as a fraction of the reference output's range (max - min).
    range_fraction: float | None
    # Smallest detection F1 against the reference's faces (score > 0.5, IoU >= 0.5) ...
    min_f1: float
    # ... where a face above 0.5 on one side is matched by a face above 0.5 - score_margin on the other:
    # a face scored 0.507 by FP32 and 0.49 by INT8 is the same face, not a miss and a false alarm.
    score_margin: float
    # Largest mean |artifact - reference| as a fraction of the reference output's range, or None. bf16 keeps
    # 8 bits of mantissa: a few outputs of a deep network land far off (max up to ~40% of range on photos,
    # on low-score anchors), while the bulk stays within ~0.6%; the mean is what catches a broken graph.
    mean_range_fraction: float | None = None
    # Judged on photos with faces besides the synthetic verification inputs: strict detection F1 (no
    # score margin) against the FP32 source at or above min_f1 on the --validation photos.
    needs_photos: bool = False

    @property
    def judges_tensors(self) -> bool:
        """False for precisions judged on detections only (INT8)."""
        return self.atol is not None or self.range_fraction is not None

    def allowed(self, output_range: float) -> float:
        """The largest abs error allowed on an output whose reference spans ``output_range``."""
        if self.atol is not None:
            return self.atol + self.rtol * output_range
        if self.range_fraction is not None:
            return self.range_fraction * (output_range or 1.0)
        return float("inf")

    def describe(self) -> str:
        """The rule in words, for tables and messages."""
        if self.atol is not None:
            return f"≤ {self.atol:g} + {self.rtol:g}×range"
        if self.range_fraction is not None:
            mean = f", mean ≤ {self.mean_range_fraction:.0%}" if self.mean_range_fraction is not None else ""
            return f"≤ {self.range_fraction:.0%} of range{mean}"
        return "detections only"


PRECISIONS: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5, range_fraction=None, min_f1=0.99, score_margin=0.0),
    "fp16": Tolerance(atol=None, rtol=0.0, range_fraction=0.03, min_f1=0.95, score_margin=0.02),
    "bf16": Tolerance(
        atol=None,
        rtol=0.0,
        range_fraction=0.3,
        min_f1=0.99,
        score_margin=0.02,
        mean_range_fraction=0.01,
        needs_photos=True,
    ),
    "int8": Tolerance(atol=None, rtol=0.0, range_fraction=None, min_f1=0.95, score_margin=0.1),
}
