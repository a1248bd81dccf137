"""Convert an export folder's artifacts into the formats made from them (simplified ONNX, OpenVINO IR, ...).

Reads ``EXPORT_DIR/manifest.json``, checks every source file against its recorded sha256, plans one job
per source and precision, and hands each to its format's converter; each result is verified against its
source run by ONNX Runtime (tensors for FP32/FP16 by the one comparison; for INT8, strict detection F1 on
validation photos calibration never saw, against the accuracy target) before it is committed with the
manifest.

Work is done once where it can be: each source runs in ONNX Runtime once per size and batch for all the
checks of its conversions, and converters share work through the run's cache (OpenVINO converts each
distinct graph once and reshapes it per size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.calibration import (
    HELD_OUT_VIEWS,
    CalibrationSet,
    PhotoSplit,
    load_validation_set,
    split_photos,
)
from retinaface_export.checkpoint import LoadedCheckpoint, load_checkpoint
from retinaface_export.detection.metric import strict_f1
from retinaface_export.errors import AccuracyDropError, CheckpointError, ExportError, ManifestError, UsageError
from retinaface_export.format_api import ConvertInputs, Job, Runner
from retinaface_export.formats import FORMATS, convert_targets
from retinaface_export.hashing import sha256_file
from retinaface_export.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, check_files
from retinaface_export.pipeline.builds import (
    RunResult,
    artifact_provenance,
    execution_record,
    run_builds,
    verification_batches,
    verification_photos,
    verify_tensors,
)
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS, to_network_input
from retinaface_export.progress import report_progress
from retinaface_export.records import NOT_VERIFIED, Built, Verification
from retinaface_export.sizes import InputSize
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant
from retinaface_export.workers import OnceCache

if TYPE_CHECKING:
    import torch

    from retinaface_export.quantize import Int8Request, Metric

log = logging.getLogger(__name__)

# Sizes a dynamic source's conversion is verified at (the first of the source's verified sizes).
_DYNAMIC_CHECK_SIZES = 2


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert to. ``sizes`` empty: every fixed-size and dynamic source artifact."""

    target: str
    precisions: tuple[str, ...] = ("fp32",)
    input_format: str = DEFAULT_INPUT_FORMAT
    calibration: Path | None = None
    # INT8: photos the accuracy is judged on (None: part of the calibration folder is held out); bf16: photos
    # its detections are judged on (None: the calibration folder's, which bf16 never learnt from)
    validation: Path | None = None
    # INT8: largest accepted drop of strict detection F1 against FP32 on the validation photos
    max_f1_drop: float = 0.03
    # INT8: keep a model that misses the target (its record says so) instead of failing the run
    allow_accuracy_drop: bool = False
    # INT8: seconds accuracy control may search per artifact before the run fails (None: no limit)
    int8_budget: float | None = None
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
        photo_judged = [p for p in self.precisions if PRECISIONS[p].needs_photos]
        if photo_judged and self.validation is None and self.calibration is None:
            raise UsageError(
                f"--precision {photo_judged[0]} is judged by its detections on photos with faces: give --validation "
                "DIR (or --calibration DIR, whose photos it then uses)"
            )
        if self.validation is not None and "int8" not in self.precisions and not photo_judged:
            raise UsageError("--validation is for --precision int8 and bf16")
        if self.int8_budget is not None and not (0 < self.int8_budget < float("inf")):
            raise UsageError(f"--int8-budget must be a positive number of seconds, got {self.int8_budget}")
        if not 0 <= self.max_f1_drop < 1:
            raise UsageError(f"--max-f1-drop must be at least 0 and below 1, got {self.max_f1_drop}")


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
    """One job per source and precision.

    Raises:
        UsageError: the target cannot make one of them (:meth:`ArtifactFormat.refusal`), naming its source.
    """
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
    for job in jobs:  # what the target cannot make is refused before any work
        reason = fmt.refusal(job)
        if reason:
            raise UsageError(f"{job.source.path if job.source else job.file_name}: {reason}")
    return jobs


@dataclass(frozen=True)
class SourceReference:
    """A source artifact run in its own runtime (graph as written): its outputs on the verification photos."""

    export_dir: Path
    source: ArtifactRecord
    # the run's shared cache: each source is opened once and run once per size and batch
    cache: OnceCache

    @property
    def name(self) -> str:
        """How verification records name this reference."""
        return f"its source {self.source.path}"

    def runner(self) -> Runner:
        """The source's runner, opened once per run."""
        path = self.export_dir / self.source.path
        return self.cache.get(("runner", self.source.path), lambda: FORMATS[self.source.format].open_runner(path))

    def case(self, size: InputSize, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Verification photos at ``size`` × ``batch`` and the source's outputs on them."""

        def make() -> tuple[np.ndarray, list[np.ndarray]]:
            photos = verification_photos(size, batch)
            return photos, self.runner()(to_network_input(photos))

        return self.cache.get(("case", self.source.path, size, batch), make)


def eager_checkpoint(manifest: Manifest) -> tuple[LoadedCheckpoint | None, str | None]:
    """The export's own model: its checkpoint, sha256-checked, with the export's anchors.

    Bench times it in eager rows; conversions from the PyTorch model (LiteRT) rebuild the network from it
    (:func:`checkpoint_model`).

    Returns:
        The checkpoint, or None and the reason eager is skipped (the checkpoint file is gone, or the
        synthetic generator no longer makes the exported weights).

    Raises:
        CheckpointError: the checkpoint file is there but is not the one exported (its sha256 or, always,
            its state dict's sha256 differs from the manifest's), or fails to load.
    """
    record = manifest.checkpoint
    variant = get_variant(record["variant"])
    if record.get("anchors"):
        variant = variant.with_anchors(AnchorConfig.from_mapping(record["anchors"]))
    if record.get("synthetic"):
        checkpoint = synthetic_checkpoint(variant)
        if record.get("state_dict_sha256") != checkpoint.state_dict_sha256:
            return None, "eager skipped: this version's synthetic weights differ from the exported ones"
        return checkpoint, None
    path = Path(record["path"])
    if not path.is_file():
        return None, f"eager skipped: checkpoint {path} not found (moved?)"
    if record.get("sha256") and sha256_file(path) != record["sha256"]:
        raise CheckpointError(
            path, "sha256 differs from the export's manifest: not the checkpoint these artifacts were made from"
        )
    checkpoint = load_checkpoint(path, backbone=variant.name, anchors=variant.anchors)
    if checkpoint.state_dict_sha256 != record.get("state_dict_sha256"):  # the file's sha256 may be null
        raise CheckpointError(
            path,
            "state dict sha256 differs from the export's manifest: not the weights these artifacts were made from",
        )
    return checkpoint, None


def checkpoint_model(manifest: Manifest, cache: OnceCache) -> Callable[[], torch.nn.Module]:
    """The export's eager network (in eval mode), rebuilt from its checkpoint once per run when first asked.

    For formats converted from the PyTorch model rather than from the source file (LiteRT: torch.export
    cannot start from TorchScript); the pipeline still verifies the result against the source artifact.

    Raises (when called):
        CheckpointError: the checkpoint is gone, replaced (sha256), or the synthetic generator no longer
            makes the exported weights (state_dict sha256).
    """

    def load() -> torch.nn.Module:
        checkpoint, note = eager_checkpoint(manifest)
        if checkpoint is None:
            path = manifest.checkpoint.get("path") or f"synthetic {manifest.checkpoint.get('variant')}"
            reason = (note or "").removeprefix("eager skipped: ")
            raise CheckpointError(path, f"the conversion rebuilds the model from the checkpoint: {reason}")
        return checkpoint.model.eval()

    return lambda: cache.get(("checkpoint-model",), load)


class _Int8Progress:
    """INT8 progress of one artifact, shown and kept.

    Shown through ``report_progress``: a bar per calibration pass, one for accuracy control. Kept for the
    manifest row: how many evaluations the search made and how long the INT8 step took.
    """

    def __init__(self, file_name: str, samples: int) -> None:
        self.file_name, self.samples = file_name, samples
        self.evaluations, self.most = 0, None
        self.start = time.monotonic()

    def __call__(self, stage: str, count: int, total: int | None) -> None:
        if stage == "calibration":
            report_progress(f"{self.file_name}: INT8 calibration", (count - 1) % self.samples + 1, self.samples)
        elif total is not None:  # the most it can take: the search usually ends well before, then closes the bar
            if count < total or self.most is None:
                self.evaluations = count
            self.most = total
            report_progress(f"{self.file_name}: INT8 accuracy control (evaluations of at most)", count, total)

    def record(self) -> dict[str, Any]:
        """How long the INT8 step took (calibration, accuracy control and the final measure) and its evaluations."""
        return {"seconds": round(time.monotonic() - self.start, 1), "evaluations": self.evaluations, "most": self.most}


def int8_request(job: Job, photos: PhotoSplit, checkpoint: dict[str, Any], options: ConvertOptions) -> Int8Request:
    """What ``job``'s INT8 conversion needs: the photos, the shape they go in at, anchors, the target."""
    from retinaface_export.quantize import Int8Request

    calibration_views = len(photos.calibration.files) * len(photos.calibration.augmentations)
    return Int8Request(
        photos=photos,
        size=job.size or job.verify_sizes[0],  # a dynamic model is calibrated and judged at its first size
        batch=1 if job.dynamic else job.batch,
        anchors=AnchorConfig.from_mapping(checkpoint["anchors"]),
        postprocess=job.postprocess,
        max_f1_drop=options.max_f1_drop,
        allow_accuracy_drop=options.allow_accuracy_drop,
        accuracy_control=not checkpoint.get("synthetic", False),
        progress=_Int8Progress(job.file_name, calibration_views),
        budget_seconds=options.int8_budget,
    )


def photo_cases(
    job: Job,
    runner: Runner,
    source: Runner,
    views_of: Callable[[InputSize], list[np.ndarray]],
    metric_at: Callable[[InputSize], Metric],
) -> tuple[list[dict[str, Any]], int]:
    """Strict detection F1 of the written artifact against its source on ``views_of(size)``, per size and batch.

    At every size and batch the artifact claims (a dynamic one: its verified sizes, batches 1 and 2), the
    artifact runs in ``runner`` (its own runtime with its optimisations, opened once by the caller), fed as its
    input format says; the source (FP32) in ONNX Runtime. Returns the cases (size, batch, F1) and how many
    views were run.
    """
    prepare = INPUT_FORMATS[job.input_format]
    cases, samples = [], 0
    for size in job.verify_sizes:
        views = views_of(size)
        for batch in verification_batches(job):
            reference, candidate = [], []
            for view in views:
                batch_of_views = np.repeat(view[None], batch, axis=0)
                reference.append(source(to_network_input(batch_of_views)))
                candidate.append(runner(prepare(batch_of_views)))
            cases.append({"size": size.as_list(), "batch": batch, "f1": metric_at(size)(reference, candidate)[0]})
            samples += len(views)
    return cases, samples


def accuracy_check(job: Job, staged: Path, source: Runner, request: Int8Request) -> Verification:
    """Strict detection F1 of the written INT8 artifact against its source on the validation photos.

    The worst case of :func:`photo_cases` is judged. The target does not apply to synthetic weights
    (``request.accuracy_control`` False): F1 is recorded.

    Raises:
        AccuracyDropError: the drop is above the target and the request does not allow it.
    """
    validation = request.photos.validation
    runner = job.fmt.open_runner(staged, optimize=True)
    cases, samples = photo_cases(job, runner, source, validation.views, request.metric)
    held_cases, held_samples = photo_cases(job, runner, source, validation.held_out_views, request.metric)
    metric = request.metric()
    f1 = min(case["f1"] for case in cases)
    held_out_f1 = min(case["f1"] for case in held_cases)
    drop = 1.0 - f1  # the source against itself scores 1
    passed = drop <= request.max_f1_drop + 1e-9
    record = {
        "kind": "detections",
        "reference": f"its source {job.source.path}" if job.source else "its source",
        "metric": metric.name,
        "photos": "validation",
        "samples": samples,
        "cases": cases,
        "f1": f1,
        "drop": drop,
        "max_drop": request.max_f1_drop if request.accuracy_control else None,
        # views of the validation photos that neither calibration nor accuracy control saw: recorded, warned
        # about below the target, not judged (a few views of one or two photos: a noisy figure)
        "held_out_views": {
            "views": list(HELD_OUT_VIEWS),
            "samples": held_samples,
            "cases": held_cases,
            "f1": held_out_f1,
        },
        "passed": passed or not request.accuracy_control,
    }
    record |= execution_record(job, staged)
    if request.accuracy_control and 1.0 - held_out_f1 > request.max_f1_drop + 1e-9:
        log.warning(
            "%s: strict F1 %.3f on the validation photos' stretched and scaled views is below the target "
            "%.3f that accuracy control met on its own views",
            job.file_name,
            held_out_f1,
            1.0 - request.max_f1_drop,
        )
    if not request.accuracy_control:
        log.info("%s: synthetic weights: INT8 F1 %.3f recorded, no accuracy target applied", job.file_name, f1)
    elif not passed:
        summary = (
            f"the written artifact's {metric.name} on the validation photos is {f1:.3f} (drop {drop:.3f}, "
            f"max {request.max_f1_drop:.3f})"
        )
        if not request.allow_accuracy_drop:
            raise AccuracyDropError(summary, record, job.file_name)
        log.warning("%s: %s; kept (--allow-accuracy-drop)", job.file_name, summary)
    return Verification.from_record(record)


def detection_rule_check(
    job: Job, staged: Path, source: Runner, photos: CalibrationSet, anchors: AnchorConfig, synthetic: bool
) -> dict[str, Any]:
    """The detection rule of a precision judged on photos (bf16): strict F1 against FP32 on ``photos``' views.

    Returns the record's ``detections`` block. Synthetic weights detect noise: F1 is recorded, not judged.

    Raises:
        ExportError: the worst F1 is below the precision's ``min_f1``.
    """
    tolerance = PRECISIONS[job.precision]
    postprocess = job.postprocess

    def metric_at(size: InputSize) -> Metric:
        return strict_f1(anchors, size, postprocess)

    runner = job.fmt.open_runner(staged, optimize=True)
    cases, samples = photo_cases(job, runner, source, photos.views, metric_at)
    f1 = min(case["f1"] for case in cases)
    passed = f1 >= tolerance.min_f1 - 1e-9
    if not passed and not synthetic:
        raise ExportError(
            f"{job.file_name}: strict detection F1 against FP32 on the {samples} views of {photos.folder} is "
            f"{f1:.3f} < {tolerance.min_f1} ({job.precision} detection rule)"
        )
    return {
        "metric": metric_at(job.verify_sizes[0]).name,
        "photos": photos.record(),
        "samples": samples,
        "cases": cases,
        "f1": f1,
        "min_f1": None if synthetic else tolerance.min_f1,
        "passed": passed or synthetic,
    }


def unchecked_precision(precision: str, executed: Mapping[str, Any] | None) -> str | None:
    """Why an artifact's reduced ``precision`` was not what ran here (bf16 on a CPU without bf16), or None."""
    if precision != "bf16" or executed is None or "bf16" in str(executed.get("executed", "")):
        return None
    return (
        f"this CPU ran the bf16 artifact in {executed.get('executed')} (no bf16 support): bf16 numerics were not "
        "checked here; rerun the conversion on a CPU with avx512_bf16 or AMX to judge them"
    )


def convert_export(
    export_dir: str | Path,
    options: ConvertOptions,
    output_dir: str | Path | None = None,
    on_step: Callable[[Job, int, int], None] | None = None,
) -> RunResult:
    """Convert the artifacts listed in ``export_dir``'s manifest as ``options`` say.

    Args:
        export_dir: a folder written by ``retinaface-export``.
        options: target, precisions, input format, INT8 photo folders and accuracy target, sizes.
        output_dir: where results and their manifest go (default: ``export_dir``).
        on_step: called as ``on_step(job, index, total)`` before each artifact.

    Raises:
        ManifestError: no manifest, nothing to convert, a missing or altered source, another checkpoint's
            manifest in ``output_dir``.
        FileError: a bad calibration or validation folder or image; a validation photo that is also a
            calibration photo.
        ExportError: a converter failed, a result does not match its source, or an INT8 model misses its
            accuracy target (:class:`~retinaface_export.errors.AccuracyDropError`) without
            ``options.allow_accuracy_drop``.
    """
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    sources = checked_sources(export_dir, manifest, options)
    jobs = plan(sources, options)  # refusals first, before any photo is read
    int8 = "int8" in options.precisions
    photos = split_photos(options.calibration, options.validation) if int8 and options.calibration else None
    if photos and photos.held_out:
        log.info(
            "INT8 accuracy is judged on %d photo%s held out of %s (no --validation folder): %s",
            len(photos.validation.files),
            "" if len(photos.validation.files) == 1 else "s",
            options.calibration,
            ", ".join(path.name for path in photos.validation.files),
        )
    judged_photos = None
    if any(PRECISIONS[p].needs_photos for p in options.precisions):
        folder = options.validation or options.calibration
        assert folder is not None  # ConvertOptions requires one
        judged_photos = load_validation_set(folder)
    shared = OnceCache()

    def make(job: Job, staging: Path) -> Built:
        assert job.source is not None
        source_path = export_dir / job.source.path
        reference = SourceReference(export_dir, job.source, shared)

        def source_cases() -> list[tuple[np.ndarray, list[np.ndarray]]]:
            pairs = [reference.case(s, b) for s in job.verify_sizes for b in verification_batches(job)]
            return [(INPUT_FORMATS[DEFAULT_INPUT_FORMAT](photos), outputs) for photos, outputs in pairs]

        request = None
        if job.precision == "int8":
            assert photos is not None  # ConvertOptions requires a calibration folder for INT8
            request = int8_request(job, photos, manifest.checkpoint, options)
        inputs = ConvertInputs(
            source_path,
            artifact_provenance(manifest.checkpoint, job),
            shared,
            source_cases,
            request,
            checkpoint_model=checkpoint_model(manifest, shared),
        )
        try:
            conversion = job.fmt.convert(job, inputs, staging)
        except AccuracyDropError as error:
            raise error.naming(job.file_name) from None
        if request is not None and isinstance(request.progress, _Int8Progress):
            conversion = conversion | {"int8_search": request.progress.record()}
        if not options.verify:
            return Built(NOT_VERIFIED, conversion)
        if request is not None:
            return Built(accuracy_check(job, staging / job.file_name, reference.runner(), request), conversion)
        verification = verify_tensors(job, staging / job.file_name, reference)
        if PRECISIONS[job.precision].needs_photos:
            assert judged_photos is not None  # ConvertOptions requires a photo folder for these precisions
            detections = detection_rule_check(
                job,
                staging / job.file_name,
                reference.runner(),
                judged_photos,
                AnchorConfig.from_mapping(manifest.checkpoint["anchors"]),
                bool(manifest.checkpoint.get("synthetic")),
            )
            extra: dict[str, Any] = {"detections": detections}
            note = unchecked_precision(job.precision, verification.details.get("executed"))
            if note:
                log.warning("%s: %s", job.file_name, note)
                extra["not_checked"] = note
            verification = Verification.from_record(verification.record() | extra)
        return Built(verification, conversion)

    def recheck_sources() -> None:
        # under the output folder's lock: a run that replaced a source since it was read is caught here
        for source in sources:
            check_files(export_dir, source)

    # NNCF is not made for concurrent use: INT8 conversions run one at a time.
    workers = 1 if "int8" in options.precisions else options.workers
    return run_builds(
        output_dir or export_dir, manifest.checkpoint, jobs, make, workers, on_step, prepare=recheck_sources
    )
