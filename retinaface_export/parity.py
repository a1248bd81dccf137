"""Parity: run every artifact of an export folder on golden inputs and compare with PyTorch's outputs.

Tensor level for FP32/FP16 (per output max abs error, and as a fraction of the output's range, at the
golden's sampled rows), detection level for every precision (decode + NMS, greedy IoU matching, F1,
mean IoU, landmark error); INT8 is judged on detections only. Every problem is collected and reported
per artifact; nothing to compare, a missing runtime, NaN/Inf or an unknown checkpoint is a failure too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.comparison import Case, OutputVerdict, compare_outputs
from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.detection.compare import compare_faces, tolerant_f1
from retinaface_export.detection.faces import faces_from_arrays
from retinaface_export.detection.modes import image_faces
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.errors import RetinaFaceExportError, UsageError
from retinaface_export.formats import FORMATS
from retinaface_export.golden import FACE_THRESHOLD, GoldenCase, GoldenSet, decode_faces, prepared_input
from retinaface_export.inference.backends import artifact_backend
from retinaface_export.manifest import ArtifactRecord, Manifest, check_files
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.provenance import provenance_problems


@dataclass
class DetectionCheck:
    """Faces of one artifact against the golden faces, worst over the cases."""

    f1: float = 1.0
    strict_f1: float = 1.0
    mean_iou: float = 1.0
    max_landmark_px: float = 0.0
    faces: int = 0
    min_f1: float = 0.0
    score_margin: float = 0.0
    passed: bool = True


@dataclass
class ArtifactParity:
    """The verdict on one artifact."""

    path: str
    format: str
    precision: str
    input_format: str
    size: str
    cases: int = 0
    # the tolerance's rule in words ("detections only" for INT8)
    limit: str = ""
    outputs: list[OutputVerdict] = field(default_factory=list)
    detection: DetectionCheck | None = None
    failures: list[str] = field(default_factory=list)
    # golden cases not run: photo cases when no --images folder was given
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No failure recorded."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "format": self.format,
            "precision": self.precision,
            "input_format": self.input_format,
            "size": self.size,
            "cases": self.cases,
            "limit": self.limit,
            "passed": self.passed,
            "outputs": [o.__dict__ for o in self.outputs],
            "detection": self.detection.__dict__ if self.detection else None,
            "failures": self.failures,
            "skipped": self.skipped,
        }


@dataclass
class ParityReport:
    """Every artifact's verdict, and failures that concern the run as a whole."""

    export_dir: Path
    golden: str | None
    artifacts: list[ArtifactParity] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True only when there was something to compare and all of it passed."""
        return not self.failures and bool(self.artifacts) and all(a.passed for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "export_dir": str(self.export_dir),
            "golden": self.golden,
            "passed": self.passed,
            "failures": self.failures,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


def _cases_for(golden: GoldenSet, artifact: ArtifactRecord) -> list[GoldenCase]:
    if artifact.dynamic:
        return list(golden.cases)
    return [case for case in golden.cases if (case.size.height, case.size.width) == artifact.size]


def _compare_case(
    result: ArtifactParity, case: GoldenCase, outputs: list[np.ndarray], golden: GoldenSet, spec: PostprocessSpec
) -> None:
    tolerance = PRECISIONS[result.precision]
    label = f"{case.input.name}@{case.size}"
    threshold = FACE_THRESHOLD - tolerance.score_margin - 1e-6
    if not spec.raw:  # post-processing inside: judged on its faces against the golden faces
        config = DetectionConfig(score_threshold=threshold)
        try:
            found = image_faces([out[None] for out in outputs], 0, spec, golden.anchors, *case.size.as_list(), config)
        except (UsageError, ValueError) as exc:
            result.failures.append(f"cannot compare with the golden faces: {exc}")
            return
        _compare_faces(result, case, faces_from_arrays(*found), tolerance, label)
        return
    for name, out in zip(OUTPUT_NAMES, outputs, strict=True):
        if len(out) <= int(case.rows.max()):
            result.failures.append(f"{name}: {len(out)} rows on {label}, the golden has more")
            return
    verdict = compare_outputs([Case(label, case.outputs, [out[case.rows] for out in outputs], case.ranges)], tolerance)
    for worst, now in zip(result.outputs, verdict.outputs, strict=True):
        worst.max_abs, worst.max_of_range = max(worst.max_abs, now.max_abs), max(worst.max_of_range, now.max_of_range)
        worst.max_excess, worst.passed = max(worst.max_excess, now.max_excess), worst.passed and now.passed
    result.failures += verdict.failures
    if not all(np.isfinite(out).all() for out in outputs):
        return
    _compare_faces(result, case, decode_faces(outputs, golden.anchors, case.size, threshold), tolerance, label)


def _compare_faces(result: ArtifactParity, case: GoldenCase, faces: list, tolerance, label: str) -> None:
    strong = [f for f in case.faces if f.score > FACE_THRESHOLD]
    strict = compare_faces(strong, [f for f in faces if f.score > FACE_THRESHOLD])
    f1 = tolerant_f1(case.faces, faces, FACE_THRESHOLD, tolerance.score_margin)
    detection = result.detection
    assert detection is not None
    detection.f1, detection.strict_f1 = min(detection.f1, f1), min(detection.strict_f1, strict.f1)
    detection.faces += len(strong)
    if strict.matched:
        detection.mean_iou = min(detection.mean_iou, strict.mean_iou)
        detection.max_landmark_px = max(detection.max_landmark_px, strict.max_landmark_error_px)
    if f1 < tolerance.min_f1:
        detection.passed = False
        result.failures.append(
            f"detections: F1 {f1:.3f} < {tolerance.min_f1} on {label} (strict {strict.f1:.3f}, "
            f"{len(strong)} golden faces)"
        )


def check_artifact(
    export_dir: Path,
    artifact: ArtifactRecord,
    golden: GoldenSet,
    image_dirs: list[Path],
    checkpoint: dict[str, Any],
) -> ArtifactParity:
    """Parity of one manifest entry against ``golden``.

    ``checkpoint`` is the manifest's checkpoint record: every entry of the artifact's provenance is compared
    with the manifest (anchors, digests, variant, post-processing, INT8 record, OpenVINO's mean), not only
    what describes the file (format, precision, size, batch, input format).
    """
    tolerance = PRECISIONS[artifact.precision]
    result = ArtifactParity(
        path=artifact.path,
        format=artifact.format,
        precision=artifact.precision,
        input_format=artifact.input_format,
        size=artifact.size_label,
        limit=tolerance.describe() if PostprocessSpec.from_record(artifact.postprocess).raw else "detections only",
        outputs=[OutputVerdict(name) for name in OUTPUT_NAMES],
        detection=DetectionCheck(min_f1=tolerance.min_f1, score_margin=tolerance.score_margin),
    )
    try:
        path = check_files(export_dir, artifact)
        blocks = FORMATS[artifact.format].provenance_blocks(path)
        result.failures += provenance_problems(artifact.to_dict(), blocks, checkpoint)
    except RetinaFaceExportError as exc:
        result.failures.append(getattr(exc, "reason", str(exc)))
    except Exception as exc:  # each runtime's reader fails in its own types on a damaged file
        result.failures.append(f"cannot read its provenance: {type(exc).__name__}: {exc}")
    cases = _cases_for(golden, artifact)
    if not cases:
        result.failures.append(
            f"the golden set has no input at size {result.size}: nothing to compare. Record one with: retinaface-"
            f"golden record --weights CHECKPOINT --size {result.size} --output-dir DIR, then pass --golden DIR"
        )
    if result.failures:
        return result
    try:
        backend = artifact_backend(export_dir / artifact.path)
    except RetinaFaceExportError as exc:
        result.failures.append(f"cannot open: {getattr(exc, 'reason', exc)}")
        return result
    except ImportError as exc:
        result.failures.append(f"runtime missing: {exc}")
        return result
    for case in cases:
        if case.input.photo is not None and not image_dirs:
            result.skipped.append(f"{case.input.name}@{case.size}")
            continue
        try:
            canvas = prepared_input(case, image_dirs)
        except RetinaFaceExportError as exc:
            result.failures.append(str(exc))
            continue
        batch = np.stack([canvas] * (backend.batch or 1))
        try:
            outputs = [out[0] for out in backend.run(backend.prepare(batch))]
        except Exception as exc:  # any runtime error on a golden input is this artifact's failure
            result.failures.append(f"failed to run on {case.input.name}@{case.size}: {type(exc).__name__}: {exc}")
            continue
        result.cases += 1
        _compare_case(result, case, outputs, golden, backend.postprocess)
    if result.cases == 0 and not result.failures:
        result.failures.append("every golden case needs a photo: nothing compared (pass --images DIR)")
    return result


def packaged_golden_root() -> Path:
    """The golden sets that ship with the package (``golden/`` of the repository)."""
    from importlib.resources import files

    return Path(str(files("retinaface_export.goldens")))


def run_parity(export_dir: str | Path, goldens: list[GoldenSet], image_dirs: list[Path]) -> ParityReport:
    """Check every artifact in ``export_dir``'s manifest against the golden set of its checkpoint.

    Raises:
        ManifestError: no readable manifest in ``export_dir``.
    """
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    digest = manifest.checkpoint.get("state_dict_sha256")
    matching = [g for g in goldens if g.checkpoint.get("state_dict_sha256") == digest]
    report = ParityReport(export_dir, str(matching[0].folder) if matching else None)
    if not matching:
        known = ", ".join(f"{g.folder.name} ({str(g.checkpoint.get('state_dict_sha256'))[:12]})" for g in goldens)
        report.failures.append(
            f"no golden set for checkpoint {manifest.checkpoint.get('variant')} (state dict sha256 "
            f"{str(digest)[:12]}); golden sets found: {known or 'none'}. Record one with: retinaface-golden record "
            f"--weights CHECKPOINT --output-dir DIR, then pass --golden DIR"
        )
        return report
    if not manifest.artifacts:
        report.failures.append("the manifest lists no artifacts: nothing to compare")
    for artifact in sorted(manifest.artifacts, key=lambda a: a.path):
        report.artifacts.append(check_artifact(export_dir, artifact, matching[0], image_dirs, manifest.checkpoint))
    return report
