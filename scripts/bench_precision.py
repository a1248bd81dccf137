"""OpenVINO FP32 (executed f32), bf16 and INT8 IRs of each backbone timed side by side, in turns.

`make bench` converts both backbones to FP32, FP16, bf16 and INT8 IRs; this script compiles each FP32, bf16 and
INT8 IR the way `retinaface-detect` does (the precision its rt_info asks for, 2 threads, LATENCY hint), checks
what it executes (`executed`), and times one inference of each in turn, ``--rounds`` times, on the crowd photo
letterboxed: medians and the ratios to FP32, measured in one run on one machine (the CPU's flags printed
with them). On a CPU without bf16 the bf16 IR runs f32 and the table says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "images" / "crowd_selfie.jpg"
PRECISIONS = ("fp32", "bf16", "int8")


def rows(folder: Path, rounds: int) -> list[str]:
    """One Markdown row per size of the export folder ``folder``."""
    from retinaface_export.converters.openvino.runtime import compile_ir, compiled_runner, executed_precision
    from retinaface_export.detection.letterbox import Letterbox
    from retinaface_export.images import read_image
    from retinaface_export.manifest import Manifest
    from retinaface_export.preprocess import to_network_input

    manifest = Manifest.read(folder)
    photo = read_image(PHOTO)
    lines = []
    sizes = sorted(
        {a.size for a in manifest.artifacts if a.format == "openvino" and a.size and a.postprocess["mode"] == "none"}
    )
    for size in sizes:
        paths = {}
        for artifact in manifest.artifacts:
            if (
                artifact.format == "openvino"
                and artifact.size == size
                and artifact.precision in PRECISIONS
                and artifact.input_format == "f32-nchw-minus-mean"
                and artifact.postprocess["mode"] == "none"
            ):
                paths[artifact.precision] = folder / artifact.path
        if set(paths) != set(PRECISIONS):
            continue
        height, width = size
        data = to_network_input(Letterbox.fit(*photo.shape[:2], height, width).apply(photo)[None])
        runners, executed = {}, {}
        for precision in PRECISIONS:
            compiled = compile_ir(paths[precision], threads=2)
            executed[precision] = executed_precision(compiled)["executed"]
            runners[precision] = compiled_runner(compiled)
            for _ in range(3):
                runners[precision](data)
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(rounds):
            for precision, run in runners.items():
                start = time.perf_counter()
                run(data)
                times[precision].append((time.perf_counter() - start) * 1e3)
        median = {p: statistics.median(t) for p, t in times.items()}
        lines.append(
            f"| {manifest.checkpoint['variant']} | {height}x{width} | {median['fp32']:.1f} ({executed['fp32']}) | "
            f"{median['bf16']:.1f} ({executed['bf16']}) | {median['int8']:.1f} ({executed['int8']}) | "
            f"{median['fp32'] / median['bf16']:.2f}× | {median['fp32'] / median['int8']:.2f}× |"
        )
    return lines


def main() -> int:
    """Time the folders given, print (and with --markdown write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    from retinaface_export.bench.system import machine_record
    from retinaface_export.cli.entry import no_telemetry

    no_telemetry()
    record = machine_record()
    capabilities = record.get("openvino_optimization_capabilities", [])
    table = [
        f"**OpenVINO precisions as executed — {record['cpu']}, flags {' '.join(record.get('cpu_flags', []))}"
        f"{', OpenVINO ' + ' '.join(capabilities) if capabilities else ''}, 2 threads, {date.today().isoformat()}**",
        "",
        f"Median ms of one inference on the crowd photo, the three IRs timed in turns ({args.rounds} rounds); "
        "in brackets what the CPU plugin executed.",
        "",
        "| backbone | size | FP32 IR ms | bf16 IR ms | INT8 IR ms | bf16 vs FP32 | INT8 vs FP32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for folder in args.folders:
        table += rows(folder, args.rounds)
    text = "\n".join(table) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
