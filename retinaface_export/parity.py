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

from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.detection.backends import artifact_backend
from retinaface_export.detection.compare import compare_faces, tolerant_f1
from retinaface_export.errors import RetinaFaceExportError
from retinaface_export.formats import FORMATS, PRECISIONS, allowed_abs_error
from retinaface_export.golden import FACE_THRESHOLD, GoldenCase, GoldenSet, decode_faces, prepared_input
from retinaface_export.hashing import sha256_file
from retinaface_export.manifest import Manifest
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT


@dataclass
class OutputCheck:
    """One output of one artifact against the golden rows, worst over the cases."""

    name: str
    max_abs: float = 0.0
    max_of_range: float = 0.0
    # worst |Δ| / (atol + rtol·range) for tiers judged that way (at most 1 passes)
    max_excess: float = 0.0
    limit: str = ""
    passed: bool = True


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
    outputs: list[OutputCheck] = field(default_factory=list)
    detection: DetectionCheck | None = None
    failures: list[str] = field(default_factory=list)

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
            "passed": self.passed,
            "outputs": [o.__dict__ for o in self.outputs],
            "detection": self.detection.__dict__ if self.detection else None,
            "failures": self.failures,
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


def _file_problems(export_dir: Path, artifact: dict[str, Any]) -> list[str]:
    entries = [{"path": artifact["path"], "sha256": artifact["sha256"]}, *artifact.get("companions", [])]
    problems = []
    for entry in entries:
        path = export_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: listed in the manifest but missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: altered since it was written (sha256 differs from the manifest)")
    return problems


def _cases_for(golden: GoldenSet, artifact: dict[str, Any]) -> list[GoldenCase]:
    if artifact.get("dynamic"):
        return list(golden.cases)
    return [case for case in golden.cases if case.size.as_list() == artifact["size"]]


def _compare_case(result: ArtifactParity, case: GoldenCase, outputs: list[np.ndarray], golden: GoldenSet) -> None:
    tolerance = PRECISIONS[result.precision]
    label = f"{case.input.name}@{case.size}"
    for index, (name, out) in enumerate(zip(OUTPUT_NAMES, outputs, strict=True)):
        if not np.isfinite(out).all():
            result.failures.append(f"{name}: NaN or Inf on {label}")
            return
        if len(out) <= int(case.rows.max()):
            result.failures.append(f"{name}: {len(out)} rows on {label}, the golden has more")
            return
        if tolerance.atol is None and tolerance.range_fraction is None:
            continue  # judged on detections only (INT8)
        check = result.outputs[index]
        got = out[case.rows]
        error = float(np.max(np.abs(got - case.outputs[index])))
        fraction = error / (case.ranges[index] or 1.0)
        check.max_abs, check.max_of_range = max(check.max_abs, error), max(check.max_of_range, fraction)
        if tolerance.atol is not None:
            allowed = allowed_abs_error(tolerance, case.ranges[index])
            check.max_excess = max(check.max_excess, error / allowed)
            if not error <= allowed:
                check.passed = False
                result.failures.append(
                    f"{name}: max abs error {error:.2e} > {allowed:.2e} (= {tolerance.atol:g} + "
                    f"{tolerance.rtol:g} × range {case.ranges[index]:.1f}) on {label}"
                )
        if tolerance.range_fraction is not None and not fraction <= tolerance.range_fraction:
            check.passed = False
            result.failures.append(f"{name}: error {fraction:.1%} of range > {tolerance.range_fraction:.0%} on {label}")
    faces = decode_faces(outputs, golden.anchors, case.size, FACE_THRESHOLD - tolerance.score_margin - 1e-6)
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
    export_dir: Path, artifact: dict[str, Any], golden: GoldenSet, image_dirs: list[Path]
) -> ArtifactParity:
    """Parity of one manifest entry against ``golden``."""
    precision = artifact.get("precision", "fp32")
    result = ArtifactParity(
        path=artifact["path"],
        format=artifact["format"],
        precision=precision,
        input_format=artifact.get("input_format", DEFAULT_INPUT_FORMAT),
        size="dynamic" if artifact.get("dynamic") else "x".join(map(str, artifact["size"])),
    )
    if precision not in PRECISIONS or artifact["format"] not in FORMATS:
        result.failures.append(f"unknown format/precision {artifact['format']}/{precision}")
        return result
    result.outputs = [OutputCheck(name) for name in OUTPUT_NAMES]
    tolerance = PRECISIONS[precision]
    limit = (
        f"≤ {tolerance.atol:g}"
        if tolerance.atol is not None
        else (
            f"≤ {tolerance.range_fraction:.0%} of range" if tolerance.range_fraction is not None else "detections only"
        )
    )
    for check in result.outputs:
        check.limit = limit
    result.detection = DetectionCheck(min_f1=tolerance.min_f1, score_margin=tolerance.score_margin)
    result.failures += _file_problems(export_dir, artifact)
    cases = _cases_for(golden, artifact)
    if not cases:
        result.failures.append(f"the golden set has no input at size {result.size}: nothing to compare")
    if result.failures:
        return result
    try:
        backend = artifact_backend(export_dir / artifact["path"])
    except RetinaFaceExportError as exc:
        result.failures.append(f"cannot open: {exc}")
        return result
    except ImportError as exc:
        result.failures.append(f"runtime missing: {exc}")
        return result
    for case in cases:
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
        _compare_case(result, case, outputs, golden)
    return result


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
            f"{str(digest)[:12]}); golden sets found: {known or 'none'}"
        )
        return report
    if not manifest.artifacts:
        report.failures.append("the manifest lists no artifacts: nothing to compare")
    for artifact in sorted(manifest.artifacts, key=lambda a: a["path"]):
        report.artifacts.append(check_artifact(export_dir, artifact, matching[0], image_dirs))
    return report
