"""Convert the ONNX artifacts of an export folder: simplified ONNX, OpenVINO IR in FP32/FP16/INT8.

Reads ``EXPORT_DIR/manifest.json``, checks every source file against its recorded sha256, builds each
result in a staging folder, verifies it against its source with ONNX Runtime, then moves it into place
and adds it to the manifest (of the output folder), which is written last.

Work is done once where it can be: each source runs in ONNX Runtime once for all the checks of its
conversions, and sources with the same graph (the fixed-size files of one export differ only in their
declared shapes) are converted to OpenVINO once and reshaped per size. ``workers`` > 1 converts that
many artifacts at once in threads (INT8 always one at a time: NNCF is not made for concurrent use).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinaface_export import __version__
from retinaface_export.atomic import commit_files, staging_dir
from retinaface_export.calibration import CalibrationSet, load_calibration_set
from retinaface_export.contract import OUTPUT_NAMES
from retinaface_export.detection.backends import artifact_backend
from retinaface_export.detection.compare import compare_faces
from retinaface_export.detection.detector import Detector
from retinaface_export.errors import ExportError, ManifestError, UsageError
from retinaface_export.formats import FORMATS, PRECISIONS, companion_paths
from retinaface_export.hashing import sha256_file
from retinaface_export.manifest import MANIFEST_NAME, Manifest
from retinaface_export.onnx_export import decode_metadata, graph_fingerprint
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS, synthetic_photos, to_network_input
from retinaface_export.provenance import library_versions
from retinaface_export.runtimes import onnxruntime_runner
from retinaface_export.sizes import InputSize
from retinaface_export.workers import OnceCache, run_jobs

log = logging.getLogger(__name__)

TARGETS = ("onnxsim", "openvino")
# How many calibration photos the INT8 detection check runs on (originals, no augmentation).
_INT8_CHECK_IMAGES = 4


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert to. ``sizes`` empty: every fixed-size and dynamic ONNX artifact."""

    target: str
    precisions: tuple[str, ...] = ("fp32",)
    embed_mean: bool = False
    input_format: str = DEFAULT_INPUT_FORMAT
    calibration: Path | None = None
    sizes: tuple[InputSize, ...] = ()
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.workers}")
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; valid targets: {', '.join(TARGETS)}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UsageError(f"unknown precisions {unknown}; valid: {', '.join(PRECISIONS)}")
        if self.target == "onnxsim" and (set(self.precisions) != {"fp32"} or self.embed_mean):
            raise UsageError("onnxsim keeps the FP32 graph as it is: --precision and --embed-mean are for openvino")
        if "int8" in self.precisions and self.calibration is None:
            raise UsageError(
                "--precision int8 needs --calibration DIR: a folder of photos like those the model will see "
                "(a few dozen with faces; fewer are augmented)"
            )


@dataclass
class ConvertResult:
    """The output folder, its manifest and the artifacts added."""

    output_dir: Path
    manifest: Manifest
    added: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    source: dict[str, Any]
    precision: str

    def file_name(self, options: ConvertOptions) -> str:
        stem = self.source["path"].removesuffix(FORMATS["onnx"].suffix)
        if options.target == "onnxsim":
            return stem + FORMATS["onnxsim"].suffix
        tags = {DEFAULT_INPUT_FORMAT: "", "f32-nchw": "_mean", "u8-nhwc": "_u8"}[options.input_format]
        return f"{stem}_{self.precision}{tags}{FORMATS['openvino'].suffix}"


def checked_sources(export_dir: Path, manifest: Manifest, sizes: tuple[InputSize, ...]) -> list[dict[str, Any]]:
    """The manifest's ONNX artifacts (of ``sizes``), each checked to be present and unaltered.

    Raises:
        ManifestError: none to convert, or a listed file is missing or altered (its sha256 differs).
    """
    wanted = [s.as_list() for s in sizes]
    sources = [a for a in manifest.artifacts if a["format"] == "onnx" and (not sizes or a["size"] in wanted)]
    if not sources:
        which = f" of sizes {', '.join(map(str, sizes))}" if sizes else ""
        raise ManifestError(export_dir / MANIFEST_NAME, f"lists no ONNX artifacts{which} to convert")
    for artifact in sources:
        path = export_dir / artifact["path"]
        if not path.is_file():
            raise ManifestError(path, "listed in the manifest but missing")
        if sha256_file(path) != artifact["sha256"]:
            raise ManifestError(path, "altered since it was exported (sha256 differs from the manifest)")
    return sources


def _check_inputs(source: dict[str, Any]) -> list[np.ndarray]:
    """Photo-like BGR batches at the source's size (two sizes for a dynamic model)."""
    sizes = [source["size"]] if source["size"] else source["verification"]["sizes"][:2]
    batch = source.get("batch") or 1
    return [synthetic_photos(batch, h, w, seed=h + 3 * w) for h, w in sizes]


class _SharedWork:
    """Work several conversions share, done once: sources parsed, run and fingerprinted; OpenVINO bases.

    One ``openvino.convert_model`` per distinct graph, reshaped per size by each conversion.
    """

    def __init__(self) -> None:
        self._cache = OnceCache()

    def source_model(self, path: Path) -> onnx.ModelProto:
        """The parsed source; callers that change it work on a copy."""
        return self._cache.get(("model", path), lambda: onnx.load(str(path)))

    def source_runs(self, path: Path, source: dict[str, Any]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """``(photo batch, source outputs from ONNX Runtime)`` pairs at the source's size(s)."""

        def run() -> list[tuple[np.ndarray, list[np.ndarray]]]:
            runner = onnxruntime_runner(path)
            return [(batch, runner(to_network_input(batch))) for batch in _check_inputs(source)]

        return self._cache.get(("runs", path), run)

    def openvino_base(self, path: Path):
        """``openvino.convert_model`` of the source, shared by every source with the same graph."""
        from retinaface_export.converters.openvino import read_onnx

        fingerprint = self._cache.get(("fingerprint", path), lambda: graph_fingerprint(self.source_model(path)))
        return self._cache.get(("openvino", fingerprint), lambda: read_onnx(path))


def _tensor_check(candidate, runs: list[tuple[np.ndarray, list[np.ndarray]]], precision: str, input_format: str):
    """Max abs error per output (and as a fraction of the source's range), judged by the precision."""
    tolerance = PRECISIONS[precision]
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    worst_fraction = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for batch, expected in runs:
        got = candidate(INPUT_FORMATS[input_format](batch))
        for name, exp, out in zip(OUTPUT_NAMES, expected, got, strict=True):
            if out.shape != exp.shape:
                raise ExportError(f"{name} has shape {out.shape}, the source ONNX gives {exp.shape}")
            error = float(np.max(np.abs(out - exp))) if np.isfinite(out).all() else float("inf")
            span = float(exp.max() - exp.min()) or 1.0
            worst[name] = max(worst[name], error)
            worst_fraction[name] = max(worst_fraction[name], error / span)
    failed = []
    if tolerance.atol is not None:
        failed += [f"{n} {e:.2e} > {tolerance.atol:g}" for n, e in worst.items() if not e <= tolerance.atol]
    if tolerance.range_fraction is not None:
        limit = tolerance.range_fraction
        failed += [f"{n} {e:.1%} of its range > {limit:.0%}" for n, e in worst_fraction.items() if not e <= limit]
    if failed:
        raise ExportError("differs from its source ONNX: " + ", ".join(failed))
    return {
        "max_abs_error": worst,
        "max_error_of_range": worst_fraction,
        "atol": tolerance.atol,
        "range_fraction": tolerance.range_fraction,
    }


def _detection_check(source_path: Path, staged: Path, calibration: CalibrationSet, precision: str) -> dict:
    """F1 of the staged model's faces against the source ONNX's on calibration photos (score > 0.5)."""
    reference, candidate = Detector.from_artifact(source_path), Detector.from_artifact(staged)
    agreements = [
        compare_faces(reference.detect(image), candidate.detect(image))
        for image in calibration.images[:_INT8_CHECK_IMAGES]
    ]
    matched = sum(a.matched for a in agreements)
    total = sum(a.reference_faces + a.candidate_faces for a in agreements)
    f1 = 1.0 if total == 0 else 2 * matched / total
    result = {
        "images": len(agreements),
        "reference_faces": sum(a.reference_faces for a in agreements),
        "f1": f1,
        "min_f1": PRECISIONS[precision].min_f1,
    }
    if f1 < PRECISIONS[precision].min_f1:
        log.warning(
            "%s: detection F1 %.3f against FP32 on the calibration photos is below %.2f",
            staged.name,
            f1,
            PRECISIONS[precision].min_f1,
        )
    return result


def _provenance(source_model: onnx.ModelProto, source: dict[str, Any], job: _Job, options: ConvertOptions) -> dict:
    provenance = decode_metadata(source_model)
    provenance.update(
        {
            "tool_version": __version__,
            "converter": options.target,
            "precision": job.precision,
            "input_format": options.input_format,
            "mean_embedded": options.input_format != DEFAULT_INPUT_FORMAT,
            "source": source["path"],
            "source_sha256": source["sha256"],
        }
    )
    return provenance


def _build(
    job: _Job,
    source_path: Path,
    options: ConvertOptions,
    staging: Path,
    name: str,
    calibration: CalibrationSet | None,
    shared: _SharedWork,
) -> tuple[list[str], dict[str, Any]]:
    """Make one artifact in ``staging``; returns its file names and manifest fields."""
    from retinaface_export.converters.onnxsim import simplify_onnx
    from retinaface_export.converters.openvino import OpenVinoRequest, finish_ir, save_ir

    provenance = _provenance(shared.source_model(source_path), job.source, job, options)
    if options.target == "onnxsim":
        checks = [(to_network_input(batch), outputs) for batch, outputs in shared.source_runs(source_path, job.source)]
        result = simplify_onnx(shared.source_model(source_path), checks, PRECISIONS["fp32"].atol, provenance)
        (staging / name).write_bytes(result.model)
        if not result.simplified:
            log.warning("%s: kept the original graph: %s", name, result.reason)
        return [name], {
            "simplified": result.simplified,
            "reason": result.reason,
            "ops_before": result.ops_before,
            "ops_after": result.ops_after,
            "nodes_before": sum(result.ops_before.values()),
            "nodes_after": sum(result.ops_after.values()),
        }
    size = job.source["size"] or job.source["verification"]["sizes"][0]
    samples = calibration.samples(InputSize(*size)) if (calibration and job.precision == "int8") else None
    request = OpenVinoRequest(job.precision, options.input_format, samples)
    input_shape = job.source["inputs"][0]["shape"]
    model = finish_ir(shared.openvino_base(source_path), input_shape, request, provenance)
    files = save_ir(model, staging / name, job.precision)
    fields: dict[str, Any] = {
        "input_format": options.input_format,
        "mean_embedded": options.input_format != DEFAULT_INPUT_FORMAT,
    }
    if job.precision == "int8":
        assert calibration is not None
        fields["calibration"] = calibration.record() | {"samples": len(samples or [])}
        fields["detection_check"] = _detection_check(source_path, staging / name, calibration, job.precision)
    else:
        candidate = artifact_backend(staging / name)
        runs = shared.source_runs(source_path, job.source)
        fields["tensor_check"] = _tensor_check(candidate.run, runs, job.precision, options.input_format)
    return [f.name for f in files], fields


def convert_export(
    export_dir: str | Path,
    options: ConvertOptions,
    output_dir: str | Path | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> ConvertResult:
    """Convert the ONNX artifacts listed in ``export_dir``'s manifest as ``options`` say.

    Args:
        export_dir: a folder written by ``retinaface-export``.
        options: target, precisions, embedded preprocessing, calibration folder, sizes.
        output_dir: where results and their manifest go (default: ``export_dir``).
        on_step: called as ``on_step(file_name, index, total)`` before each artifact.

    Raises:
        ManifestError: no manifest, nothing to convert, a missing or altered source, another checkpoint's
            manifest in ``output_dir``.
        FileError: a bad calibration folder or image.
        ExportError: a converter failed or a result does not match its source.
    """
    export_dir = Path(export_dir)
    manifest = Manifest.read(export_dir)
    sources = checked_sources(export_dir, manifest, options.sizes)
    calibration = load_calibration_set(options.calibration) if "int8" in options.precisions else None
    out_dir = Path(output_dir) if output_dir else export_dir
    out_manifest = manifest if out_dir.resolve() == export_dir.resolve() else Manifest.read_if_present(out_dir)
    if out_manifest is None:
        out_manifest = Manifest(checkpoint=manifest.checkpoint)
    elif not out_manifest.same_checkpoint(manifest.checkpoint):
        raise ManifestError(
            out_dir / MANIFEST_NAME, "holds artifacts of another checkpoint; choose another --output-dir"
        )
    precisions = ("fp32",) if options.target == "onnxsim" else options.precisions
    jobs = [_Job(source, precision) for source in sources for precision in precisions]
    result = ConvertResult(out_dir, out_manifest)
    shared = _SharedWork()
    started = iter(range(len(jobs)))
    fmt = FORMATS[options.target]
    same_dir = out_dir.resolve() == export_dir.resolve()
    with staging_dir(out_dir) as staging:

        def convert(job: _Job) -> dict[str, Any]:
            name = job.file_name(options)
            if on_step:
                on_step(name, next(started), len(jobs))
            source_path = export_dir / job.source["path"]
            log.info("converting %s -> %s", job.source["path"], name)
            try:
                files, fields = _build(job, source_path, options, staging, name, calibration, shared)
            except ExportError as exc:
                raise ExportError(f"{name}: {exc}") from exc
            except Exception as exc:  # converters raise their libraries' many types: name the artifact
                raise ExportError(f"{name}: {options.target} conversion failed: {type(exc).__name__}: {exc}") from exc
            kept = ("variant", "size", "dynamic", "batch", "opset", "num_anchors", "outputs")
            return (
                {key: job.source[key] for key in kept}
                | {
                    "path": name,
                    "format": fmt.name,
                    "backend": fmt.backend,
                    "precision": job.precision,
                    "sha256": sha256_file(staging / name),
                    "bytes": sum((staging / f).stat().st_size for f in files),
                    "companions": [
                        {"path": p.name, "sha256": sha256_file(staging / p.name)}
                        for p in companion_paths(fmt, staging / name)
                    ],
                    "source": {
                        "path": job.source["path"] if same_dir else str((export_dir / job.source["path"]).resolve()),
                        "sha256": job.source["sha256"],
                    },
                }
                | fields
            )

        # NNCF is not made for concurrent use: INT8 conversions run one at a time.
        workers = 1 if "int8" in precisions else options.workers
        result.added = run_jobs(convert, jobs, workers)
        commit_files(staging, [f["path"] for a in result.added for f in [a, *a["companions"]]], out_dir)
    for artifact in result.added:
        out_manifest.add(artifact)
    out_manifest.versions = library_versions()
    out_manifest.write(out_dir)
    return result
