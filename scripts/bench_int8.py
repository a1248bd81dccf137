"""INT8 figures of mobilenet0.25: accuracy on photos calibration never saw, and speed against NNCF's ceiling.

Three tables, in Markdown:

1. Bias correction (issue 11): NNCF ``fast_bias_correction=True`` against ``False``, shipped settings
   otherwise, without accuracy control: strict F1 against FP32 on the held-out validation photos and
   on the calibration photos, and the time ``nncf.quantize`` takes.
2. The shipped INT8 (:func:`retinaface_export.quantize.quantize_detector`: MIXED preset, softmax in
   float, accuracy control at a 0.03 F1 drop) at each size: strict F1 against FP32 on the
   held-out photos, layers left in float, and the speed-up over FP32 next to the speed-up of the same
   IR quantised whole with the PERFORMANCE preset (the ceiling), timed in turns (FP32, shipped INT8,
   PERFORMANCE INT8, repeated; medians; OpenVINO CPU, f32 inference precision, LATENCY hint, 2 threads)
   on the crowd photo. Goals (issue 14): F1 >= 0.97 and speed-up >= 0.9 × the ceiling's.
3. With ``--folds K``: three-way cross-validation, every photo held out of calibration and of accuracy
   control once (K blocks by content hash; the rest split as ``retinaface-convert`` splits a folder), strict
   F1 pooled over the held-out photos' letterboxed, stretched and scaled views: the figure for photos the
   project has never seen.

Usage: ``python scripts/bench_int8.py [--sizes 320 640] [--runs 40] [--folds 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SIZES = (320, 416, 512, 608, 640)
F1_GOAL = 0.97
SPEED_GOAL = 0.9
THREADS = 2


def _ir(onnx_path: Path, size: int):
    """The FP32 IR at ``size`` as ``retinaface-convert`` makes it: converted, reshaped, shape arithmetic folded."""
    from openvino.passes import ConstantFolding, Manager

    from retinaface_export.converters.openvino.runtime import openvino_module

    model = openvino_module().convert_model(str(onnx_path))
    model.reshape({0: [1, 3, size, size]})
    folding = Manager()
    folding.register_pass(ConstantFolding())
    folding.run_passes(model)
    return model


def _export(weights: Path, sizes: list[int], out: Path) -> tuple[dict[int, Path], object]:
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    checkpoint = load_checkpoint(weights)
    export_checkpoint(checkpoint, ExportOptions(tuple(InputSize(s, s) for s in sizes), ("onnx",)), out)
    paths = {s: next(out.glob(f"*_{s}x{s}.onnx")) for s in sizes}
    return paths, checkpoint.variant.anchors


def _latencies(models: list, data: np.ndarray, runs: int) -> list[float]:
    """Median milliseconds of each model, timed in turns (one run of each, ``runs`` times)."""
    from retinaface_export.converters.openvino.runtime import compile_model

    requests = [compile_model(m, THREADS).create_infer_request() for m in models]
    for request in requests:
        for _ in range(5):
            request.infer({0: data})
    times: list[list[float]] = [[] for _ in requests]
    for _ in range(runs):
        for request, spent in zip(requests, times, strict=True):
            start = time.perf_counter()
            request.infer({0: data})
            spent.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def _f1(model, quantized, samples: list[np.ndarray], metric) -> float:
    from retinaface_export.formats import FORMATS

    run = FORMATS["openvino"].int8.run
    return metric(run(model, samples), run(quantized, samples))[0]


def _int8():
    """OpenVINO's INT8 backend, as ``retinaface-convert`` hands it to NNCF."""
    from retinaface_export.formats import FORMATS

    return FORMATS["openvino"].int8


def _request(split, shape, anchors):
    """The shipped INT8 request (accuracy control at the default drop); a missed target is reported, not fatal."""
    from retinaface_export.quantize import Int8Request

    return Int8Request(photos=split, size=shape, batch=1, anchors=anchors, allow_accuracy_drop=True)


def bias_correction_rows(irs: dict, split, anchors, sizes: list[int]) -> list[dict]:
    """Table 1: fast against full bias correction, shipped settings otherwise, no accuracy control."""
    from retinaface_export.detection.metric import DetectionF1
    from retinaface_export.quantize import QuantizationSettings, quantize
    from retinaface_export.sizes import InputSize

    rows = []
    for size in sizes:
        shape = InputSize(size, size)
        metric = DetectionF1(anchors, shape)
        calibration, validation = split.calibration.samples(shape), split.validation.samples(shape)
        for fast in (True, False):
            start = time.perf_counter()
            quantized = quantize(_int8(), irs[size], calibration, QuantizationSettings(fast_bias_correction=fast))
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "size": size,
                    "fast_bias_correction": fast,
                    "f1_validation": _f1(irs[size], quantized, validation, metric),
                    "f1_calibration": _f1(irs[size], quantized, calibration, metric),
                    "seconds": seconds,
                }
            )
            logging.info("bias correction %s", rows[-1])
    return rows


def goal_rows(irs: dict, split, anchors, sizes: list[int], image: np.ndarray, runs: int) -> list[dict]:
    """Table 2: the shipped INT8 against FP32 and against the PERFORMANCE-whole ceiling."""
    from retinaface_export.detection.letterbox import Letterbox
    from retinaface_export.detection.metric import DetectionF1
    from retinaface_export.preprocess import to_network_input
    from retinaface_export.quantize import WHOLE_GRAPH_PERFORMANCE, quantize, quantize_detector
    from retinaface_export.sizes import InputSize

    rows = []
    for size in sizes:
        shape = InputSize(size, size)
        start = time.perf_counter()
        shipped, record = quantize_detector(_int8(), irs[size], _request(split, shape, anchors))
        seconds = time.perf_counter() - start
        ceiling = quantize(_int8(), irs[size], split.calibration.samples(shape), WHOLE_GRAPH_PERFORMANCE)
        data = to_network_input(Letterbox.fit(*image.shape[:2], size, size).apply(image))
        fp32_ms, int8_ms, ceiling_ms = _latencies([irs[size], shipped, ceiling], data, runs)
        accuracy = record["accuracy"]
        rows.append(
            {
                "size": size,
                "f1": accuracy["int8"],
                "validation_samples": accuracy["validation_samples"],
                "float_layers": accuracy["float_layers"],
                "seconds": seconds,
                "fp32_ms": fp32_ms,
                "int8_ms": int8_ms,
                "ceiling_ms": ceiling_ms,
                "speedup": fp32_ms / int8_ms,
                "ceiling_speedup": fp32_ms / ceiling_ms,
                "ceiling_f1": _f1(irs[size], ceiling, split.validation.samples(shape), DetectionF1(anchors, shape)),
            }
        )
        rows[-1]["speed_ratio"] = rows[-1]["speedup"] / rows[-1]["ceiling_speedup"]
        logging.info("goal %s", rows[-1])
    return rows


def test_views(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The views held-out photos are judged on.

    Every augmentation letterboxed and stretched, and the photo scaled to 50% and 75% (smaller faces),
    letterboxed: what users feed (``retinaface-detect`` letterboxes, OMZ-style clients stretch).
    """
    import cv2

    from retinaface_export.calibration import AUGMENTATIONS
    from retinaface_export.detection.letterbox import Letterbox

    views = []
    for image in images:
        shrunk = [
            cv2.resize(image, (max(32, round(image.shape[1] * f)), max(32, round(image.shape[0] * f))))
            for f in (0.5, 0.75)
        ]
        for view in [np.ascontiguousarray(t(image)) for t in AUGMENTATIONS.values()] + shrunk:
            views.append(Letterbox.fit(view.shape[0], view.shape[1], size, size).apply(view))
        for view in [np.ascontiguousarray(t(image)) for t in AUGMENTATIONS.values()]:
            views.append(cv2.resize(view, (size, size), interpolation=cv2.INTER_LINEAR))
    return views


def fold_rows(irs: dict, images: Path, anchors, sizes: list[int], folds: int) -> list[dict]:
    """Three-way cross-validation: each block of photos (by content hash) held out of everything in turn.

    The other photos go through ``retinaface-convert``'s own default (a quarter held out of calibration for
    accuracy control), and the INT8 model is judged on the block it never saw, in :func:`test_views`; F1
    pooled over every block.
    """
    from retinaface_export.calibration import split_photos
    from retinaface_export.detection.metric import DetectionF1
    from retinaface_export.images import IMAGE_SUFFIXES, read_image
    from retinaface_export.preprocess import to_network_input
    from retinaface_export.quantize import quantize_detector
    from retinaface_export.sizes import InputSize

    files = sorted(
        (p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: hashlib.sha256(p.read_bytes()).hexdigest(),
    )
    blocks = [files[i::folds] for i in range(folds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        splits = []
        for index, block in enumerate(blocks):
            rest = Path(tmp, f"rest{index}")
            rest.mkdir()
            for path in files:
                if path not in block:
                    shutil.copy(path, rest / path.name)
            splits.append((split_photos(rest), [read_image(path) for path in block]))
        for size in sizes:
            shape = InputSize(size, size)
            metric = DetectionF1(anchors, shape)
            reference, candidate, reverted = [], [], 0
            for split, held_out in splits:
                quantized, record = quantize_detector(_int8(), irs[size], _request(split, shape, anchors))
                samples = [to_network_input(view[None]) for view in test_views(held_out, size)]
                reference += _int8().run(irs[size], samples)
                candidate += _int8().run(quantized, samples)
                reverted += len(record["accuracy"]["float_layers"])
            rows.append(
                {
                    "size": size,
                    "f1_held_out": metric(reference, candidate)[0],
                    "samples": len(reference),
                    "photos": len(files),
                    "float_layers": reverted,
                }
            )
            logging.info("folds %s", rows[-1])
    return rows


def _mark(ok: bool) -> str:
    return "met" if ok else "not met"


def markdown(bias: list[dict], goals: list[dict], folds: list[dict], split_record: dict, runs: int) -> str:
    """The tables."""
    from retinaface_export.converters.openvino.runtime import openvino_core

    cpu = openvino_core().get_property("CPU", "FULL_DEVICE_NAME") or platform.machine()
    lines = [
        f"**INT8, mobilenet0.25 — {cpu}, {os.cpu_count()} cores, {THREADS} threads, {date.today().isoformat()}**",
        "",
        f"Calibration: {split_record['calibration']['images']} photos "
        f"({split_record['calibration']['samples_per_size']} samples per size); validation: "
        f"{split_record['validation']['images']} photos ({split_record['validation']['samples_per_size']} samples), "
        f"{split_record['validation']['chosen']}. F1: strict detection F1 against FP32 (score > 0.5, IoU ≥ 0.5).",
        "",
    ]
    if bias:
        lines += [
            "| size | bias correction | F1 held-out | F1 calibration photos | nncf.quantize s |",
            "|---:|---|---:|---:|---:|",
        ]
        for row in bias:
            kind = "fast" if row["fast_bias_correction"] else "full"
            lines.append(
                f"| {row['size']} | {kind} | {row['f1_validation']:.3f} | {row['f1_calibration']:.3f} | "
                f"{row['seconds']:.1f} |"
            )
        lines.append("")
    if goals:
        lines += [
            f"| size | F1 held-out (goal ≥ {F1_GOAL}) | layers in float | FP32 ms | INT8 ms | speed-up | "
            f"PERFORMANCE whole ms | its speed-up | its F1 | ratio (goal ≥ {SPEED_GOAL}) | quantise s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in goals:
            lines.append(
                f"| {row['size']} | {row['f1']:.3f} ({_mark(row['f1'] >= F1_GOAL)}) | {len(row['float_layers'])} | "
                f"{row['fp32_ms']:.2f} | {row['int8_ms']:.2f} | {row['speedup']:.2f}× | {row['ceiling_ms']:.2f} | "
                f"{row['ceiling_speedup']:.2f}× | {row['ceiling_f1']:.3f} | {row['speed_ratio']:.2f} "
                f"({_mark(row['speed_ratio'] >= SPEED_GOAL)}) | {row['seconds']:.0f} |"
            )
        lines += ["", f"Latency: medians of {runs} runs of each model, timed in turns, crowd photo letterboxed.", ""]
    if folds:
        lines += [
            f"Held out of everything (calibration and accuracy control) in turn, {folds[0]['photos']} photos in blocks"
            " by content hash; judged on every augmentation letterboxed and stretched and on the "
            "photo at 50%/75% scale:",
            "",
            f"| size | strict F1 on photos never seen (goal ≥ {F1_GOAL}) | views | layers in float (all folds) |",
            "|---:|---:|---:|---:|",
        ]
        for row in folds:
            lines.append(
                f"| {row['size']} | {row['f1_held_out']:.3f} ({_mark(row['f1_held_out'] >= F1_GOAL)}) | "
                f"{row['samples']} | {row['float_layers']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    """Parse arguments, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "mobilenet0.25_Final.pth")
    parser.add_argument("--images", type=Path, default=SHARED / "images")
    parser.add_argument("--image", type=Path, default=SHARED / "images" / "crowd_selfie.jpg", help="timed input")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--bias-sizes", type=int, nargs="*", default=[320, 640], help="sizes of table 1 (none: skip)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--folds", type=int, default=0, help="cross-validation folds (0: skip table 3)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    from retinaface_export.calibration import split_photos
    from retinaface_export.images import read_image

    for path in (args.weights, args.images, args.image):
        if not path.exists():
            print(f"bench_int8: error: {path}: not found", file=sys.stderr)
            return 1
    sizes = sorted(set(args.sizes) | set(args.bias_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths, anchors = _export(args.weights, sizes, Path(tmp))
        irs = {size: _ir(path, size) for size, path in onnx_paths.items()}
    split = split_photos(args.images)
    bias = bias_correction_rows(irs, split, anchors, args.bias_sizes)
    goals = goal_rows(irs, split, anchors, args.sizes, read_image(args.image), args.runs)
    folds = fold_rows(irs, args.images, anchors, args.sizes, args.folds) if args.folds else []
    text = markdown(bias, goals, folds, split.record(), args.runs)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        figures = {"split": split.record(), "bias_correction": bias, "goals": goals, "folds": folds}
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
