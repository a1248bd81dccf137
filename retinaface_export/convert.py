"""Convert an export folder's artifacts into the formats made from them (simplified ONNX, OpenVINO IR, ...).

Reads ``EXPORT_DIR/manifest.json``, checks every source file against its recorded sha256, plans one job
per source and precision, and hands each to its format's converter; each result is verified against its
source run by ONNX Runtime (tensors for FP32/FP16 by the one comparison, detections for INT8) before it is
committed with the manifest.

Work is done once where it can be: each source runs in ONNX Runtime once per size and batch for all the
checks of its conversions, and converters share work through the run's cache (OpenVINO converts each
distinct graph once and reshapes it per size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.calibration import CalibrationSet, load_calibration_set
from retinaface_export.errors import ManifestError, UsageError
from retinaface_export.format_api import ConvertInputs, Job
from retinaface_export.formats import FORMATS, PRECISIONS, convert_targets
from retinaface_export.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, check_files
from retinaface_export.pipeline import (
    NOT_VERIFIED,
    Made,
    RunResult,
    artifact_provenance,
    run_builds,
    verification_batches,
    verification_photos,
    verify_tensors,
)
from retinaface_export.postprocess_settings import PostprocessSpec
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS, to_network_input
from retinaface_export.sizes import InputSize
from retinaface_export.workers import OnceCache

log = logging.getLogger(__name__)

# Kept for callers of the earlier API: the result of a conversion.
ConvertResult = RunResult
# How many calibration photos the INT8 detection check runs on (originals, no augmentation).
_INT8_CHECK_IMAGES = 4
# Sizes a dynamic source's conversion is verified at (the first of the source's verified sizes).
_DYNAMIC_CHECK_SIZES = 2


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert to. ``sizes`` empty: every fixed-size and dynamic source artifact."""

    target: str
    precisions: tuple[str, ...] = ("fp32",)
    input_format: str = DEFAULT_INPUT_FORMAT
    calibration: Path | None = None
    sizes: tuple[InputSize, ...] = ()
    workers: int = 1
    # False only to time the build alone (scripts/bench_toolchain.py): the manifest then says "skipped"
    verify: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.workers}")
        if self.target not in convert_targets():
            raise UsageError(f"unknown target {self.target!r}; valid targets: {', '.join(convert_targets())}")
        fmt = FORMATS[self.target]
        if not self.precisions:
            raise UsageError(f"--to {self.target} needs --precision ({', '.join(fmt.conversion_precisions)})")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UsageError(f"unknown precisions {unknown}; valid: {', '.join(PRECISIONS)}")
        unsupported = [p for p in self.precisions if p not in fmt.conversion_precisions]
        if unsupported:
            raise UsageError(
                f"--to {self.target} makes {', '.join(fmt.conversion_precisions)}, not {', '.join(unsupported)}"
                + (" (FP32 ONNX is what retinaface-export writes)" if fmt.exported else "")
            )
        if self.input_format not in fmt.input_formats:
            raise UsageError(
                f"{self.target} keeps the input as the source takes it: --embed-mean and --input are for "
                f"{', '.join(n for n, f in FORMATS.items() if len(f.input_formats) > 1)}"
            )
        if "int8" in self.precisions and self.calibration is None:
            raise UsageError(
                "--precision int8 needs --calibration DIR: a folder of photos like those the model will see "
                "(a few dozen with faces; fewer are augmented)"
            )


def checked_sources(export_dir: Path, manifest: Manifest, options: ConvertOptions) -> list[ArtifactRecord]:
    """The manifest's artifacts the target converts from (of ``options.sizes``), each present and unaltered.

    Raises:
        ManifestError: none to convert, or a listed file is missing, altered, or leaves the folder.
    """
    source_format = FORMATS[options.target].source_format
    wanted = [(s.height, s.width) for s in options.sizes]
    sources = [
        a
        for a in manifest.artifacts
        if a.format == source_format
        and a.precision == "fp32"
        and a.input_format == DEFAULT_INPUT_FORMAT
        and a.source is None  # exported, not itself converted (a simplified or FP16 ONNX)
        and (not wanted or a.size in wanted)
    ]
    if not sources:
        which = f" of sizes {', '.join(map(str, options.sizes))}" if options.sizes else ""
        raise ManifestError(export_dir / MANIFEST_NAME, f"lists no {source_format} artifacts{which} to convert")
    for source in sources:
        check_files(export_dir, source)
    return sources


def plan(sources: list[ArtifactRecord], options: ConvertOptions) -> list[Job]:
    """One job per source and precision."""
    fmt = FORMATS[options.target]
    jobs = []
    for source in sources:
        stem = source.path.removesuffix(FORMATS[source.format].suffix)
        size = InputSize(*source.size) if source.size else None
        verify = (size,) if size else tuple(InputSize(*s) for s in source.verified_sizes[:_DYNAMIC_CHECK_SIZES])
        for precision in options.precisions:
            jobs.append(
                Job(
                    fmt=fmt,
                    file_name=fmt.file_name(stem, precision, options.input_format),
                    size=size,
                    batch=source.batch or 1,
                    verify_sizes=verify,
                    precision=precision,
                    input_format=options.input_format,
                    opset=source.opset if fmt.uses_opset else None,
                    source=source,
                    postprocess=PostprocessSpec.from_record(source.postprocess),
                )
            )
    return jobs


class SourceReference:
    """A source artifact's outputs on the verification photos (its own runtime, graph as written), once each."""

    def __init__(self, export_dir: Path, cache: OnceCache) -> None:
        self._dir, self._cache = export_dir, cache

    def for_source(self, source: ArtifactRecord):
        """The reference of one source."""
        outer = self

        class _One:
            name = f"its source {source.path}"

            def case(self, size: InputSize, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
                runner = outer._cache.get(
                    ("runner", source.path), lambda: FORMATS[source.format].open_runner(outer._dir / source.path)
                )

                def make() -> tuple[np.ndarray, list[np.ndarray]]:
                    photos = verification_photos(size, batch)
                    return photos, runner(to_network_input(photos))

                return outer._cache.get(("case", source.path, size, batch), make)

        return _One()


def _detection_check(source_path: Path, staged: Path, calibration: CalibrationSet, precision: str) -> dict[str, Any]:
    """F1 of the staged model's faces against the source's on calibration photos (score > 0.5)."""
    from retinaface_export.detection.compare import compare_faces
    from retinaface_export.detection.detector import Detector

    reference, candidate = Detector.from_artifact(source_path), Detector.from_artifact(staged)
    agreements = [
        compare_faces(reference.detect(image), candidate.detect(image))
        for image in calibration.images[:_INT8_CHECK_IMAGES]
    ]
    matched = sum(a.matched for a in agreements)
    total = sum(a.reference_faces + a.candidate_faces for a in agreements)
    f1 = 1.0 if total == 0 else 2 * matched / total
    min_f1 = PRECISIONS[precision].min_f1
    if f1 < min_f1:
        log.warning(
            "%s: detection F1 %.3f against FP32 on the calibration photos is below %.2f", staged.name, f1, min_f1
        )
    return {
        "kind": "detections",
        "reference": f"its source {source_path.name}",
        "images": len(agreements),
        "reference_faces": sum(a.reference_faces for a in agreements),
        "f1": f1,
        "min_f1": min_f1,
        "passed": f1 >= min_f1,
    }


def convert_export(
    export_dir: str | Path,
    options: ConvertOptions,
    output_dir: str | Path | None = None,
    on_step: Callable[[Job, int, int], None] | None = None,
) -> RunResult:
    """Convert the artifacts listed in ``export_dir``'s manifest as ``options`` say.

    Args:
        export_dir: a folder written by ``retinaface-export``.
        options: target, precisions, input format, calibration folder, sizes.
        output_dir: where results and their manifest go (default: ``export_dir``).
        on_step: called as ``on_step(job, index, total)`` before each artifact.

    Raises:
        ManifestError: no manifest, nothing to convert, a missing or altered source, another checkpoint's
            manifest in ``output_dir``.
        FileError: a bad calibration folder or image.
        ExportError: a converter failed or a result does not match its source.
    """
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    sources = checked_sources(export_dir, manifest, options)
    calibration = load_calibration_set(options.calibration) if "int8" in options.precisions else None
    jobs = plan(sources, options)
    shared = OnceCache()
    references = SourceReference(export_dir, shared)

    def make(job: Job, staging: Path) -> Made:
        assert job.source is not None
        source_path = export_dir / job.source.path
        reference = references.for_source(job.source)

        def source_cases() -> list[tuple[np.ndarray, list[np.ndarray]]]:
            pairs = [reference.case(s, b) for s in job.verify_sizes for b in verification_batches(job)]
            return [(INPUT_FORMATS[DEFAULT_INPUT_FORMAT](photos), outputs) for photos, outputs in pairs]

        int8 = job.precision == "int8"
        samples = calibration.samples(job.size or job.verify_sizes[0]) if (int8 and calibration) else None
        if samples and not job.dynamic and job.batch > 1:  # a fixed batch takes batches: each photo repeated
            samples = [np.repeat(sample, job.batch, axis=0) for sample in samples]
        inputs = ConvertInputs(
            source_path, artifact_provenance(manifest.checkpoint, job), shared, source_cases, samples
        )
        conversion = job.fmt.convert(job, inputs, staging)
        if not options.verify:
            return NOT_VERIFIED, conversion
        if int8:
            assert calibration is not None
            conversion["calibration"] = calibration.record() | {"samples": len(samples or [])}
            return _detection_check(source_path, staging / job.file_name, calibration, job.precision), conversion
        return verify_tensors(job, staging / job.file_name, reference), conversion

    def recheck_sources() -> None:
        # under the output folder's lock: a run that replaced a source since it was read is caught here
        for source in sources:
            check_files(export_dir, source)

    # NNCF is not made for concurrent use: INT8 conversions run one at a time.
    workers = 1 if "int8" in options.precisions else options.workers
    return run_builds(
        output_dir or export_dir, manifest.checkpoint, jobs, make, workers, on_step, prepare=recheck_sources
    )
