"""Convert the ONNX artifacts of an export folder: simplified ONNX, OpenVINO IR in FP32/FP16/INT8.

Reads ``EXPORT_DIR/manifest.json``, checks every source file against its recorded sha256, builds each
result in a staging folder, verifies it against its source with ONNX Runtime, then moves it into place
and adds it to the manifest (of the output folder), which is written last.
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
from retinaface_export.onnx_export import read_onnx_provenance, set_metadata
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS, synthetic_photos, to_network_input
from retinaface_export.provenance import library_versions
from retinaface_export.runtimes import onnxruntime_runner
from retinaface_export.sizes import InputSize

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

    def __post_init__(self) -> None:
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


def _tensor_check(reference, candidate, images: list[np.ndarray], precision: str, input_format: str) -> dict:
    """Max abs error per output (and as a fraction of the reference's range), judged by the precision."""
    tolerance = PRECISIONS[precision]
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    worst_fraction = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for batch in images:
        expected = reference(to_network_input(batch))
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


def _provenance(source_path: Path, source: dict[str, Any], job: _Job, options: ConvertOptions) -> dict[str, Any]:
    provenance = read_onnx_provenance(source_path)
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
    job: _Job, source_path: Path, options: ConvertOptions, staging: Path, name: str, calibration: CalibrationSet | None
) -> tuple[list[str], dict[str, Any]]:
    """Make one artifact in ``staging``; returns its file names and manifest fields."""
    from retinaface_export.converters.onnxsim import simplify_onnx
    from retinaface_export.converters.openvino import OpenVinoRequest, convert_to_openvino, save_ir

    provenance = _provenance(source_path, job.source, job, options)
    inputs = _check_inputs(job.source)
    if options.target == "onnxsim":
        result = simplify_onnx(source_path, [to_network_input(b) for b in inputs], PRECISIONS["fp32"].atol)
        model = onnx.load_from_string(result.model)
        set_metadata(model, provenance | {"simplified": result.simplified})
        (staging / name).write_bytes(model.SerializeToString())
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
    model = convert_to_openvino(source_path, request, provenance)
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
        reference = onnxruntime_runner(source_path)  # only the tensor checks need the source running
        fields["tensor_check"] = _tensor_check(reference, candidate.run, inputs, job.precision, options.input_format)
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
    with staging_dir(out_dir) as staging:
        for index, job in enumerate(jobs):
            name = job.file_name(options)
            if on_step:
                on_step(name, index, len(jobs))
            source_path = export_dir / job.source["path"]
            log.info("converting %s -> %s", job.source["path"], name)
            try:
                files, fields = _build(job, source_path, options, staging, name, calibration)
            except ExportError as exc:
                raise ExportError(f"{name}: {exc}") from exc
            except Exception as exc:  # converters raise their libraries' many types: name the artifact
                raise ExportError(f"{name}: {options.target} conversion failed: {type(exc).__name__}: {exc}") from exc
            fmt = FORMATS[options.target]
            same_dir = out_dir.resolve() == export_dir.resolve()
            entry = (
                {
                    key: job.source[key]
                    for key in ("variant", "size", "dynamic", "batch", "opset", "num_anchors", "outputs")
                }
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
            result.added.append(entry)
        commit_files(staging, [f["path"] for a in result.added for f in [a, *a["companions"]]], out_dir)
    for artifact in result.added:
        out_manifest.add(artifact)
    out_manifest.versions = library_versions()
    out_manifest.write(out_dir)
    return result
