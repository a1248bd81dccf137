"""Latency and throughput of every artifact of an export folder and of PyTorch eager.

Latency rows run one request at a time, the network alone and end to end (pre-processing, network,
post-processing), all timed in turns; throughput rows use each runtime's own parallel machinery (each
format's ``Runtime.throughput``) at each batch the model takes. Every row runs for a time budget or a count of runs and
reports mean, std, min, median and p90; a row whose spread is too wide to compare is flagged. The machines
this runs on are shared: compare ratios measured in one run rather than absolute numbers across runs.

Before anything is timed, every artifact is checked against the sha256 its manifest records, and the eager
model is rebuilt from the export's own checkpoint (its sha256 checked) with the export's anchors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.bench.stats import UNSTABLE_RULE, UNSTABLE_SPREAD, Budget, Stats, interleaved
from retinaface_export.bench.system import machine_record, runtime_versions
from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.modes import image_faces
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.eager import eager_runner
from retinaface_export.errors import ManifestError, UsageError
from retinaface_export.format_api import ThroughputRunner, sequential_throughput
from retinaface_export.formats import FORMATS
from retinaface_export.inference.backends import Backend, artifact_backend, eager_backend
from retinaface_export.inference.detector import Detector
from retinaface_export.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, check_files
from retinaface_export.pipeline.convert import eager_checkpoint
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.sizes import InputSize, check_batch

log = logging.getLogger(__name__)

MODES = ("latency", "throughput")
EAGER_ARTIFACT = "(checkpoint)"


# Runtime threads and requests in flight: each costs memory and an OS thread, so a typo must not reach them.
MAX_THREADS = 256
MAX_STREAMS = 256


@dataclass(frozen=True)
class BenchSettings:
    """What to time and for how long."""

    modes: tuple[str, ...] = MODES
    budget: Budget = field(default_factory=Budget)
    # threads inside every runtime (the throughput mode shares them among its streams)
    threads: int = 2
    # batches of throughput rows, for models that take any batch (eager, dynamic artifacts)
    batches: tuple[int, ...] = (1,)
    # parallel requests of throughput rows; None: OpenVINO's THROUGHPUT hint decides, ONNX Runtime uses threads
    streams: int | None = None
    # sizes to time; empty: the sizes of the fixed-size artifacts (a dynamic export needs them)
    sizes: tuple[InputSize, ...] = ()
    eager: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if not self.modes or unknown:
            raise UsageError(f"unknown modes {unknown}; valid modes: {', '.join(MODES)}")
        if self.threads < 1 or any(b < 1 for b in self.batches) or not self.batches:
            raise UsageError("--threads and --batch must be at least 1")
        for batch in self.batches:
            check_batch(batch)  # a typo (--batch 100000) must not become a 28 GiB input
        if self.threads > MAX_THREADS:
            raise UsageError(f"--threads must be at most {MAX_THREADS}, got {self.threads}")
        if self.streams is not None and not 1 <= self.streams <= MAX_STREAMS:
            raise UsageError(f"--streams must be from 1 to {MAX_STREAMS}, got {self.streams}")


@dataclass(frozen=True)
class BenchRow:
    """One model × size × mode × batch measurement. Times in milliseconds, per request (a batch)."""

    artifact: str
    format: str
    backend: str
    precision: str
    input_format: str
    size: list[int]
    mode: str
    batch: int
    # requests in flight at once (1 in latency mode)
    streams: int
    # timed requests, and the wall time they took (seconds)
    runs: int
    seconds: float
    # images per second: batch x 1000 / median latency (latency mode), images / wall time (throughput mode)
    fps: float
    # throughput mode: fps x the requests' std / mean (None in latency mode)
    fps_std: float | None
    latency_ms_mean: float
    latency_ms_std: float
    latency_ms_min: float
    latency_ms_median: float
    latency_ms_p90: float
    # std / mean of the request latencies, and whether it is past the UNSTABLE_RULE
    spread: float
    unstable: bool
    # latency mode only (None in throughput rows), all timed in turns with the network:
    preprocess_ms_median: float | None = None
    postprocess_ms_median: float | None = None
    e2e_ms_median: float | None = None
    e2e_ms_p90: float | None = None
    # (preprocess + postprocess) / network, medians
    overhead_pct: float | None = None
    # faces the whole pipeline finds on the image (score > 0.5): the same at every row of one size
    faces: int | None = None
    # what the runtime executed where it decides (OpenVINO: "f32", or "bf16+f32" on a bf16 CPU); None for
    # runtimes that execute the file's own precision
    executed: str | None = None


@dataclass
class BenchReport:
    """Rows, and what the reader needs to trust them."""

    export_dir: Path
    settings: BenchSettings
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_record)
    versions: dict[str, str] = field(default_factory=runtime_versions)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        settings = self.settings
        return {
            "export_dir": str(self.export_dir),
            "machine": self.machine,
            "versions": self.versions,
            "settings": {
                "modes": list(settings.modes),
                "time_s": settings.budget.seconds,
                "runs": settings.budget.runs,
                "warmup": settings.budget.warmup,
                "threads": settings.threads,
                "batches": list(settings.batches),
                "streams": settings.streams,
                "sizes": [s.as_list() for s in settings.sizes],
                "eager": settings.eager,
            },
            "unstable_rule": UNSTABLE_RULE,
            "notes": self.notes,
            "rows": [asdict(row) for row in self.rows],
        }


@dataclass(frozen=True)
class _Model:
    """One thing to time at one size: an artifact, or eager."""

    name: str
    fmt: str
    precision: str
    input_format: str
    # (threads, streams or None for the runtime's choice) -> (streams used, throughput runner)
    throughput: Callable[[int, int | None], tuple[int, ThroughputRunner]]
    # opened as deployed (the runtime's optimisations, the bench's threads), with the size fixed to the row's
    backend: Backend
    # what the runtime executes it in, where the runtime decides (see BenchRow.executed)
    executed: str | None
    # batches of its throughput rows
    batches: tuple[int, ...]


def _plan(export_dir: Path, manifest: Manifest, settings: BenchSettings) -> dict[InputSize, list[ArtifactRecord]]:
    """The artifacts to time at each size."""
    fixed = [a for a in manifest.artifacts if a.size]
    dynamic = [a for a in manifest.artifacts if a.dynamic]
    available = sorted({InputSize(*a.size) for a in fixed if a.size})
    sizes = sorted(set(settings.sizes)) if settings.sizes else available
    if not sizes:
        if dynamic:
            names = ", ".join(a.path for a in dynamic)
            raise UsageError(f"{export_dir} holds only dynamic artifacts ({names}): pass --size to time them")
        raise ManifestError(export_dir / MANIFEST_NAME, "lists no artifacts to time")
    plan = {
        size: sorted([a for a in fixed if a.size == (size.height, size.width)] + dynamic, key=lambda a: a.path)
        for size in sizes
    }
    empty = [size for size, artifacts in plan.items() if not artifacts]
    if empty:
        shown = ", ".join(map(str, available)) or "none"
        raise UsageError(f"no artifact of size {', '.join(map(str, empty))} in {export_dir} (sizes there: {shown})")
    for artifact in {a.path: a for artifacts in plan.values() for a in artifacts}.values():
        check_files(export_dir, artifact)
    return plan


def _artifact_model(export_dir: Path, artifact: ArtifactRecord, size: InputSize, settings: BenchSettings) -> _Model:
    path = export_dir / artifact.path
    backend = artifact_backend(path, threads=settings.threads, optimize=True)
    runtime = FORMATS[artifact.format].runtime
    batch = backend.batch or 1
    batches = settings.batches if backend.batch is None else (backend.batch,)
    return _Model(
        name=artifact.path,
        fmt=artifact.format,
        precision=artifact.precision,
        input_format=artifact.input_format,
        throughput=lambda threads, streams: runtime.throughput(path, threads, streams),
        backend=replace(backend, input_size=size, batch=batch),
        executed=runtime.execution(path).get("executed"),
        batches=batches,
    )


def _eager_model(checkpoint: LoadedCheckpoint, size: InputSize, settings: BenchSettings) -> _Model:
    return _Model(
        name=EAGER_ARTIFACT,
        fmt="torch",
        precision="fp32",
        input_format=DEFAULT_INPUT_FORMAT,
        # torch's parallelism is inside each request (torch.set_num_threads, once for the whole bench)
        throughput=lambda threads, streams: (1, sequential_throughput(eager_runner(checkpoint.model))),
        backend=replace(eager_backend(checkpoint, size), batch=1),
        executed=None,
        batches=settings.batches,
    )


def _batch_of(image: np.ndarray, size: InputSize, batch: int) -> np.ndarray:
    box = Letterbox.fit(image.shape[0], image.shape[1], size.height, size.width)
    return np.repeat(box.apply(image)[None], batch, axis=0)


def _row(model: _Model, size: InputSize, mode: str, batch: int, streams: int, stats: Stats, **extra: Any) -> BenchRow:
    fps = extra.pop("fps", batch * 1000.0 / stats.median)
    return BenchRow(
        artifact=model.name,
        format=model.fmt,
        backend=model.backend.name,
        precision=model.precision,
        input_format=model.input_format,
        size=size.as_list(),
        mode=mode,
        batch=batch,
        streams=streams,
        runs=stats.runs,
        seconds=extra.pop("seconds"),
        fps=fps,
        fps_std=extra.pop("fps_std", None),
        latency_ms_mean=stats.mean,
        latency_ms_std=stats.std,
        latency_ms_min=stats.min,
        latency_ms_median=stats.median,
        latency_ms_p90=stats.p90,
        spread=stats.spread,
        unstable=stats.unstable,
        executed=model.executed,
        **extra,
    )


def measure_latency(model: _Model, image: np.ndarray, size: InputSize, settings: BenchSettings) -> BenchRow:
    """One request at a time: the network, pre-processing, post-processing and the whole pipeline, in turns."""
    backend = model.backend
    batch = backend.batch or 1
    fit = Letterbox.stretch if backend.resize == "stretch" else Letterbox.fit  # as retinaface-detect fits it
    box = fit(image.shape[0], image.shape[1], size.height, size.width)
    data = backend.prepare(np.repeat(box.apply(image)[None], batch, axis=0))
    outputs = backend.run(data)
    config = DetectionConfig()
    detector = Detector(backend, config)
    faces: list[Any] = []
    network, pre, post, e2e = interleaved(
        [
            lambda: backend.run(data),
            lambda: backend.prepare(box.apply(image)[None]),
            # whatever the artifact leaves to do: decode + NMS for raw outputs, less for decode/nms artifacts
            lambda: image_faces(outputs, 0, backend.postprocess, backend.anchors, size.height, size.width, config),
            lambda: faces.__setitem__(slice(None), detector.detect(image)),
        ],
        settings.budget,
    )
    stats = Stats.of(network)
    pre_ms, post_ms = float(np.median(pre)), float(np.median(post))
    return _row(
        model,
        size,
        "latency",
        batch,
        1,
        stats,
        seconds=float((network.sum() + pre.sum() + post.sum() + e2e.sum()) / 1e3),
        preprocess_ms_median=pre_ms,
        postprocess_ms_median=post_ms,
        e2e_ms_median=float(np.median(e2e)),
        e2e_ms_p90=float(np.percentile(e2e, 90)),
        overhead_pct=100.0 * (pre_ms + post_ms) / stats.median,
        faces=len(faces),
    )


def measure_throughput(
    model: _Model, image: np.ndarray, size: InputSize, batch: int, settings: BenchSettings
) -> BenchRow:
    """Requests kept in flight by the runtime's own machinery, on batches of ``batch`` copies of the image."""
    streams, run = model.throughput(settings.threads, settings.streams)
    data = model.backend.prepare(_batch_of(image, size, batch))
    result = run(data, settings.budget)
    stats = Stats.of(result.latencies_ms)
    fps = result.images / result.seconds
    return _row(
        model,
        size,
        "throughput",
        batch,
        streams,
        stats,
        seconds=result.seconds,
        fps=fps,
        # in steady state fps = streams x batch / request latency, so it varies as the request latencies do
        fps_std=fps * stats.spread,
    )


def _time_model(
    model: _Model,
    image: np.ndarray,
    size: InputSize,
    settings: BenchSettings,
    report: BenchReport,
    on_step: Callable[[str], None] | None,
) -> None:
    if "latency" in settings.modes:
        if on_step:
            on_step(f"{model.name} latency at {size}")
        report.rows.append(measure_latency(model, image, size, settings))
    if "throughput" in settings.modes:
        if set(settings.batches) - set(model.batches):
            report.notes.append(f"{model.name}: fixed batch {model.batches[0]}, timed at that batch only")
        for batch in model.batches:
            if on_step:
                on_step(f"{model.name} throughput at {size}, batch {batch}")
            report.rows.append(measure_throughput(model, image, size, batch, settings))


def bench_export(
    export_dir: str | Path,
    image: np.ndarray,
    settings: BenchSettings | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every artifact in ``export_dir`` (and PyTorch eager) at each size, in each mode of ``settings``.

    Args:
        export_dir: a folder with a ``manifest.json``.
        image: the BGR photo every row runs on (letterboxed into each size).
        settings: modes, budget, threads, batches, streams, sizes, eager; defaults when None.
        on_step: called with a label as each row starts, for progress displays.

    Returns:
        The rows (per size: eager first, then artifacts by file name; latency then throughput) and notes.

    Raises:
        ManifestError: no manifest, nothing to time, or an artifact missing or altered (sha256).
        UsageError: a dynamic-only export without ``settings.sizes``, or sizes no artifact has.
        CheckpointError: the export's checkpoint file was replaced (sha256 differs) or fails to load.
    """
    settings = settings or BenchSettings()
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    plan = _plan(export_dir, manifest, settings)
    report = BenchReport(export_dir=export_dir, settings=settings)
    checkpoint = None
    if settings.eager:
        checkpoint, note = eager_checkpoint(manifest)
        if note:
            log.warning("%s", note)
            report.notes.append(note)
    else:
        report.notes.append("eager skipped (--no-eager)")
    import torch

    torch.set_num_threads(settings.threads)
    for size, artifacts in plan.items():
        if checkpoint:
            _time_model(_eager_model(checkpoint, size, settings), image, size, settings, report, on_step)
        for artifact in artifacts:
            # opened just before timing: no idle session of another artifact holds threads meanwhile
            model = _artifact_model(export_dir, artifact, size, settings)
            _time_model(model, image, size, settings, report, on_step)
            del model  # its sessions go before the next opens
    report.notes = list(dict.fromkeys(report.notes))
    for row in report.rows:
        if row.unstable:
            log.warning(
                "%s %s at %dx%d: request latencies spread %.0f%% of their mean (over %.0f%%): compare with care",
                row.artifact,
                row.mode,
                *row.size,
                100 * row.spread,
                100 * UNSTABLE_SPREAD,
            )
    return report
