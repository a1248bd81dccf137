"""Typed verification records: every kind the pipeline writes reads back and summarises in one cell."""

import numpy as np
import pytest

from retinaface_export.comparison import Case, compare_detections, compare_outputs
from retinaface_export.precision import PRECISIONS
from retinaface_export.records import NOT_VERIFIED, Verification, VerificationKind

RAW = [np.zeros((1, 4, 4), np.float32), np.full((1, 4, 2), 0.5, np.float32), np.ones((1, 4, 10), np.float32)]


def _tensor_record():
    shifted = [RAW[0] + 2e-5, RAW[1], RAW[2]]
    return compare_outputs([Case("case", RAW, shifted)], PRECISIONS["fp32"]).record() | {"reference": "PyTorch"}


def _detection_record():
    rows = np.zeros((1, 3, 15), np.float32)
    rows[0, 0, :5] = [10, 10, 50, 50, 0.9]
    count = np.array([1], np.int64)
    return compare_detections([Case("case", [rows, count], [rows, count])], PRECISIONS["fp32"]).record() | {
        "reference": "PyTorch + numpy nms"
    }


INT8 = {"kind": "detections", "photos": "validation", "samples": 12, "f1": 0.981, "passed": True, "reference": "x"}


@pytest.mark.parametrize(
    "record, summary",
    [
        (_tensor_record(), "max |Δ| 2.0e-05"),
        (_detection_record(), "F1 1.000 (1 faces)"),
        (INT8, "F1 0.981 on 12 held-out views"),
        (INT8 | {"passed": False}, "F1 0.981 on 12 held-out views (misses --max-f1-drop, kept)"),
        (
            INT8 | {"held_out_views": {"f1": 0.975, "samples": 8}},
            "F1 0.981 on 12 held-out views, 0.975 on 8 stretched/scaled",
        ),
        (NOT_VERIFIED.record(), "not verified"),
    ],
)
def test_every_kind_reads_back_and_summarises(record, summary):
    checked = Verification.from_record(record)
    assert checked.summary() == summary
    assert checked.record() == record  # nothing lost on the way through the type


def test_kinds_are_the_words_the_manifest_uses():
    assert Verification.from_record(_tensor_record()).kind is VerificationKind.TENSORS
    assert Verification.from_record(_detection_record()).kind is VerificationKind.DETECTIONS
    with pytest.raises(ValueError):
        Verification.from_record({"kind": "vibes", "passed": True})


def _detections(*faces):
    """An nms output of one image: rows (box, score, landmarks) best first, and the count."""
    rows = np.zeros((1, 4, 15), np.float32)
    for index, (x, score) in enumerate(faces):
        rows[0, index, :5] = [x, 10, x + 40, 50, score]
    return [rows, np.array([len(faces)], np.int64)]


@pytest.mark.parametrize(
    "candidate, fp32, bf16",
    [
        # a face just above the artifact's threshold (0.02) on one side only: its score crossed the threshold
        (_detections((0, 0.9), (100, 0.8)), False, True),
        # a confident face missing is a miss at every precision
        (_detections((0, 0.9), (200, 0.025)), False, False),
        (_detections((0, 0.9), (100, 0.8), (200, 0.025)), True, True),
    ],
)
def test_nms_outputs_tolerate_faces_at_the_threshold_by_the_precisions_margin(candidate, fp32, bf16):
    reference = _detections((0, 0.9), (100, 0.8), (200, 0.025))
    cases = [Case("case", reference, candidate)]
    assert compare_detections(cases, PRECISIONS["fp32"], score_floor=0.02).passed is fp32
    verdict = compare_detections(cases, PRECISIONS["bf16"], score_floor=0.02)
    assert verdict.passed is bf16
    assert "may be missing" in verdict.record()["rule"]
