"""Throughput of ``retinaface-detect`` over a folder: images per second, engine against engine.

Makes a folder of ~200 images (the photos of ``../shared/images`` repeated, so the sizes are mixed), exports
the trained mobilenet0.25 as ONNX at 640x640 with batch 1 and with batch ``--batch``
(unless ``--model`` and ``--batch-model`` are given), then times, ``--repeats`` times each, interleaved:

- ``plain``: one image after another in one thread (read, letterbox, run, decode): ``Detector.detect``, the
  runtime with its own default thread count;
- ``plain t1``: the same with the runtime on one thread;
- ``local wW b1``: the streaming engine as ``retinaface-detect`` runs it by default: W workers (one per CPU, at
  most 4), each with a runtime of its own on the CPUs shared out, batch 1, decoding and letterboxing in threads
  while they run;
- ``local w1 b1``: the same with one worker whose runtime has every CPU (overlap alone, no side-by-side runs);
- ``local wW bN``: the default workers with the batch-N artifact;
- ``ray``: ``--engine ray`` with ``--workers`` actors of one CPU each, on a local Ray started once before
  the timings (its start-up, ~10-20 s, is printed apart; each run starts its actor pool).

Every runtime runs with its graph optimisations (``--optimize``, as a deployment, and a plain script using
ONNX Runtime's defaults, runs it); ``--as-verified`` times the graph as written instead (the default of
``retinaface-detect``). Prints the median images/s of each and its ratio to ``plain``; ``make bench`` runs
it over 630 photos and puts its table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def image_folder(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the shared photos, in turn (seven sizes, from 275x183 to 3 MP)."""
    photos = sorted((SHARED / "images").glob("*.jpg"))
    paths = []
    for index in range(count):
        copy = folder / f"{index:04d}_{photos[index % len(photos)].name}"
        shutil.copyfile(photos[index % len(photos)], copy)
        paths.append(copy)
    return paths


def export(folder: Path, batch: int) -> Path:
    """The trained mobilenet0.25 as ONNX at 640x640 with ``batch``."""
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    checkpoint = load_checkpoint(SHARED / "weights" / "mobilenet0.25_Final.pth")
    result = export_checkpoint(
        checkpoint, ExportOptions(sizes=(InputSize(640, 640),), formats=("onnx",), batch=batch), folder
    )
    return folder / result.added[0].path


def timed(run: Callable[[], int]) -> float:
    """Images per second of one run."""
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def main(argv: Iterable[str] | None = None) -> int:
    """Run the timings and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images per run")
    parser.add_argument("--batch", type=int, default=4, help="batch of the batched artifact")
    parser.add_argument("--model", type=Path, help="batch-1 artifact (default: export one)")
    parser.add_argument("--batch-model", type=Path, help="batch-N artifact (default: export one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--as-verified", action="store_true", help="no graph optimisations (detect's default)")
    parser.add_argument("--markdown", type=Path, help="write the table here too (make bench)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from retinaface_export.cli.entry import no_telemetry

    no_telemetry()
    from retinaface_export.images import read_image
    from retinaface_export.inference.detector import Detector
    from retinaface_export.inference.stream import default_workers, detect_stream, runtime_threads

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-detect-")))
        (tmp / "images").mkdir()
        paths = image_folder(tmp / "images", args.images)
        single = args.model or export(tmp / "b1", 1)
        batched = args.batch_model or export(tmp / f"b{args.batch}", args.batch)
        optimize = not args.as_verified
        workers = default_workers()  # what retinaface-detect runs: one runtime per CPU, the CPUs shared out
        threads = runtime_threads(workers)
        default = Detector.from_artifact(single, optimize=optimize)  # the runtime's own thread count
        plain_one = Detector.from_artifact(single, threads=1, optimize=optimize)
        alone = [Detector.from_artifact(single, threads=runtime_threads(1), optimize=optimize)]
        side = [Detector.from_artifact(single, threads=threads, optimize=optimize) for _ in range(workers)]
        many = [Detector.from_artifact(batched, threads=threads, optimize=optimize) for _ in range(workers)]
        batch = many[0].backend.batch or args.batch

        def plain(detector: Detector) -> int:
            for path in paths:
                detector.detect(read_image(path))
            return len(paths)

        runs: dict[str, Callable[[], int]] = {
            "plain": lambda: plain(default),
            "plain t1": lambda: plain(plain_one),
            f"local w{workers} b1": lambda: sum(1 for _ in detect_stream(side, paths, 1)),
            "local w1 b1": lambda: sum(1 for _ in detect_stream(alone, paths, 1)),
            f"local w{workers} b{batch}": lambda: sum(1 for _ in detect_stream(many, paths, batch)),
        }
        if not args.no_ray:
            from retinaface_export.detection.postprocess import DetectionConfig
            from retinaface_export.inference.ray_engine import detect_with_ray, ray_cluster

            start = time.perf_counter()
            stack.enter_context(ray_cluster(None, num_cpus=args.workers))
            print(f"local Ray started in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            config = DetectionConfig()
            runs[f"ray x{args.workers}"] = lambda: sum(
                1 for _ in detect_with_ray(single, paths, config, num_workers=args.workers, optimize=optimize)
            )
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeats):
            for name, run in runs.items():
                rates[name].append(timed(run))
                print(f"  repeat {repeat + 1}: {name} {rates[name][-1]:.1f} images/s", file=sys.stderr)
    base = statistics.median(rates["plain"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"**retinaface-detect over {args.images} mixed-size photos (mobilenet0.25, ONNX 640, "
        f"{'graph as verified' if args.as_verified else '--optimize'}), medians of {args.repeats} runs in turns**",
        "",
        "| engine | images/s | vs plain loop |",
        "|---|---:|---:|",
    ]
    for name, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.1f} | {median / base:.2f}× |")
    lines += ["", f"Peak RSS of the process (every engine; Ray's workers not counted): {peak:.0f} MB.", ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
