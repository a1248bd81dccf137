"""The one pipeline of ``retinaface-export`` and ``retinaface-convert``: plan, build, verify, commit.

A conversion is a build whose source is an artifact: both commands hand :func:`run_builds` their jobs and a
``make`` function that writes one artifact into the staging folder and verifies it; the pipeline keeps the
rest in one place: the output folder's manifest and the "another checkpoint" rule, the artifact record, the
provenance written inside every artifact, the staging folder, and the commit (nothing enters the output
folder until every artifact is built and verified; the manifest is written last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.comparison import Case, compare_detections, compare_outputs
from retinaface_export.contract import INPUT_NAME, MEAN_BGR, OUTPUT_WIDTHS
from retinaface_export.errors import ExportError, ManifestError, RetinaFaceExportError
from retinaface_export.format_api import Job
from retinaface_export.formats import runtime_libraries
from retinaface_export.hashing import sha256_file
from retinaface_export.manifest import MANIFEST_NAME, ArtifactRecord, FileRef, Manifest, TensorSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS, synthetic_photos
from retinaface_export.provenance import TOOL_NAME, library_versions
from retinaface_export.records import Built, Verification
from retinaface_export.safety.atomic import commit_run, output_lock, staging_dir
from retinaface_export.sizes import InputSize
from retinaface_export.version import tool_version
from retinaface_export.workers import run_jobs

log = logging.getLogger(__name__)

# Batch of the extra verification run of a dynamic artifact (checks the batch axis really is dynamic).
DYNAMIC_CHECK_BATCH = 2


@dataclass
class RunResult:
    """The output folder, its manifest as written, and the artifacts this run added to it."""

    output_dir: Path
    manifest: Manifest
    added: list[ArtifactRecord] = field(default_factory=list)


class Reference(Protocol):
    """What artifacts are verified against: outputs on the verification photos of each size and batch."""

    name: str

    def case(self, size: InputSize, batch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(BGR uint8 photos N×H×W×3, reference outputs on them)``."""
        ...


def verification_photos(size: InputSize, batch: int) -> np.ndarray:
    """The deterministic photo-like batch every artifact of ``size`` is verified on."""
    return synthetic_photos(batch, size.height, size.width, seed=size.height * 7 + size.width)


def verification_batches(job: Job) -> tuple[int, ...]:
    """A fixed-size artifact at its batch; a dynamic one at its batch and at another."""
    return (job.batch,) if not job.dynamic else tuple(dict.fromkeys((job.batch, DYNAMIC_CHECK_BATCH)))


def verify_tensors(job: Job, staged: Path, reference: Reference) -> Verification:
    """Run the staged artifact at every size and batch it claims and judge it against ``reference``.

    ``reference`` gives outputs of the artifact's own kind (raw, decoded, or NMS'd detections); raw and
    decoded outputs are judged tensor by tensor, detections face by face.

    Raises:
        ExportError: naming every output off, with its error and the tolerance.
    """
    runner = job.fmt.open_runner(staged)
    prepare = INPUT_FORMATS[job.input_format]
    cases = []
    for size in job.verify_sizes:
        for batch in verification_batches(job):
            photos, expected = reference.case(size, batch)
            cases.append(Case(f"{size} batch {batch}", expected, runner(prepare(photos))))
    tolerance = PRECISIONS[job.precision]
    if job.postprocess.detections:
        verdict = compare_detections(cases, tolerance, job.postprocess.settings.score_threshold)
    else:
        verdict = compare_outputs(cases, tolerance, job.postprocess.outputs)
    if not verdict.passed:
        raise ExportError(f"{job.file_name}: differs from {reference.name}: {'; '.join(verdict.failures)}")
    record = verdict.record() | {"reference": reference.name, "sizes": [s.as_list() for s in job.verify_sizes]}
    return Verification.from_record(record | execution_record(job, staged))


def execution_record(job: Job, staged: Path) -> dict[str, Any]:
    """``{"executed": ...}``: what the runtime ran the artifact in on this machine, where the runtime decides."""
    executed = job.fmt.runtime.execution(staged)
    return {"executed": executed} if executed else {}


def artifact_provenance(checkpoint: dict[str, Any], job: Job) -> dict[str, Any]:
    """The provenance block written inside ``job``'s artifact: every entry describes that artifact."""
    provenance = {
        "tool": TOOL_NAME,
        "tool_version": tool_version(),
        "format": job.fmt.name,
        "variant": checkpoint["variant"],
        "input_size": job.size.as_list() if job.size else "dynamic",
        "batch": "dynamic" if job.dynamic else job.batch,
        "opset": job.opset,
        "precision": job.precision,
        "input_format": job.input_format,
        "mean_embedded": job.input_format != DEFAULT_INPUT_FORMAT,
        "mean_bgr": list(MEAN_BGR),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "checkpoint_state_dict_sha256": checkpoint["state_dict_sha256"],
        "synthetic": checkpoint["synthetic"],
        "anchors": checkpoint["anchors"],
        "input": INPUT_NAME,
        "outputs": list(job.postprocess.outputs),
        "postprocess": job.postprocess.record(),
    }
    if job.source is not None:
        provenance |= {"source": job.source.path, "source_sha256": job.source.sha256}
    return provenance


def num_anchors(checkpoint: dict[str, Any], size: InputSize | None) -> int | None:
    """Rows of each output at ``size`` with the checkpoint's anchors (None when dynamic)."""
    return AnchorConfig.from_mapping(checkpoint["anchors"]).num_anchors(size.height, size.width) if size else None


def _tensor_specs(job: Job, anchors: int | None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    batch: int | str = "batch" if job.dynamic else job.batch
    height: int | str = job.size.height if job.size else "height"
    width: int | str = job.size.width if job.size else "width"
    rows: int | str = anchors if anchors is not None else "anchors"
    if job.input_format == "u8-nhwc":
        data = TensorSpec(INPUT_NAME, (batch, height, width, 3), "u8", "NHWC")
    else:
        data = TensorSpec(INPUT_NAME, (batch, 3, height, width), "f32", "NCHW")
    if job.postprocess.detections:
        kept = job.postprocess.settings.max_detections
        detections = TensorSpec("detections", (batch, kept, 15), "f32")
        return (data,), (detections, TensorSpec("num_detections", (batch,), "i64"))
    widths = OUTPUT_WIDTHS if job.postprocess.raw else (4, None, 10)
    outputs = tuple(
        TensorSpec(n, (batch, rows, w) if w else (batch, rows), "f32")
        for n, w in zip(job.postprocess.outputs, widths, strict=True)
    )
    return (data,), outputs


def _record(job: Job, staging: Path, checkpoint: dict[str, Any], built: Built) -> ArtifactRecord:
    main = staging / job.file_name
    companions = tuple(FileRef(p.name, sha256_file(p)) for p in job.fmt.companions(main))
    anchors = num_anchors(checkpoint, job.size)
    inputs, outputs = _tensor_specs(job, anchors)
    return ArtifactRecord(
        path=job.file_name,
        format=job.fmt.name,
        backend=job.fmt.backend,
        variant=checkpoint["variant"],
        size=(job.size.height, job.size.width) if job.size else None,
        batch=None if job.dynamic else job.batch,
        precision=job.precision,
        input_format=job.input_format,
        opset=job.opset,
        sha256=sha256_file(main),
        bytes=main.stat().st_size + sum((staging / c.path).stat().st_size for c in companions),
        num_anchors=anchors,
        verified_sizes=tuple((s.height, s.width) for s in job.verify_sizes),
        inputs=inputs,
        outputs=outputs,
        companions=companions,
        source=FileRef(job.source.path, job.source.sha256) if job.source else None,
        verification=built.verification.record(),
        conversion=built.conversion,
        postprocess=job.postprocess.record(),
    )


def run_builds(
    output_dir: str | Path,
    checkpoint: dict[str, Any],
    jobs: list[Job],
    make: Callable[[Job, Path], Built],
    workers: int = 1,
    on_step: Callable[[Job, int, int], None] | None = None,
    prepare: Callable[[], None] | None = None,
) -> RunResult:
    """Build and verify ``jobs`` in a staging folder, then commit them and the manifest into ``output_dir``.

    Args:
        output_dir: created if needed; an earlier export of the same checkpoint there is extended (same
            file names replaced), one of another checkpoint is refused.
        checkpoint: the checkpoint record the artifacts come from (manifest and provenance).
        jobs: what to build.
        make: writes ``job.file_name`` (and companions) into the staging folder and verifies it; returns
            the verification and conversion records.
        workers: jobs built at once, in threads.
        on_step: called as ``on_step(job, index, total)`` as each job starts.
        prepare: work shared by the jobs that must run once, before them and in this thread (after the
            output folder is checked, so a refused run does not pay for it).

    Raises:
        OutputDirError: ``output_dir`` cannot be written (a file, a dangling link, read-only).
        FolderBusyError: another run holds the folder past the lock's timeout.
        ManifestError: ``output_dir`` holds an export of another checkpoint, or a malformed manifest.
        ExportError: a build failed or an artifact does not match its reference (named).
        CommitError: the artifacts could not all be moved in (nothing was: the folder is as it was).
    """
    # The folder lock is held from reading the manifest to committing it: two runs into one folder (any
    # commands) take turns, so the manifest always lists exactly the files.
    with output_lock(output_dir) as folder:
        return _run_locked(folder, checkpoint, jobs, make, workers, on_step, prepare)


def _run_locked(
    output_dir: Path,
    checkpoint: dict[str, Any],
    jobs: list[Job],
    make: Callable[[Job, Path], Built],
    workers: int,
    on_step: Callable[[Job, int, int], None] | None,
    prepare: Callable[[], None] | None,
) -> RunResult:
    previous = Manifest.read_if_present(output_dir)
    if previous is not None and not previous.same_checkpoint(checkpoint):
        raise ManifestError(
            output_dir / MANIFEST_NAME,
            f"holds an export of another checkpoint ({previous.checkpoint.get('variant')}, "
            f"sha256 {str(previous.checkpoint.get('sha256'))[:12]}); choose another --output-dir",
        )
    manifest = previous or Manifest(checkpoint=checkpoint)
    manifest.checkpoint = checkpoint
    started = iter(range(len(jobs)))

    if prepare:
        prepare()
    with staging_dir(output_dir) as staging:

        def build(job: Job) -> ArtifactRecord:
            if on_step:
                on_step(job, next(started), len(jobs))
            log.info("building %s", job.file_name)
            try:
                return _record(job, staging, checkpoint, make(job, staging))
            except RetinaFaceExportError:
                raise
            except Exception as exc:  # exporters and converters raise their libraries' many types
                verb = "export" if job.source is None else "conversion"
                raise ExportError(
                    f"{job.file_name}: {job.fmt.name} {verb} failed: {type(exc).__name__}: {exc}"
                ) from exc

        added = run_jobs(build, jobs, workers)
        for record in added:
            manifest.add(record)
        manifest.versions = library_versions(runtime_libraries())
        names = [f.path for record in added for f in record.files()]
        commit_run(staging, names, output_dir, MANIFEST_NAME, manifest.to_json().encode())
    return RunResult(output_dir, manifest, added)
