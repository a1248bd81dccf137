"""Time ``retinaface-eval`` against the original WIDER FACE evaluator, whole command against whole command.

Writes a real-sized prediction set (one file per validation image, 3,226 files, in the layout biubug6's
``test_widerface.py`` writes: int boxes, ``str(np.float32)`` scores, a trailing space) into a temporary
folder, then runs, each in its own process:

- ``retinaface-eval --predictions DIR --ground-truth GT --json -`` (no cache: it parses the .mat files);
- the same with ``--cache-dir`` (a temporary folder, filled by a first run that is not timed);
- ``widerface_reference.py -p DIR -g GT``: the original's ``evaluation.py`` transcribed (its reader, its
  loadmat, its loops), with a vectorised kernel standing in for its Cython ``bbox_overlaps``.

Runs are interleaved (the load of a shared machine falls on all alike). Prints the median and best wall
and CPU time of each and the ratios, and fails (exit 1) unless every AP equals the original's to the last digit.
``--style ours`` writes the files as ``--save-predictions`` does (four decimals) instead.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retinaface_export.widerface import GroundTruth, load_ground_truth, prediction_text

REPO = Path(__file__).resolve().parents[1]
GT_DIR = REPO.parent / "shared" / "widerface" / "ground_truth"
REFERENCE = Path(__file__).resolve().parent / "widerface_reference.py"
SETTINGS = ("easy", "medium", "hard")


def detector_like_predictions(truth: GroundTruth, seed: int) -> list[np.ndarray]:
    """Per image N×5 (x1 y1 x2 y2 score), best first, as a detector run at a 0.02 threshold leaves them.

    ~70% of the faces found (jittered by 8% of their size) with high scores, and 10 to 150 low-scoring
    false alarms per image (~80 on average: ~290,000 rows over the set).
    """
    rng = np.random.default_rng(seed)
    predictions = []
    for boxes in truth.boxes:
        hits = boxes[rng.random(len(boxes)) < 0.7]
        hits = hits + rng.normal(0, 0.08, hits.shape) * np.repeat(hits[:, 2:], 2, axis=1)
        false = int(rng.integers(10, 150))
        rows = np.vstack([hits, np.column_stack([rng.uniform(0, 1000, (false, 2)), rng.uniform(4, 200, (false, 2))])])
        corners = np.column_stack([rows[:, :2], rows[:, :2] + rows[:, 2:]])
        scores = np.concatenate([rng.uniform(0.3, 1, len(hits)), rng.uniform(0.02, 0.6, false)])
        order = np.argsort(-scores, kind="stable")
        predictions.append(np.column_stack([corners, scores])[order])
    return predictions


def biubug6_text(name: str, dets: np.ndarray) -> str:
    """test_widerface.py's file: name, count, then ``x y w h score `` with int boxes and float32 scores."""
    lines = [f"{name}\n", f"{len(dets)}\n"]
    for box in dets:
        x, y = int(box[0]), int(box[1])
        w, h = int(box[2]) - int(box[0]), int(box[3]) - int(box[1])
        lines.append(f"{x} {y} {w} {h} {np.float32(box[4])!s} \n")  # str(): float32's own shortest digits
    return "".join(lines)


def write_set(folder: Path, truth: GroundTruth, style: str, seed: int) -> int:
    """Write one prediction file per ground-truth image; returns the number of rows."""
    rows = 0
    for (event, name), dets in zip(truth.images, detector_like_predictions(truth, seed), strict=True):
        (folder / event).mkdir(parents=True, exist_ok=True)
        if style == "biubug6":
            text = biubug6_text(name, dets)
        else:
            xywh = np.column_stack([dets[:, :2], dets[:, 2:4] - dets[:, :2], dets[:, 4]])
            text = prediction_text(name, xywh)
        (folder / event / f"{name}.txt").write_text(text)
        rows += len(dets)
    return rows


def eval_command() -> list[str]:
    """The installed ``retinaface-eval`` console script beside this interpreter (or its entry point)."""
    script = Path(sys.executable).parent / "retinaface-eval"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from retinaface_export.cli.entry import evaluate; sys.exit(evaluate())"]


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, standard output) of one run of ``command``; exits if it fails.

    CPU time (user + system of the child) is the steadier figure on a shared machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stdout


def original_aps(stdout: str) -> dict[str, float]:
    """The APs the original prints (``Easy Val AP: 0.9...``), as floats."""
    found = dict(re.findall(r"^(\w+) Val AP: (\S+)$", stdout, flags=re.MULTILINE))
    return {s: float(found[s.capitalize()]) for s in SETTINGS}


def main() -> int:
    """Write the set, time each command, print medians and ratios; exit 1 if any AP differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of retinaface-eval (each way)")
    parser.add_argument("--original-runs", type=int, default=3, help="timed runs of the original")
    parser.add_argument("--style", choices=("biubug6", "ours"), default="biubug6")
    parser.add_argument("--ground-truth", type=Path, default=GT_DIR)
    args = parser.parse_args()
    truth = load_ground_truth(args.ground_truth)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as work:
        preds, cache = Path(work) / "predictions", Path(work) / "cache"
        rows = write_set(preds, truth, args.style, seed=9)
        ours = [*eval_command(), "--predictions", str(preds), "--ground-truth", str(args.ground_truth), "-q"]
        ours += ["--json", "-"]
        cached = [*ours, "--cache-dir", str(cache)]
        timed(ours)  # page cache warm for everyone, as for the later runs
        timed(cached)  # fills the cache
        wall: dict[str, list[float]] = {"ours": [], "ours_cached": [], "original": []}
        cpu: dict[str, list[float]] = {"ours": [], "ours_cached": [], "original": []}
        aps: dict[str, dict[str, float]] = {}
        original = [sys.executable, str(REFERENCE), "-p", str(preds), "-g", str(args.ground_truth)]
        for run in range(max(args.runs, args.original_runs)):
            plan = [("ours", ours), ("ours_cached", cached)] if run < args.runs else []
            plan += [("original", original)] if run < args.original_runs else []
            for key, command in plan:
                elapsed, used, stdout = timed(command)
                wall[key].append(elapsed)
                cpu[key].append(used)
                aps[key] = original_aps(stdout) if key == "original" else json.loads(stdout)
    print(f"{len(truth.images)} files ({args.style} layout), {rows} predictions; medians, one process per run")
    for name, times in (("wall", wall), ("CPU", cpu)):
        median = {key: statistics.median(values) for key, values in times.items()}
        best = {key: min(values) for key, values in times.items()}
        print(
            f"{name} time, original evaluator (transcribed): median {median['original']:.2f} s, "
            f"best {best['original']:.2f} s of {args.original_runs}"
        )
        for key, label in (("ours", "retinaface-eval"), ("ours_cached", "retinaface-eval --cache-dir (warm)")):
            runs = ", ".join(f"{t:.2f}" for t in times[key])
            print(
                f"{name} time, {label}: median {median[key]:.3f} s ({median['original'] / median[key]:.0f}x), "
                f"best {best[key]:.3f} s ({best['original'] / best[key]:.0f}x) of {args.runs}: {runs}"
            )
    same = all(aps[key] == aps["original"] for key in ("ours", "ours_cached"))
    print(f"APs {'identical to the last digit' if same else 'DIFFER'}: {aps['original']}")
    if not same:
        print(f"retinaface-eval: {aps['ours']}; with the cache: {aps['ours_cached']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
