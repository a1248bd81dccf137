"""The one tensor comparison: reference outputs against a candidate's, judged by a precision's tolerance.

Export verification (artifact against PyTorch eager), every conversion check (converted artifact against
its source, onnxsim's graph against the original) and parity (artifact against golden rows) call
:func:`compare_outputs`, so an FP32 artifact is held to the same rule everywhere:
``max |candidate - reference| <= atol + rtol × (reference max - reference min)`` per output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.detection.compare import compare_faces, tolerant_f1
from retinaface_export.detection.faces import faces_from_arrays
from retinaface_export.postprocess.settings import split_detections
from retinaface_export.precision import Tolerance


@dataclass
class OutputVerdict:
    """One output, worst over every case compared."""

    name: str
    max_abs: float = 0.0
    # max_abs as a fraction of the reference's range
    max_of_range: float = 0.0
    # worst |Δ| / allowed (at most 1 passes)
    max_excess: float = 0.0
    # worst mean |Δ| as a fraction of the reference's range (judged where the tolerance bounds it)
    mean_of_range: float = 0.0
    passed: bool = True


@dataclass
class TensorVerdict:
    """Every output's verdict and the failures, each naming the output, the error and the limit."""

    tolerance: Tolerance
    outputs: list[OutputVerdict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cases: int = 0

    @property
    def passed(self) -> bool:
        """Something was compared and nothing failed."""
        return self.cases > 0 and not self.failures

    def max_abs_errors(self) -> dict[str, float]:
        """``{output name: worst abs error}``."""
        return {o.name: o.max_abs for o in self.outputs}

    def record(self) -> dict[str, object]:
        """What a manifest keeps of it."""
        return {
            "kind": "tensors",
            "rule": self.tolerance.describe(),
            "cases": self.cases,
            "max_abs_error": self.max_abs_errors(),
            "max_error_of_range": {o.name: o.max_of_range for o in self.outputs},
            "max_excess": {o.name: o.max_excess for o in self.outputs},
            **(
                {"mean_error_of_range": {o.name: o.mean_of_range for o in self.outputs}}
                if self.tolerance.mean_range_fraction is not None
                else {}
            ),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Case:
    """One input's reference and candidate outputs; ``ranges`` when the reference holds sampled rows only."""

    label: str
    reference: Sequence[np.ndarray]
    candidate: Sequence[np.ndarray]
    ranges: Sequence[float] | None = None


def compare_outputs(cases: Iterable[Case], tolerance: Tolerance, names: Sequence[str] = OUTPUT_NAMES) -> TensorVerdict:
    """Judge a candidate's outputs against the reference's over ``cases``, collecting every failure.

    A shape that differs, or NaN/Inf in the candidate, fails that output whatever the tolerance. Outputs of
    a precision judged on detections only are checked for shape and finiteness alone.
    """
    verdict = TensorVerdict(tolerance, [OutputVerdict(name) for name in names])
    for case in cases:
        verdict.cases += 1
        for index, (out, reference, candidate) in enumerate(
            zip(verdict.outputs, case.reference, case.candidate, strict=True)
        ):
            candidate = np.asarray(candidate)
            if candidate.shape != reference.shape:
                out.passed = False
                verdict.failures.append(
                    f"{out.name} has shape {candidate.shape}, the reference {reference.shape} on {case.label}"
                )
                continue
            if not np.isfinite(candidate).all():
                out.passed, out.max_abs, out.max_excess = False, float("inf"), float("inf")
                verdict.failures.append(f"{out.name}: NaN or Inf on {case.label}")
                continue
            if not tolerance.judges_tensors:
                continue
            span = float(case.ranges[index]) if case.ranges is not None else float(reference.max() - reference.min())
            error = float(np.max(np.abs(candidate - reference))) if reference.size else 0.0
            allowed = tolerance.allowed(span)
            out.max_abs = max(out.max_abs, error)
            out.max_of_range = max(out.max_of_range, error / (span or 1.0))
            out.max_excess = max(out.max_excess, error / allowed)
            if not error <= allowed:
                out.passed = False
                verdict.failures.append(
                    f"{out.name}: max abs error {error:.2e} > {allowed:.2e} ({tolerance.describe()}, "
                    f"range {span:.3g}) on {case.label}"
                )
            if tolerance.mean_range_fraction is not None and reference.size:
                mean = float(np.mean(np.abs(candidate - reference))) / (span or 1.0)
                out.mean_of_range = max(out.mean_of_range, mean)
                if not mean <= tolerance.mean_range_fraction:
                    out.passed = False
                    verdict.failures.append(
                        f"{out.name}: mean abs error {mean:.2%} of range > {tolerance.mean_range_fraction:.0%} "
                        f"on {case.label}"
                    )
    return verdict


@dataclass
class DetectionVerdict:
    """Faces out of ``nms`` artifacts (``detections``, ``num_detections``) against the reference's faces."""

    tolerance: Tolerance
    # the artifact's own score threshold: both sides hold the faces above it
    score_floor: float = 0.0
    failures: list[str] = field(default_factory=list)
    cases: int = 0
    f1: float = 1.0
    reference_faces: int = 0
    mean_iou: float = 1.0
    max_landmark_px: float = 0.0

    @property
    def passed(self) -> bool:
        """Something was compared and nothing failed."""
        return self.cases > 0 and not self.failures

    def rule(self) -> str:
        """The rule in words."""
        margin = self.tolerance.score_margin
        if not margin:
            return f"F1 ≥ {self.tolerance.min_f1} (IoU ≥ 0.5)"
        return (
            f"F1 ≥ {self.tolerance.min_f1} (IoU ≥ 0.5), a face scoring up to {margin:g} above the artifact's "
            f"threshold {self.score_floor:g} may be missing on the other side"
        )

    def record(self) -> dict[str, object]:
        """What a manifest keeps of it."""
        return {
            "kind": "detections",
            "rule": self.rule(),
            "cases": self.cases,
            "f1": self.f1,
            "reference_faces": self.reference_faces,
            "mean_iou": self.mean_iou,
            "max_landmark_px": self.max_landmark_px,
            "passed": self.passed,
        }


def compare_detections(cases: Iterable[Case], tolerance: Tolerance, score_floor: float = 0.0) -> DetectionVerdict:
    """Judge ``nms`` outputs face by face: F1 of IoU ≥ 0.5 matches per image, worst over images and cases.

    ``score_floor`` is the artifact's own score threshold (both sides hold the faces above it). With the
    precision's score margin, a face within the margin above the floor on one side may be missing on the other
    (its score crossed the floor): a face scoring more is found by any face on the other side. With no margin
    (FP32) every face counts.
    """
    verdict = DetectionVerdict(tolerance, score_floor=score_floor)
    for case in cases:
        verdict.cases += 1
        try:
            found = split_detections(np.asarray(case.candidate[0]), np.asarray(case.candidate[1]))
        except ValueError as exc:
            verdict.failures.append(f"detections on {case.label}: {exc}")
            continue
        expected = split_detections(np.asarray(case.reference[0]), np.asarray(case.reference[1]))
        for image, (want, got) in enumerate(zip(expected, found, strict=True)):
            if not all(np.isfinite(part).all() for part in got):
                verdict.failures.append(f"detections: NaN or Inf on {case.label} image {image}")
                continue
            wanted, found_faces = faces_from_arrays(*want), faces_from_arrays(*got)
            agreement = compare_faces(wanted, found_faces)
            margin = tolerance.score_margin
            f1 = tolerant_f1(wanted, found_faces, score_floor + margin, margin) if margin else agreement.f1
            verdict.reference_faces += len(want[1])
            verdict.f1 = min(verdict.f1, f1)
            if agreement.matched:
                verdict.mean_iou = min(verdict.mean_iou, agreement.mean_iou)
                verdict.max_landmark_px = max(verdict.max_landmark_px, agreement.max_landmark_error_px)
            if f1 < tolerance.min_f1:
                verdict.failures.append(
                    f"detections: F1 {f1:.3f} < {tolerance.min_f1} on {case.label} image {image} "
                    f"({len(want[1])} reference faces, {len(got[1])} found)"
                )
    return verdict
