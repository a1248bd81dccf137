"""Typed records of one built artifact: how it was verified (:class:`Verification`) and the build's result.

The manifest keeps them as JSON objects (``verification``, ``conversion``); code that reads them goes
through these types, so a kind of record no reader knows is one place to teach, not a ``KeyError`` in a
summary table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class VerificationKind(StrEnum):
    """How an artifact was judged before it was committed."""

    # tensor by tensor against the reference's outputs (raw and decoded outputs, FP32/FP16)
    TENSORS = "tensors"
    # face by face: an nms artifact's detections, or INT8's strict F1 on validation photos
    DETECTIONS = "detections"
    # built with verification off (benchmarks of the build alone)
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Verification:
    """One artifact's verification: its kind, verdict and reference, and the kind's own figures.

    ``details`` holds the rest of the record as written: ``max_abs_error`` per output (tensors); ``f1``,
    ``reference_faces`` or ``samples`` (detections); ``executed`` where the runtime chose a precision.
    """

    kind: VerificationKind
    passed: bool
    reference: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Verification:
        """Back from :meth:`record` (a manifest row's ``verification``)."""
        details = {k: v for k, v in record.items() if k not in ("kind", "passed", "reference")}
        return cls(VerificationKind(record["kind"]), bool(record["passed"]), str(record.get("reference", "")), details)

    def record(self) -> dict[str, Any]:
        """The manifest's JSON object."""
        return {"kind": self.kind.value, **self.details, "passed": self.passed, "reference": self.reference}

    def summary(self) -> str:
        """The verdict in a few words, for summary tables: ``max |Δ| 1.2e-05``, ``F1 1.000 (6 faces)``."""
        if self.kind is VerificationKind.SKIPPED:
            return "not verified"
        if self.kind is VerificationKind.TENSORS:
            errors = list(self.details.get("max_abs_error", {}).values())
            text = f"max |Δ| {max(errors):.1e}" if errors else "max |Δ| -"
            photos = self.details.get("detections")  # bf16: also judged by its faces on photos
            if photos:
                text += f", F1 {photos['f1']:.3f} on {photos['samples']} views"
            if self.details.get("not_checked"):
                text += " (ran in f32 here)"
            return text
        text = f"F1 {self.details['f1']:.3f}"
        if self.details.get("photos") == "validation":  # INT8: judged on photos calibration never saw
            text += f" on {self.details['samples']} held-out views"
            unseen = self.details.get("held_out_views")  # views accuracy control never fitted on
            if unseen:
                text += f", {unseen['f1']:.3f} on {unseen['samples']} stretched/scaled"
            return text if self.passed else text + " (misses --max-f1-drop, kept)"
        faces = self.details.get("reference_faces")
        return text + (f" ({faces} faces)" if faces is not None else "")


# The verification record of an artifact built with verification turned off.
NOT_VERIFIED = Verification(VerificationKind.SKIPPED, False, "none: built with verify=False")


@dataclass(frozen=True)
class Built:
    """What building one artifact in the staging folder gave: its verification and its conversion record.

    ``conversion`` is the format's own report (onnxsim's node counts, INT8's photo sets and accuracy, an
    IR's precision marks), kept as the format wrote it; :meth:`ArtifactFormat.describe_conversion` reads it.
    """

    verification: Verification
    conversion: dict[str, Any] = field(default_factory=dict)
