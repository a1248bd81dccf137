"""Latency of every artifact of an export folder and of PyTorch eager, network only and end to end.

Medians and p90 over ``runs`` after ``warmup``, one thread count for every runtime; the machines this runs
on are shared, so compare ratios measured in one run rather than absolute numbers across runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.detection.backends import Backend, artifact_backend, eager_backend
from retinaface_export.detection.detector import Detector
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.postprocess import DetectionConfig, postprocess
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.formats import FORMATS
from retinaface_export.manifest import Manifest
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.sizes import InputSize
from retinaface_export.synthetic import synthetic_checkpoint
from retinaface_export.variants import get_variant


@dataclass(frozen=True)
class BenchRow:
    """One backend × precision × size measurement (milliseconds)."""

    artifact: str
    format: str
    backend: str
    precision: str
    input_format: str
    size: list[int]
    latency_ms_median: float
    latency_ms_p90: float
    fps: float
    preprocess_ms_median: float
    postprocess_ms_median: float
    e2e_ms_median: float
    e2e_ms_p90: float
    # (preprocess + postprocess) / network, medians; both timed in the same loop as the network
    overhead_pct: float


def _interleaved(fns: list[Callable[[], object]], runs: int, warmup: int) -> list[np.ndarray]:
    """Milliseconds of each of ``fns`` per run, the functions taking turns within every run.

    Taking turns puts every function under the same machine load (these machines are shared), so their
    ratios hold better than those of one function timed after another.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = np.empty((len(fns), runs))
    for i in range(runs):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[j, i] = (time.perf_counter() - start) * 1e3
    return list(times)


def _threaded_runner(fmt_name: str, path: Path, threads: int):
    # deployed with the runtime's optimisations on
    return FORMATS[fmt_name].open_runner(path, threads=threads, optimize=True)


def measure(
    backend: Backend,
    image: np.ndarray,
    size: InputSize,
    runs: int,
    warmup: int,
    artifact: str,
    fmt: str,
    precision: str,
    input_format: str,
) -> BenchRow:
    """Network-only and end-to-end latency of ``backend`` at ``size`` on ``image``."""
    box = Letterbox.fit(image.shape[0], image.shape[1], size.height, size.width)
    data = backend.prepare(box.apply(image)[None])
    outputs = [out[0] for out in backend.run(data)]
    priors = prior_boxes(backend.anchors, size.height, size.width)
    config = DetectionConfig()
    detector = Detector(Backend(**{**backend.__dict__, "input_size": size, "batch": 1}), config)
    network, pre, post, e2e = _interleaved(
        [
            lambda: backend.run(data),
            lambda: backend.prepare(box.apply(image)[None]),
            lambda: postprocess(*outputs, priors, backend.anchors.variance, (size.width, size.height), config),
            lambda: detector.detect(image),
        ],
        runs,
        warmup,
    )
    median = float(np.median(network))
    return BenchRow(
        artifact=artifact,
        format=fmt,
        backend=backend.name,
        precision=precision,
        input_format=input_format,
        size=size.as_list(),
        latency_ms_median=median,
        latency_ms_p90=float(np.percentile(network, 90)),
        fps=1000.0 / median,
        preprocess_ms_median=float(np.median(pre)),
        postprocess_ms_median=float(np.median(post)),
        e2e_ms_median=float(np.median(e2e)),
        e2e_ms_p90=float(np.percentile(e2e, 90)),
        overhead_pct=100.0 * (float(np.median(pre)) + float(np.median(post))) / median,
    )


def bench_export(
    export_dir: str | Path,
    image: np.ndarray,
    runs: int = 30,
    warmup: int = 5,
    threads: int = 2,
    on_step: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Measure every fixed-size artifact in ``export_dir`` and PyTorch eager at each of their sizes."""
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    torch.set_num_threads(threads)
    record = manifest.checkpoint
    if record.get("synthetic"):
        checkpoint = synthetic_checkpoint(get_variant(record["variant"]))
    else:
        checkpoint = load_checkpoint(record["path"])
    rows = []
    fixed = [a for a in manifest.artifacts if a.size and a.batch == 1]
    for size in sorted({a.size for a in fixed if a.size}):
        input_size = InputSize(*size)
        if on_step:
            on_step(f"torch-eager {input_size}")
        eager = eager_backend(checkpoint, input_size)
        rows.append(
            measure(eager, image, input_size, runs, warmup, "(checkpoint)", "torch", "fp32", DEFAULT_INPUT_FORMAT)
        )
        for artifact in sorted((a for a in fixed if a.size == size), key=lambda a: a.path):
            if on_step:
                on_step(artifact.path)
            backend = artifact_backend(export_dir / artifact.path)
            backend = Backend(
                **{
                    **backend.__dict__,
                    "run": _threaded_runner(artifact.format, export_dir / artifact.path, threads),
                }
            )
            rows.append(
                measure(
                    backend,
                    image,
                    input_size,
                    runs,
                    warmup,
                    artifact.path,
                    artifact.format,
                    artifact.precision,
                    artifact.input_format,
                )
            )
    return rows


def rows_to_dicts(rows: list[BenchRow]) -> list[dict]:
    """JSON form."""
    return [asdict(row) for row in rows]
