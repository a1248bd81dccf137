"""Export a loaded checkpoint to TorchScript and ONNX at the requested sizes, verified and atomic.

Each format's costly step (the trace, the ONNX export) runs once per checkpoint; each size then gets its
own file from it (see :class:`~retinaface_export.formats.Exporter`). Every artifact is built in a staging
folder, run with its own runtime and compared with PyTorch eager (run once per size) before anything
enters the output folder; the manifest is written last. ``workers`` > 1 builds and verifies that many
artifacts at once in threads (the runtimes release the GIL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaface_export import __version__
from retinaface_export.atomic import commit_files, staging_dir
from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.contract import INPUT_NAME, MEAN_BGR, OUTPUT_NAMES, OUTPUT_WIDTHS
from retinaface_export.errors import ExportError, ManifestError, UsageError
from retinaface_export.formats import EXPORT_FORMATS, PRECISIONS, ArtifactFormat, Exporter
from retinaface_export.hashing import sha256_file
from retinaface_export.manifest import MANIFEST_NAME, Manifest
from retinaface_export.onnx_export import DEFAULT_OPSET
from retinaface_export.preprocess import synthetic_photos, to_network_input
from retinaface_export.provenance import TOOL_NAME, library_versions
from retinaface_export.runtimes import eager_runner
from retinaface_export.sizes import InputSize
from retinaface_export.workers import OnceCache, run_jobs

log = logging.getLogger(__name__)

# Batch of the extra verification run of a dynamic artifact (checks the batch axis really is dynamic).
_DYNAMIC_CHECK_BATCH = 2


@dataclass(frozen=True)
class ExportOptions:
    """What to export: sizes, formats, opset, dynamic axes, batch size, and how many artifacts at once."""

    sizes: tuple[InputSize, ...] = (InputSize(640, 640),)
    formats: tuple[str, ...] = tuple(EXPORT_FORMATS)
    opset: int = DEFAULT_OPSET
    dynamic: bool = False
    batch: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.sizes:
            raise UsageError("at least one --size is needed")
        if self.workers < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.workers}")
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        unknown = [f for f in self.formats if f not in EXPORT_FORMATS]
        if unknown:
            raise UsageError(f"unknown formats {unknown}; valid formats: {', '.join(EXPORT_FORMATS)}")


@dataclass(frozen=True)
class ArtifactJob:
    """One artifact to make: a format at a size (``size`` None: dynamic, traced at ``verify_sizes[0]``)."""

    fmt: ArtifactFormat
    size: InputSize | None
    verify_sizes: tuple[InputSize, ...]
    batch: int

    def file_name(self, variant: str) -> str:
        """``retinaface_<variant>_<H>x<W>[_b<N>]<suffix>`` or ``retinaface_<variant>_dynamic<suffix>``."""
        shape = "dynamic" if self.size is None else str(self.size)
        batch = f"_b{self.batch}" if self.batch != 1 and self.size is not None else ""
        return f"retinaface_{variant}_{shape}{batch}{self.fmt.suffix}"

    def describe(self) -> str:
        """Short label for progress displays."""
        return f"{self.fmt.name} {'dynamic' if self.size is None else self.size}"


@dataclass
class ExportResult:
    """The manifest written and the artifacts this run added to it."""

    output_dir: Path
    manifest: Manifest
    added: list[dict[str, Any]] = field(default_factory=list)


def plan(options: ExportOptions) -> list[ArtifactJob]:
    """The artifacts ``options`` ask for, sizes in the order given, formats in table order per size."""
    formats = [EXPORT_FORMATS[name] for name in EXPORT_FORMATS if name in options.formats]
    if options.dynamic:
        return [ArtifactJob(fmt, None, options.sizes, options.batch) for fmt in formats]
    unique_sizes = list(dict.fromkeys(options.sizes))
    return [ArtifactJob(fmt, size, (size,), options.batch) for size in unique_sizes for fmt in formats]


def _provenance(checkpoint: LoadedCheckpoint, job: ArtifactJob, opset: int | None) -> dict[str, Any]:
    return {
        "tool": TOOL_NAME,
        "tool_version": __version__,
        "variant": checkpoint.variant.name,
        "input_size": job.size.as_list() if job.size else "dynamic",
        "batch": "dynamic" if job.size is None else job.batch,
        "opset": opset,
        "precision": "fp32",
        "checkpoint_sha256": checkpoint.file_sha256,
        "checkpoint_state_dict_sha256": checkpoint.state_dict_sha256,
        "synthetic": checkpoint.synthetic,
        "anchors": checkpoint.variant.anchors.to_dict(),
        "mean_bgr": list(MEAN_BGR),
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
    }


def _verification_input(size: InputSize, batch: int) -> np.ndarray:
    return to_network_input(synthetic_photos(batch, size.height, size.width, seed=size.height * 7 + size.width))


class _EagerReference:
    """The verification input of each size and batch and PyTorch eager's outputs on it, made once."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._run = eager_runner(model)
        self._cases = OnceCache()

    def case(self, size: InputSize, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        def make() -> tuple[np.ndarray, list[np.ndarray]]:
            data = _verification_input(size, batch)
            return data, self._run(data)

        return self._cases.get((size, batch), make)


def _verify(job: ArtifactJob, staged: Path, reference: _EagerReference, file_name: str) -> dict[str, Any]:
    """Run the staged artifact at each size it claims; raise ExportError naming every output off."""
    runner = job.fmt.open_runner(staged)
    batches = [job.batch] if job.size is not None else [job.batch, _DYNAMIC_CHECK_BATCH]
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for size in job.verify_sizes:
        for batch in dict.fromkeys(batches):
            data, expected = reference.case(size, batch)
            got = runner(data)
            for name, exp, out in zip(OUTPUT_NAMES, expected, got, strict=True):
                if out.shape != exp.shape:
                    raise ExportError(f"{file_name}: {name} has shape {out.shape}, PyTorch gives {exp.shape}")
                err = float(np.max(np.abs(out - exp))) if np.isfinite(out).all() else float("inf")
                worst[name] = max(worst[name], err)
    atol = PRECISIONS["fp32"].atol
    failed = [f"{name} {err:.2e}" for name, err in worst.items() if not err <= atol]
    if failed:
        raise ExportError(f"{file_name}: differs from PyTorch beyond {atol:g}: {', '.join(failed)}")
    return {"sizes": [s.as_list() for s in job.verify_sizes], "max_abs_error": worst, "atol": atol}


def _shapes(job: ArtifactJob, num_anchors: int | None) -> tuple[list[Any], list[dict[str, Any]]]:
    if job.size is None:
        data_shape: list[Any] = ["batch", 3, "height", "width"]
        anchors: Any = "anchors"
        batch: Any = "batch"
    else:
        data_shape, anchors, batch = [job.batch, 3, job.size.height, job.size.width], num_anchors, job.batch
    outputs = [{"name": n, "shape": [batch, anchors, w]} for n, w in zip(OUTPUT_NAMES, OUTPUT_WIDTHS, strict=True)]
    return data_shape, outputs


def _exporters(
    model: torch.nn.Module, jobs: list[ArtifactJob], options: ExportOptions, variant: str
) -> dict[str, Exporter]:
    """One exporter per format, each tracing or exporting the model once (at the first size planned)."""
    exporters: dict[str, Exporter] = {}
    for job in jobs:
        if job.fmt.name in exporters:
            continue
        example = torch.from_numpy(_verification_input(job.size or job.verify_sizes[0], job.batch))
        try:
            assert job.fmt.exporter is not None  # plan() only picks exportable formats
            exporters[job.fmt.name] = job.fmt.exporter(model, example, options.opset)
        except Exception as exc:  # exporters raise many types; name the artifact and the cause
            raise ExportError(f"{job.file_name(variant)}: {job.fmt.name} export failed: {exc}") from exc
    return exporters


def _build_artifact(
    checkpoint: LoadedCheckpoint,
    job: ArtifactJob,
    exporter: Exporter,
    options: ExportOptions,
    reference: _EagerReference,
    staging: Path,
) -> dict[str, Any]:
    """Write one artifact into ``staging``, verify it, and return its manifest entry."""
    name = job.file_name(checkpoint.variant.name)
    opset = options.opset if job.fmt.uses_opset else None
    log.info("exporting %s", name)
    num_anchors = checkpoint.variant.anchors.num_anchors(job.size.height, job.size.width) if job.size else None
    try:
        data = exporter.artifact(job.size, job.batch, num_anchors, _provenance(checkpoint, job, opset))
    except Exception as exc:  # exporters raise many types; name the artifact and the cause
        raise ExportError(f"{name}: {job.fmt.name} export failed: {exc}") from exc
    staged = staging / name
    staged.write_bytes(data)
    verification = _verify(job, staged, reference, name)
    data_shape, outputs = _shapes(job, num_anchors)
    return {
        "path": name,
        "format": job.fmt.name,
        "backend": job.fmt.backend,
        "variant": checkpoint.variant.name,
        "size": job.size.as_list() if job.size else None,
        "dynamic": job.size is None,
        "batch": job.batch if job.size else None,
        "precision": "fp32",
        "opset": opset,
        "sha256": sha256_file(staged),
        "bytes": staged.stat().st_size,
        "num_anchors": num_anchors,
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": data_shape,
                "layout": "NCHW",
                "color": "BGR",
                "mean_subtracted": list(MEAN_BGR),
            }
        ],
        "outputs": outputs,
        "verification": verification,
    }


def export_checkpoint(
    checkpoint: LoadedCheckpoint,
    options: ExportOptions,
    output_dir: str | Path,
    on_step: Callable[[ArtifactJob, int, int], None] | None = None,
) -> ExportResult:
    """Export ``checkpoint`` as ``options`` say into ``output_dir`` and write its manifest.

    Args:
        checkpoint: from :func:`~retinaface_export.checkpoint.load_checkpoint` or the synthetic generator.
        options: sizes, formats, opset, dynamic axes, batch, worker threads.
        output_dir: created if needed; an earlier export of the same checkpoint there is extended (same
            file names replaced), one of another checkpoint is refused.
        on_step: called as ``on_step(job, index, total)`` as each artifact starts, for progress displays.

    Raises:
        ExportError: an exporter failed or an artifact does not reproduce PyTorch eager.
        ManifestError: ``output_dir`` holds an export of another checkpoint.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ManifestError(output_dir, "output path exists and is not a folder")
    previous = Manifest.read_if_present(output_dir)
    record = checkpoint.provenance()
    if previous is not None and not previous.same_checkpoint(record):
        raise ManifestError(
            output_dir / MANIFEST_NAME,
            f"holds an export of another checkpoint ({previous.checkpoint.get('variant')}, "
            f"sha256 {str(previous.checkpoint.get('sha256'))[:12]}); choose another --output-dir",
        )
    manifest = previous or Manifest(checkpoint=record)
    manifest.checkpoint = record
    model = checkpoint.model.eval()
    jobs = plan(options)
    result = ExportResult(output_dir=output_dir, manifest=manifest)
    with staging_dir(output_dir) as staging:
        exporters = _exporters(model, jobs, options, checkpoint.variant.name)
        reference = _EagerReference(model)
        started = iter(range(len(jobs)))

        def build(job: ArtifactJob) -> dict[str, Any]:
            if on_step:
                on_step(job, next(started), len(jobs))
            return _build_artifact(checkpoint, job, exporters[job.fmt.name], options, reference, staging)

        result.added = run_jobs(build, jobs, options.workers)
        commit_files(staging, [a["path"] for a in result.added], output_dir)
    for artifact in result.added:
        manifest.add(artifact)
    manifest.versions = library_versions()
    manifest.write(output_dir)
    return result
