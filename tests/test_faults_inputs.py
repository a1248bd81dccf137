"""Hostile and careless inputs replayed against the commands (issues 12 and 16): images, options,
checkpoints, anchors, calibration photos, golden sets, WIDER ground truth and predictions.

Each row of FAULTS is: the fault (a builder that writes it under tmp_path and returns the arguments), the
command, the exit code, and what the message must (and must never) say. Every row also checks that no
traceback is printed, that the message is one line naming the cause, and that nothing under tmp_path
(inputs, the "outside" folder, the would-be outputs) was created, changed or removed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.io import savemat

from conftest import REAL_WEIGHTS, SHARED, require
from retinaface_export.cli import convert as convert_cli
from retinaface_export.cli import detect as detect_cli
from retinaface_export.cli import evaluate as evaluate_cli
from retinaface_export.cli import export as export_cli
from retinaface_export.cli import parity as parity_cli
from retinaface_export.synthetic import synthetic_state_dict
from retinaface_export.variants import get_variant

SAMPLES = ("wider_sample_1", "wider_sample_2")
SECRET = "SECRET-CONTENT-OF-AN-OUTSIDE-FILE"


# ---------------------------------------------------------------- helpers that write faults


def photos(tmp: Path) -> Path:
    """tmp/photos with two small real photos."""
    folder = tmp / "photos"
    folder.mkdir(exist_ok=True)
    for name in SAMPLES:
        shutil.copy(require(SHARED / "images" / f"{name}.jpg"), folder / f"{name}.jpg")
    return folder


def weights() -> str:
    return str(require(REAL_WEIGHTS))


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width × height (no pixel data follows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def symlink_loop(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    other = path.with_name(path.name + ".other")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def proc_self_mem(path: Path) -> Path:
    """A link to /proc/self/mem: a regular file whose read fails with EIO (issue 25)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/proc/self/mem", path)
    return path


def manifest_linked_out(tmp: Path) -> list[str]:
    """An export folder whose manifest.json is a link to a file outside it (issue 25)."""
    write(tmp / "outside" / "manifest.json", json.dumps({"tool": SECRET}))
    (tmp / "export").mkdir()
    os.symlink(tmp / "outside" / "manifest.json", tmp / "export" / "manifest.json")
    return [str(tmp / "export"), "--to", "onnxsim", "--output-dir", str(tmp / "converted")]


def anchors_file(tmp: Path, text: str) -> Path:
    return write(tmp / "anchors.toml", text)


def integer_weights(tmp: Path) -> Path:
    state = synthetic_state_dict(get_variant("mobilenet0.25"))
    state["ClassHead.0.conv1x1.weight"] = state["ClassHead.0.conv1x1.weight"].round().to(torch.int64)
    torch.save(state, tmp / "int_weights.pth")
    return tmp / "int_weights.pth"


def torchscript_as_weights(tmp: Path) -> Path:
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x

    torch.jit.save(torch.jit.script(Tiny()), tmp / "model.torchscript.pt")
    return tmp / "model.torchscript.pt"


def golden_set(tmp: Path, inputs: list[dict], tensors: bytes | None = None) -> Path:
    """A golden set folder whose golden.json has ``inputs``; tensors.npz is ``tensors`` (or an empty npz)."""
    folder = tmp / "golden" / "g"
    anchors = get_variant("mobilenet0.25").anchors.to_dict()
    meta = {"schema": 1, "inputs": inputs, "cases": [], "checkpoint": {"anchors": anchors, "variant": "x"}}
    write(folder / "golden.json", json.dumps(meta))
    if tensors is None:
        np.savez(folder / "tensors.npz")
    else:
        write(folder / "tensors.npz", tensors)
    return folder


SEEDED = {"name": "synthetic-0", "photo": None, "photo_sha256": None, "seed": 0}


def golden_with_rows(tmp: Path, rows: np.ndarray) -> Path:
    """A golden set of one case at 320x320 whose sampled ``rows`` are given (outputs of matching length)."""
    import io

    key = "synthetic-0@320x320"
    arrays = {f"{key}/rows": rows, f"{key}/faces": np.zeros((0, 15), np.float32)}
    for name, width in zip(
        ("face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred"), (4, 2, 10), strict=True
    ):
        arrays[f"{key}/{name}"] = np.zeros((len(rows), width), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    folder = golden_set(tmp, [SEEDED], buffer.getvalue())
    meta = json.loads((folder / "golden.json").read_text())
    meta["cases"] = [{"input": "synthetic-0", "size": [320, 320], "input_sha256": "0" * 64, "ranges": [1, 1, 1]}]
    (folder / "golden.json").write_text(json.dumps(meta))
    return folder


def _cell(items: list) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    return array


def wider_truth(folder: Path, events: dict[str, list[str]]) -> Path:
    """WIDER-layout .mat ground truth: one 20×20 face at (10, 10) per image, kept in every setting."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [list(images) for images in events.values()]
    boxes = _cell([_cell([np.array([[10.0, 10.0, 20.0, 20.0]]) for _ in images]) for images in names])
    keep = _cell([_cell([np.array([[1]]) for _ in images]) for images in names])
    savemat(
        folder / "wider_face_val.mat",
        {
            "event_list": _cell([np.array([e]) for e in events]),
            "file_list": _cell([_cell([np.array([n]) for n in images]) for images in names]),
            "face_bbx_list": boxes,
        },
    )
    for setting in ("easy", "medium", "hard"):
        savemat(folder / f"wider_{setting}_val.mat", {"gt_list": keep})
    return folder


def wider_images(root: Path, events: dict[str, list[str]]) -> Path:
    for event, names in events.items():
        for name, sample in zip(names, SAMPLES * len(names), strict=False):
            write(root / event / f"{name}.jpg", require(SHARED / "images" / f"{sample}.jpg").read_bytes())
    return root


def run_over(tmp: Path, gt: Path) -> list[str]:
    return ["--images", str(tmp / "images"), "--weights", weights(), "--ground-truth", str(gt)]


def outside_secret(tmp: Path) -> Path:
    """tmp/outside/ holding a file whose content must never reach a message."""
    return write(tmp / "outside" / "img.txt", f"img\n1\n{SECRET}\n").parent


def predictions(tmp: Path, rows: str) -> list[str]:
    gt = wider_truth(tmp / "gt", {"0--E": ["img"]})
    write(tmp / "preds" / "0--E" / "img.txt", f"img\n1\n{rows}\n")
    return ["--predictions", str(tmp / "preds"), "--ground-truth", str(gt)]


def prediction_read_fails(tmp: Path) -> list[str]:
    """A prediction file linked to /proc/self/mem (whose read fails with EIO; issue 25): refused as a link first."""
    args = predictions(tmp, "10 10 20 20 0.9")
    (tmp / "preds" / "0--E" / "img.txt").unlink()
    proc_self_mem(tmp / "preds" / "0--E" / "img.txt")
    return args


def crafted_event(tmp: Path) -> list[str]:
    """An event name that climbs out of --images and --save-predictions (issue 16)."""
    wider_images(tmp / "outside", {"x": ["img"]})  # what a ../ name would reach
    gt = wider_truth(tmp / "gt", {"../outside/x": ["img"]})
    (tmp / "images").mkdir()
    return [*run_over(tmp, gt), "--save-predictions", str(tmp / "preds")]


def symlinked_event_in_images(tmp: Path) -> list[str]:
    wider_images(tmp / "outside", {"x": ["img"]})
    gt = wider_truth(tmp / "gt", {"0--E": ["img"]})
    (tmp / "images").mkdir()
    os.symlink(tmp / "outside" / "x", tmp / "images" / "0--E")
    return run_over(tmp, gt)


def symlinked_event_in_saved(tmp: Path) -> list[str]:
    wider_images(tmp / "images", {"0--E": ["img"]})
    gt = wider_truth(tmp / "gt", {"0--E": ["img"]})
    (tmp / "outside").mkdir()
    (tmp / "preds").mkdir()
    os.symlink(tmp / "outside", tmp / "preds" / "0--E")
    return [*run_over(tmp, gt), "--save-predictions", str(tmp / "preds")]


def symlinked_event_in_predictions(tmp: Path) -> list[str]:
    outside = outside_secret(tmp)
    gt = wider_truth(tmp / "gt", {"0--E": ["img"]})
    (tmp / "preds").mkdir()
    os.symlink(outside, tmp / "preds" / "0--E")
    return ["--predictions", str(tmp / "preds"), "--ground-truth", str(gt)]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Fault:
    name: str
    command: click.Command
    build: Callable[[Path], list[str]]
    code: int
    says: tuple[str, ...]
    never: tuple[str, ...] = ()
    # Click's own usage errors (a bad option value) print a usage block, not one line.
    one_line: bool = True


def _p(tmp: Path, name: str) -> str:
    return str(tmp / name)


FAULTS = [
    # --- images (retinaface-detect)
    Fault(
        "empty-image",
        detect_cli.main,
        lambda t: [str(write(t / "empty.jpg", b"")), "--weights", weights()],
        1,
        ("empty.jpg: empty file (0 bytes)",),
    ),
    Fault(
        "undecodable-image",
        detect_cli.main,
        lambda t: [str(write(t / "bad.jpg", b"\xff\xd8\xff\xe0 truncated")), "--weights", weights()],
        1,
        ("bad.jpg: cannot be read as an image",),
    ),
    Fault(
        "20000x20000-image",
        detect_cli.main,
        lambda t: [str(write(t / "huge.png", png_header(20000, 20000))), "--weights", weights()],
        1,
        ("huge.png: 20000x20000 image (400.0 MP) is above the limit of 50 MP", "RETINAFACE_EXPORT_MAX_IMAGE_PIXELS"),
    ),
    Fault(
        "image-symlink-loop",
        detect_cli.main,
        lambda t: [str(symlink_loop(t / "loop.jpg")), "--weights", weights()],
        1,
        ("loop.jpg: symbolic link loop",),
    ),
    Fault(
        "image-read-fails-with-EIO",
        detect_cli.main,
        lambda t: [str(proc_self_mem(t / "mem.jpg")), "--weights", weights()],
        1,
        ("mem.jpg: cannot be read (Input/output error)",),
    ),
    Fault(
        "output-dir-is-the-photos-folder",
        detect_cli.main,
        lambda t: [*map(str, sorted(photos(t).iterdir())), "--weights", weights(), "--output-dir", _p(t, "photos")],
        2,
        ("--output-dir", "is the folder of the input image"),
    ),
    Fault(
        "json-is-an-input-photo",
        detect_cli.main,
        lambda t: [
            str(photos(t) / "wider_sample_1.jpg"),
            "--weights",
            weights(),
            "--json",
            _p(t, "photos/wider_sample_1.jpg"),
        ],
        2,
        ("--json", "is the input image", "would be overwritten"),
    ),
    Fault(
        "threshold-nan",
        detect_cli.main,
        lambda t: [str(photos(t)), "--weights", weights(), "--threshold", "nan", "--json", _p(t, "faces.json")],
        2,
        ("score threshold must be a number from 0 to 1, got nan",),
    ),
    Fault(
        "empty-folder",
        detect_cli.main,
        lambda t: [str((t / "nothing").mkdir() or t / "nothing"), "--weights", weights()],
        1,
        ("nothing: no images (.jpg",),
    ),
    # --- options (retinaface-export)
    Fault(
        "size-99968",
        export_cli.main,
        lambda t: ["--size", "99968", "--output-dir", _p(t, "out")],
        2,
        ("side 99968 is above the largest allowed side, 2048", "RETINAFACE_EXPORT_MAX_SIDE"),
        one_line=False,
    ),
    Fault(
        "size-of-5000-digits",
        export_cli.main,
        lambda t: ["--size", "9" * 5000, "--output-dir", _p(t, "out")],
        2,
        ("is not a size",),
        one_line=False,
    ),
    Fault(
        "batch-100000",
        export_cli.main,
        lambda t: ["--batch", "100000", "--output-dir", _p(t, "out")],
        2,
        ("--batch 100000 is above the largest allowed batch, 64", "RETINAFACE_EXPORT_MAX_BATCH"),
    ),
    Fault(
        "anchors-read-fails-with-EIO",
        export_cli.main,
        lambda t: ["--anchors", str(proc_self_mem(t / "anchors.toml")), "--output-dir", _p(t, "out")],
        1,
        ("anchors.toml: cannot be read (Input/output error)",),
    ),
    Fault(
        "anchors-two-levels",
        export_cli.main,
        lambda t: [
            "--anchors",
            str(anchors_file(t, "min_sizes = [[16, 32], [64, 128]]\nsteps = [8, 16]\nvariance = [0.1, 0.2]\n")),
            "--output-dir",
            _p(t, "out"),
        ],
        1,
        ("anchors.toml: not an anchors file: steps [8, 16] do not fit the network", "strides [8, 16, 32]"),
    ),
    Fault(
        "anchors-nan-variance",
        export_cli.main,
        lambda t: [
            "--anchors",
            str(
                anchors_file(
                    t, "min_sizes = [[16, 32], [64, 128], [256, 512]]\nsteps = [8, 16, 32]\nvariance = [nan, 0.2]\n"
                )
            ),
            "--output-dir",
            _p(t, "out"),
        ],
        1,
        ("anchors.toml: not an anchors file: variance must hold finite positive numbers, got nan",),
    ),
    Fault(
        "anchors-three-per-cell-for-a-two-per-cell-checkpoint",
        export_cli.main,
        lambda t: [
            "--weights",
            weights(),
            "--anchors",
            str(
                anchors_file(
                    t,
                    "min_sizes = [[8, 16, 32], [64, 96, 128], [256, 384, 512]]\n"
                    "steps = [8, 16, 32]\nvariance = [0.1, 0.2]\n",
                )
            ),
            "--output-dir",
            _p(t, "out"),
        ],
        2,
        ("--anchors give 3 anchors per feature-map cell", "predict 2"),
    ),
    # --- checkpoints (retinaface-export --weights)
    Fault(
        "checkpoint-random-bytes",
        export_cli.main,
        lambda t: [
            "--weights",
            str(write(t / "random.pth", np.random.default_rng(0).bytes(4096))),
            "--output-dir",
            _p(t, "out"),
        ],
        1,
        ("random.pth: not a PyTorch checkpoint (it holds unrecognised binary data)",),
        ("safe loading", "weights_only=False"),
    ),
    Fault(
        "checkpoint-text",
        export_cli.main,
        lambda t: ["--weights", str(write(t / "notes.pth", "these are not weights\n")), "--output-dir", _p(t, "out")],
        1,
        ("notes.pth: not a PyTorch checkpoint (it holds text)",),
        ("safe loading", "weights_only=False"),
    ),
    Fault(
        "checkpoint-jpeg",
        export_cli.main,
        lambda t: [
            "--weights",
            str(write(t / "photo.pth", require(SHARED / "images" / "wider_sample_1.jpg").read_bytes())),
            "--output-dir",
            _p(t, "out"),
        ],
        1,
        ("photo.pth: not a PyTorch checkpoint (it holds a JPEG image)",),
        ("safe loading", "weights_only=False"),
    ),
    Fault(
        "checkpoint-fifo",
        export_cli.main,
        lambda t: ["--weights", str(fifo(t / "pipe.pth")), "--output-dir", _p(t, "out")],
        1,
        ("pipe.pth: is a FIFO (named pipe), not a regular file",),
        ("empty file",),
    ),
    Fault(
        "checkpoint-dev-zero",
        export_cli.main,
        lambda t: ["--weights", "/dev/zero", "--output-dir", _p(t, "out")],
        1,
        ("/dev/zero: is a character device, not a regular file",),
        ("empty file",),
    ),
    Fault(
        "checkpoint-symlink-loop",
        export_cli.main,
        lambda t: ["--weights", str(symlink_loop(t / "loop.pth")), "--output-dir", _p(t, "out")],
        1,
        ("loop.pth: symbolic link loop",),
        ("no such file",),
    ),
    Fault(
        "checkpoint-integer-weights",
        export_cli.main,
        lambda t: ["--weights", str(integer_weights(t)), "--output-dir", _p(t, "out")],
        1,
        ("int_weights.pth: weights must be float32", "ClassHead.0.conv1x1.weight is int64"),
    ),
    Fault(
        "checkpoint-is-torchscript",
        export_cli.main,
        lambda t: ["--weights", str(torchscript_as_weights(t)), "--output-dir", _p(t, "out")],
        1,
        ("model.torchscript.pt: is a TorchScript archive, not a checkpoint",),
        ("weights_only=False", "trusted source"),
    ),
    # --- golden sets (retinaface-parity reads them)
    Fault(
        "golden-photo-climbs-out",
        parity_cli.main,
        lambda t: [
            _p(t, "export"),
            "--golden",
            str(golden_set(t, [{"name": "x", "photo": "../x.jpg", "photo_sha256": "0" * 64, "seed": None}])),
            "-q",
        ],
        1,
        ("golden.json: malformed golden set", "is not a plain file or folder name"),
    ),
    Fault(
        "golden-photo-absolute",
        parity_cli.main,
        lambda t: [
            _p(t, "export"),
            "--golden",
            str(golden_set(t, [{"name": "x", "photo": "/etc/hostname", "photo_sha256": "0" * 64, "seed": None}])),
            "-q",
        ],
        1,
        ("golden.json: malformed golden set", "is not a plain file or folder name"),
    ),
    Fault(
        "golden-empty-tensors",
        parity_cli.main,
        lambda t: [_p(t, "export"), "--golden", str(golden_set(t, [SEEDED], b"")), "-q"],
        1,
        ("tensors.npz: empty file (0 bytes)",),
        ("Aborted",),
    ),
    Fault(
        "golden-corrupt-tensors",
        parity_cli.main,
        lambda t: [_p(t, "export"), "--golden", str(golden_set(t, [SEEDED], b"PK\x03\x04" + bytes(100))), "-q"],
        1,
        ("tensors.npz: not readable golden tensors",),
        ("Aborted",),
    ),
    Fault(
        "golden-rows-are-floats",
        parity_cli.main,
        lambda t: [_p(t, "export"), "--golden", str(golden_with_rows(t, np.array([0.5, 1.5]))), "-q"],
        1,
        ("malformed golden set", "rows must hold integers, got float64"),
    ),
    Fault(
        "golden-rows-beyond-the-anchors",
        parity_cli.main,
        lambda t: [_p(t, "export"), "--golden", str(golden_with_rows(t, np.array([-1, 5000]))), "-q"],
        1,
        ("malformed golden set", "rows must be from 0 to 4199"),
    ),
    # --- export folders (retinaface-convert reads the manifest)
    Fault(
        "manifest-links-out-of-the-export-folder",
        convert_cli.main,
        manifest_linked_out,
        1,
        ("export/manifest.json: leads outside",),
        (SECRET,),
    ),
    # --- WIDER ground truth and predictions (retinaface-eval)
    Fault(
        "wider-event-name-climbs-out",
        evaluate_cli.main,
        crafted_event,
        1,
        ("wider_face_val.mat: not WIDER FACE validation ground truth", "is not a plain file or folder name"),
    ),
    Fault(
        "wider-symlinked-event-in-images",
        evaluate_cli.main,
        symlinked_event_in_images,
        1,
        ("images/0--E/img.jpg: leads outside",),
    ),
    Fault(
        "wider-symlinked-event-in-save-predictions",
        evaluate_cli.main,
        symlinked_event_in_saved,
        1,
        ("preds/0--E/img.txt: leads outside",),
    ),
    Fault(
        "wider-symlinked-event-in-predictions",
        evaluate_cli.main,
        symlinked_event_in_predictions,
        1,
        ("preds/0--E: leads outside",),
        (SECRET,),
    ),
    Fault(
        "wider-nan-score",
        evaluate_cli.main,
        lambda t: predictions(t, "10 10 20 20 nan"),
        1,
        ("preds/0--E/img.txt: line 3: NaN or infinite value",),
    ),
    Fault(
        "wider-inf-box",
        evaluate_cli.main,
        lambda t: predictions(t, "10 10 inf 20 0.9"),
        1,
        ("preds/0--E/img.txt: line 3: NaN or infinite value",),
    ),
    Fault(
        "wider-malformed-line-is-not-quoted",
        evaluate_cli.main,
        lambda t: predictions(t, f"10 10 {SECRET} 20 0.9"),
        1,
        ("preds/0--E/img.txt: line 3: not 'x y w h score' numbers",),
        (SECRET,),
    ),
    Fault(
        "wider-prediction-file-linked-to-proc-self-mem",
        evaluate_cli.main,
        prediction_read_fails,
        1,
        ("preds/0--E/img.txt: leads outside",),
    ),
    Fault(
        "wider-empty-predictions-folder",
        evaluate_cli.main,
        lambda t: [
            "--predictions",
            str((t / "preds").mkdir() or t / "preds"),
            "--ground-truth",
            str(wider_truth(t / "gt", {"0--E": ["img"]})),
        ],
        1,
        ("preds: no prediction file for any of the 1 ground-truth images",),
    ),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, size and content digest (symlinks as their targets)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                found[str(path)] = ("file", path.read_bytes())
            else:
                found[str(path)] = ("other", path.stat().st_mode)
    return found


PROGRAMS = {
    detect_cli.main: detect_cli.COMMAND,
    export_cli.main: "retinaface-export",
    parity_cli.main: parity_cli.COMMAND,
    evaluate_cli.main: evaluate_cli.COMMAND,
    convert_cli.main: convert_cli.COMMAND,
}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_fault_one_line_nonzero_exit_nothing_written(tmp_path, fault):
    args = fault.build(tmp_path)
    if "-q" not in args:
        args.append("-q")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(fault.command, args, catch_exceptions=False)
    output = result.stdout + result.stderr
    assert result.exit_code == fault.code, output
    assert "Traceback" not in output
    for fragment in fault.says:
        assert fragment in result.stderr, result.stderr
    for fragment in fault.never:
        assert fragment not in output, output
    if fault.one_line:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{PROGRAMS[fault.command]}: error: "), lines
    assert snapshot(tmp_path) == before, "something under tmp_path was written, changed or removed"


def test_detect_on_a_fifo_named_like_a_photo_refuses_instead_of_hanging(tmp_path):
    """In a subprocess: before the fix, reading the FIFO blocked forever."""
    pipe = fifo(tmp_path / "x.jpg")
    code = "import sys; from retinaface_export.cli.detect import main; sys.argv[0] = 'retinaface-detect'; main()"
    command = [sys.executable, "-c", code, str(pipe), "--weights", weights(), "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"retinaface-detect: error: {pipe}: is a FIFO (named pipe), not a regular file"


def test_image_limit_is_configurable_and_named(tmp_path, monkeypatch):
    folder = photos(tmp_path)
    image = folder / "wider_sample_1.jpg"
    height, width = cv2.imread(str(image)).shape[:2]
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_IMAGE_PIXELS", str(height * width - 1))
    result = CliRunner().invoke(detect_cli.main, [str(image), "--weights", weights(), "-q"], catch_exceptions=False)
    assert result.exit_code == 1
    assert f"above the limit of {(height * width - 1) / 1e6:g} MP" in result.stderr
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_IMAGE_PIXELS", str(height * width))
    result = CliRunner().invoke(detect_cli.main, [str(image), "--weights", weights(), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def test_size_and_batch_limits_can_be_raised(monkeypatch):
    from retinaface_export.errors import UsageError
    from retinaface_export.sizes import InputSize, check_batch, parse_size

    with pytest.raises(UsageError, match="RETINAFACE_EXPORT_MAX_SIDE"):
        parse_size("2080")
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_SIDE", "4096")
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_BATCH", "128")
    assert parse_size("2080") == InputSize(2080, 2080) and check_batch(128) == 128
    monkeypatch.setenv("RETINAFACE_EXPORT_MAX_BATCH", "lots")
    with pytest.raises(UsageError, match="RETINAFACE_EXPORT_MAX_BATCH='lots': must be a positive integer"):
        check_batch(2)


def test_detect_takes_folders(tmp_path):
    folder = photos(tmp_path)
    out = tmp_path / "faces.json"
    result = CliRunner().invoke(
        detect_cli.main, [str(folder), "--weights", weights(), "--json", str(out), "-q"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    assert [entry["image"] for entry in json.loads(out.read_text())] == [str(folder / f"{n}.jpg") for n in SAMPLES]


def test_drawings_beside_but_not_among_inputs(tmp_path):
    """--output-dir elsewhere is fine, and the photos stay byte-identical either way."""
    folder = photos(tmp_path)
    before = snapshot(folder)
    result = CliRunner().invoke(
        detect_cli.main,
        [str(folder), "--weights", weights(), "--output-dir", str(tmp_path / "drawn"), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [f"{n}.png" for n in SAMPLES]
    assert snapshot(folder) == before


def test_calibration_image_too_small_is_named(tmp_path):
    """Before the fix: ZeroDivisionError while letterboxing the half-size crops of a 1×1 photo."""
    from retinaface_export.calibration import load_calibration_set
    from retinaface_export.errors import FileError
    from retinaface_export.sizes import InputSize

    folder = photos(tmp_path)
    cv2.imwrite(str(folder / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(FileError) as info:
        load_calibration_set(folder).samples(InputSize(320, 320))
    assert (
        str(info.value)
        == f"{folder / 'dot.png'}: 1x1 image is too small to calibrate with (each side needs 32 px or more)"
    )


def test_convert_with_a_1x1_calibration_photo_says_so(tmp_path, fixed_export):
    folder = photos(tmp_path)
    cv2.imwrite(str(folder / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    out = tmp_path / "converted"
    result = CliRunner().invoke(
        convert_cli.main,
        [
            str(fixed_export),
            "--to",
            "openvino",
            "--precision",
            "int8",
            "--calibration",
            str(folder),
            "--output-dir",
            str(out),
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"retinaface-convert: error: {folder / 'dot.png'}: 1x1 image is too small to calibrate with "
        "(each side needs 32 px or more)"
    )
    assert not out.exists()


def test_golden_photo_name_is_refused_where_it_is_used(tmp_path):
    from retinaface_export.errors import FileError
    from retinaface_export.golden import GoldenInput
    from retinaface_export.sizes import InputSize

    write(tmp_path / "x.jpg", require(SHARED / "images" / "wider_sample_1.jpg").read_bytes())
    (tmp_path / "images").mkdir()
    with pytest.raises(FileError, match="is not a plain file or folder name"):
        GoldenInput("x", "../x.jpg", "0" * 64).prepare(InputSize(320, 320), [tmp_path / "images"])


# ---------------------------------------------------------------- --origin-size (issue 11's defect)


@pytest.fixture(scope="module")
def fixed_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed")
    result = CliRunner().invoke(
        export_cli.main,
        ["--weights", weights(), "--size", "320", "--format", "onnx", "--output-dir", str(out), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamic")
    result = CliRunner().invoke(
        export_cli.main,
        ["--weights", weights(), "--dynamic", "--size", "320", "--format", "onnx", "--output-dir", str(out), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return out


def _eval(tmp: Path, *args: str):
    events = {"0--E": ["a", "b"]}
    images = wider_images(tmp / "images", events) if not (tmp / "images").exists() else tmp / "images"
    gt = wider_truth(tmp / "gt", events) if not (tmp / "gt").exists() else tmp / "gt"
    return CliRunner().invoke(
        evaluate_cli.main,
        ["--images", str(images), "--ground-truth", str(gt), "-q", *args],
        catch_exceptions=False,
    )


def _saved(folder: Path) -> list[np.ndarray]:
    return [np.loadtxt(p, skiprows=2, ndmin=2) for p in sorted(folder.glob("*/*.txt"))]


def test_origin_size_is_refused_for_a_fixed_size_model(tmp_path, fixed_export):
    model = fixed_export / "retinaface_mobilenet0.25_320x320.onnx"
    result = _eval(tmp_path, "--model", str(model), "--origin-size", "--save-predictions", str(tmp_path / "p"))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"retinaface-eval: error: --origin-size: {model} has a fixed 320x320 input (each image would be "
        "letterboxed to it); use an artifact exported with --dynamic, or --weights"
    )
    assert not (tmp_path / "p").exists()


def test_origin_size_runs_a_dynamic_model_at_each_image_size(tmp_path, dynamic_export):
    model = dynamic_export / "retinaface_mobilenet0.25_dynamic.onnx"
    result = _eval(tmp_path, "--model", str(model), "--origin-size", "--save-predictions", str(tmp_path / "onnx"))
    assert result.exit_code == 0, result.stderr
    eager = _eval(tmp_path, "--weights", weights(), "--save-predictions", str(tmp_path / "eager"))
    assert eager.exit_code == 0, eager.stderr
    onnx_rows, eager_rows = _saved(tmp_path / "onnx"), _saved(tmp_path / "eager")
    # PyTorch's faces at each image's own size, to a twentieth of a pixel: no letterbox, no resize
    assert [len(r) for r in onnx_rows] == [len(r) for r in eager_rows] and sum(map(len, eager_rows)) > 10
    for a, b in zip(onnx_rows, eager_rows, strict=True):
        np.testing.assert_allclose(a, b, atol=0.05)
