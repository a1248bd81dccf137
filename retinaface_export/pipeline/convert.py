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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.calibration import PhotoSplit, split_photos
from retinaface_export.checkpoint import LoadedCheckpoint, load_checkpoint
from retinaface_export.errors import AccuracyDropError, CheckpointError, ManifestError, UsageError
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

    from retinaface_export.quantize import Int8Request

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
    # INT8: photos the accuracy is judged on (None: part of the calibration folder is held out)
    validation: Path | None = None
    # INT8: largest accepted drop of strict detection F1 against FP32 on the validation photos
    max_f1_drop: float = 0.03
    # INT8: keep a model that misses the target (its record says so) instead of failing the run
    allow_accuracy_drop: bool = False
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
        if self.validation is not None and "int8" not in self.precisions:
            raise UsageError("--validation is for --precision int8")
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


def _int8_progress(file_name: str, samples: int) -> Callable[[str, int], None]:
    """Calibration progress of one artifact for ``report_progress``: one bar per pass NNCF makes."""

    def progress(stage: str, count: int) -> None:
        if stage == "calibration":  # accuracy control's evaluations have no known total: not shown
            report_progress(f"{file_name}: INT8 calibration", (count - 1) % samples + 1, samples)

    return progress


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
        progress=_int8_progress(job.file_name, calibration_views),
    )


def accuracy_check(job: Job, staged: Path, source: Runner, request: Int8Request) -> Verification:
    """Strict detection F1 of the written INT8 artifact against its source on the validation photos.

    At every size and batch the artifact claims (a dynamic one: its verified sizes, batches 1 and 2), the
    artifact runs in its own runtime with its optimisations, fed as its input format says; the source
    (FP32) in ONNX Runtime. The worst case is judged. The target does not apply to synthetic weights
    (``request.accuracy_control`` False): F1 is recorded.

    Raises:
        AccuracyDropError: the drop is above the target and the request does not allow it.
    """
    runner = job.fmt.open_runner(staged, optimize=True)
    prepare = INPUT_FORMATS[job.input_format]
    cases, samples = [], 0
    for size in job.verify_sizes:
        views = request.photos.validation.views(size)
        for batch in verification_batches(job):
            reference, candidate = [], []
            for view in views:
                photos = np.repeat(view[None], batch, axis=0)
                reference.append(source(to_network_input(photos)))
                candidate.append(runner(prepare(photos)))
            cases.append({"size": size.as_list(), "batch": batch, "f1": request.metric(size)(reference, candidate)[0]})
            samples += len(views)
    metric = request.metric()
    f1 = min(case["f1"] for case in cases)
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
        "passed": passed or not request.accuracy_control,
    }
    record |= execution_record(job, staged)
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
    jobs = plan(sources, options)
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
        if not options.verify:
            return Built(NOT_VERIFIED, conversion)
        if request is not None:
            return Built(accuracy_check(job, staging / job.file_name, reference.runner(), request), conversion)
        return Built(verify_tensors(job, staging / job.file_name, reference), conversion)

    def recheck_sources() -> None:
        # under the output folder's lock: a run that replaced a source since it was read is caught here
        for source in sources:
            check_files(export_dir, source)

    # NNCF is not made for concurrent use: INT8 conversions run one at a time.
    workers = 1 if "int8" in options.precisions else options.workers
    return run_builds(
        output_dir or export_dir, manifest.checkpoint, jobs, make, workers, on_step, prepare=recheck_sources
    )
