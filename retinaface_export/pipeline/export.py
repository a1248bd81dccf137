"""Export a loaded checkpoint to TorchScript and ONNX at the requested sizes, verified and atomic.

Each format's costly step (the trace, the ONNX export) runs once per checkpoint; each size then gets its
own file from it (see :class:`~retinaface_export.format_api.Exporter`). Every artifact is run with its own
runtime and compared with PyTorch eager (run once per size and batch) through the one pipeline
(:mod:`retinaface_export.pipeline.builds`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.converters.onnx.format import DEFAULT_OPSET
from retinaface_export.eager import eager_runner
from retinaface_export.errors import ExportError, UsageError
from retinaface_export.format_api import Exporter, Job
from retinaface_export.formats import FORMATS, export_formats
from retinaface_export.pipeline.builds import (
    RunResult,
    artifact_provenance,
    run_builds,
    verification_photos,
    verify_tensors,
)
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, to_network_input
from retinaface_export.records import NOT_VERIFIED, Built
from retinaface_export.sizes import InputSize
from retinaface_export.workers import OnceCache


@dataclass(frozen=True)
class ExportOptions:
    """What to export: sizes, formats, opset, dynamic axes, batch size, and how many artifacts at once."""

    sizes: tuple[InputSize, ...] = (InputSize(640, 640),)
    formats: tuple[str, ...] = ()
    opset: int = DEFAULT_OPSET
    dynamic: bool = False
    batch: int = 1
    workers: int = 1
    # post-processing inside every artifact (raw outputs by default: the Open Model Zoo contract)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    # False only to time the build alone (scripts/bench_toolchain.py): the manifest then says "skipped"
    verify: bool = True

    def __post_init__(self) -> None:
        if not self.sizes:
            raise UsageError("at least one --size is needed")
        if self.workers < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.workers}")
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        unknown = [f for f in self.formats if f not in export_formats()]
        if unknown:
            raise UsageError(f"unknown formats {unknown}; valid formats: {', '.join(export_formats())}")

    def chosen_formats(self) -> list[str]:
        """The formats asked for, in table order (all export formats when none was named)."""
        return [name for name in export_formats() if not self.formats or name in self.formats]


def plan(options: ExportOptions, variant: str) -> list[Job]:
    """The artifacts ``options`` ask for, sizes in the order given, formats in table order per size."""
    formats = [FORMATS[name] for name in options.chosen_formats()]

    def job(fmt, size: InputSize | None) -> Job:
        shape = "dynamic" if size is None else str(size)
        batch = f"_b{options.batch}" if options.batch != 1 and size is not None else ""
        return Job(
            fmt=fmt,
            file_name=fmt.file_name(
                f"retinaface_{variant}_{shape}{batch}{options.postprocess.tag}", "fp32", DEFAULT_INPUT_FORMAT
            ),
            size=size,
            batch=options.batch,
            verify_sizes=options.sizes if size is None else (size,),
            opset=options.opset if fmt.uses_opset else None,
            postprocess=options.postprocess,
        )

    if options.dynamic:
        return [job(fmt, None) for fmt in formats]
    return [job(fmt, size) for size in dict.fromkeys(options.sizes) for fmt in formats]


class EagerReference:
    """PyTorch eager's outputs on the verification photos of each size and batch, computed once.

    With post-processing, the raw outputs go through the reference's numpy post-processing
    (:func:`~retinaface_export.detection.modes.mode_outputs`): what the artifact must compute.
    """

    def __init__(self, model, anchors: AnchorConfig, postprocess: PostprocessSpec) -> None:
        self._run = eager_runner(model)
        self._anchors, self._postprocess = anchors, postprocess
        self._cases = OnceCache()
        self.name = "PyTorch" if postprocess.raw else f"PyTorch + numpy {postprocess.mode}"

    def case(self, size: InputSize, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        def make() -> tuple[np.ndarray, list[np.ndarray]]:
            from retinaface_export.detection.modes import mode_outputs

            photos = verification_photos(size, batch)
            raw = self._run(to_network_input(photos))
            return photos, mode_outputs(raw, self._anchors, size.height, size.width, self._postprocess)

        return self._cases.get((size, batch), make)


def export_checkpoint(
    checkpoint: LoadedCheckpoint,
    options: ExportOptions,
    output_dir: str | Path,
    on_step: Callable[[Job, int, int], None] | None = None,
) -> RunResult:
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
    record = checkpoint.provenance()
    model = checkpoint.model.eval()
    jobs = plan(options, checkpoint.variant.name)
    reference = EagerReference(model, checkpoint.variant.anchors, options.postprocess)
    exporters = OnceCache()

    def exporter(job: Job) -> Exporter:
        def make_exporter() -> Exporter:
            import torch

            example = to_network_input(verification_photos(job.size or job.verify_sizes[0], job.batch))
            try:
                return job.fmt.exporter(model, torch.from_numpy(example), options.opset)
            except Exception as exc:  # exporters raise many types; name the artifact and the cause
                raise ExportError(
                    f"{job.file_name}: {job.fmt.name} export failed: {type(exc).__name__}: {exc}"
                ) from exc

        return exporters.get((job.fmt.name, job.fmt.exporter_key(job)), make_exporter)

    def trace_each_format_once() -> None:
        # one trace at a time, before any thread starts: torch's tracer (torch.jit.trace and the
        # TorchScript-based ONNX exporter) keeps global state, and two traces at once fail inside torch
        for job in jobs:
            exporter(job)

    def make(job: Job, staging: Path) -> Built:
        data = exporter(job).artifact(job, checkpoint.variant.anchors, artifact_provenance(record, job))
        (staging / job.file_name).write_bytes(data)
        if not options.verify:
            return Built(NOT_VERIFIED)
        return Built(verify_tensors(job, staging / job.file_name, reference))

    return run_builds(output_dir, record, jobs, make, options.workers, on_step, prepare=trace_each_format_once)
