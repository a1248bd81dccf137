"""WIDER FACE files: the official validation ground truth (.mat) and prediction folders (WIDER text format).

Prediction format (one file per image, in a folder per event): the image name, the number of faces, then
one ``x y w h score`` row per face.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.errors import FileError, InputFileError
from retinaface_export.safety.safe_paths import (
    check_plain_name,
    open_regular,
    read_regular_bytes,
    resolve_inside,
    shown,
)

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
# A prediction file holds at most 750 rows of ~60 bytes; anything near this is not one.
MAX_PREDICTION_FILE_BYTES = 16 << 20
_MAT_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}
_MAT_VARIABLES = {
    "all": ["event_list", "file_list", "face_bbx_list"],
    "easy": ["gt_list"],
    "medium": ["gt_list"],
    "hard": ["gt_list"],
}


@dataclass(frozen=True)
class GroundTruth:
    """Per image, in the .mat files' order: event, name, boxes (x, y, w, h) and, per setting, the kept boxes.

    ``keep[setting][i]`` holds 1-based indices of image i's boxes that count; the others are ignored.
    """

    events: tuple[str, ...]
    images: tuple[tuple[str, str], ...]
    boxes: tuple[np.ndarray, ...]
    keep: dict[str, tuple[np.ndarray, ...]]


def _check_ground_truth(
    images: list[tuple[str, str]], boxes: list[np.ndarray], keep: dict[str, list[np.ndarray]]
) -> None:
    """Boxes finite, kept indices among each image's boxes (checked over the whole set at once).

    Raises:
        ValueError: naming the first image that breaks a rule.
    """
    counts = np.array([len(b) for b in boxes], dtype=np.int64)
    finite = np.isfinite(np.concatenate(boxes)).all(axis=1) if counts.sum() else np.ones(0, bool)
    if not finite.all():
        image = int(np.searchsorted(np.cumsum(counts), np.flatnonzero(~finite)[0], side="right"))
        raise ValueError(f"image {shown(images[image][1])} has NaN or infinite boxes")
    for setting in SETTINGS:
        kept_counts = np.array([len(k) for k in keep[setting]], dtype=np.int64)
        if not kept_counts.sum():
            continue
        kept = np.concatenate(keep[setting])
        wrong = (kept < 1) | (kept > np.repeat(counts, kept_counts))
        if wrong.any():
            image = int(np.searchsorted(np.cumsum(kept_counts), np.flatnonzero(wrong)[0], side="right"))
            raise ValueError(f"{setting}: image {shown(images[image][1])} keeps boxes it does not have")


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """Read the four official ``wider_*_val.mat`` files with scipy.

    Event and image names are input: each must be a plain name (no separator, no ``..``), as they become
    paths under ``--images`` and ``--save-predictions``.

    Raises:
        FileError: a file is missing or not the expected MATLAB structure, or a name is not plain.
    """
    from scipy.io import loadmat

    folder = Path(folder)
    mats = {}
    for key, name in _MAT_FILES.items():
        path = folder / name
        try:
            handle = open_regular(path, "a MATLAB file")
        except InputFileError as exc:
            if exc.reason != "no such file":
                raise
            raise FileError(
                path, "missing: WIDER FACE ground truth needs wider_face_val.mat and the easy/medium/hard files"
            ) from None
        with handle:
            try:  # only the variables used: the files hold six more label lists, as large
                mats[key] = loadmat(handle, variable_names=_MAT_VARIABLES[key])
            except Exception as exc:  # scipy raises several types on a damaged file
                raise FileError(path, f"not a MATLAB file scipy can read ({type(exc).__name__})") from None
    try:
        event_list, file_list, box_list = (mats["all"][k] for k in _MAT_VARIABLES["all"])
        kept_lists = {setting: mats[setting]["gt_list"] for setting in SETTINGS}
        events, images, boxes = [], [], []
        keep: dict[str, list[np.ndarray]] = {s: [] for s in SETTINGS}
        for e in range(len(event_list)):
            event = check_plain_name(str(event_list[e][0][0]))
            events.append(event)
            for j in range(len(file_list[e][0])):
                images.append((event, check_plain_name(str(file_list[e][0][j][0][0]))))
                boxes.append(np.asarray(box_list[e][0][j][0], dtype=float).reshape(-1, 4))
                for setting in SETTINGS:
                    keep[setting].append(np.asarray(kept_lists[setting][e][0][j][0]).reshape(-1).astype(np.int64))
        _check_ground_truth(images, boxes, keep)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FileError(
            folder / _MAT_FILES["all"], f"not WIDER FACE validation ground truth ({type(exc).__name__}: {exc})"
        ) from None
    return GroundTruth(tuple(events), tuple(images), tuple(boxes), {s: tuple(v) for s, v in keep.items()})


def _read_lines(path: Path) -> tuple[str, list[str]]:
    """(image key, the ``x y w h score`` lines) of one prediction file."""
    data = read_regular_bytes(path, "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        raise FileError(path, "empty prediction file (needs the image name, the count, then x y w h score rows)")
    # the reference keys predictions by the first line's base name with ".jpg" characters stripped
    return lines[0].rstrip("\r\n").split("/")[-1].rstrip(".jpg"), lines[2:]


def read_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """(image key, N×5 array of x y w h score) of one prediction file, as the reference reads it.

    Messages name the file and line but never quote its content: a file may be anything a link led to.

    Raises:
        FileError: not a regular file, empty, a row that is not five numbers, or a NaN/inf value.
    """
    key, lines = _read_lines(path)
    return key, _parse_files([(path, lines)])[0]


def _parse_files(files: list[tuple[Path, list[str]]]) -> list[np.ndarray]:
    """N×5 rows of each file's ``x y w h score`` lines, read as the reference reads them.

    Lines of exactly five fields separated by single spaces, as every writer produces them, are converted
    by NumPy in one call for all the files; a file with any other line (extra fields, a blank line, a bad
    or infinite number) is read line by line by :func:`_parse_rows_slowly`, which says what is wrong.
    """
    tokens: list[str] = []
    counts = []
    for _, lines in files:
        plain = all(line.count(" ") == 4 for line in lines)
        if plain and lines:
            tokens += " ".join(lines).split(" ")
        counts.append(len(lines) if plain else -1)
    try:
        values = np.array(tokens, dtype=float).reshape(-1, 5)
    except ValueError:  # some file has a bad number: each is converted on its own to find it
        values = None
    rows: list[np.ndarray] = []
    start = 0
    for (path, lines), count in zip(files, counts, strict=True):
        if count < 0:
            rows.append(_parse_rows_slowly(path, lines))
            continue
        mine = values[start : start + count] if values is not None else None
        start += count
        if mine is None and lines:
            try:
                mine = np.array(" ".join(lines).split(" "), dtype=float).reshape(-1, 5)
            except ValueError:
                mine = None
        rows.append(mine if mine is not None and np.isfinite(mine).all() else _parse_rows_slowly(path, lines))
    return rows


def _parse_rows_slowly(path: Path, lines: list[str]) -> np.ndarray:
    """The reference's loop: split on single spaces, skip lines that start empty, take the first five fields."""
    rows = []
    for number, line in enumerate(lines, start=3):
        fields = line.rstrip("\r\n").split(" ")
        if fields[0] == "":
            continue
        try:
            rows.append([float(v) for v in fields[:5]])
        except ValueError:
            raise FileError(path, f"line {number}: not 'x y w h score' numbers") from None
        if len(rows[-1]) < 5:
            raise FileError(path, f"line {number}: {len(rows[-1])} numbers where 'x y w h score' needs 5")
        if not all(math.isfinite(v) for v in rows[-1]):
            raise FileError(path, f"line {number}: NaN or infinite value; scores and boxes must be finite numbers")
    return np.array(rows) if rows else np.zeros((0, 5))


def _entries(folder: Path, root: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` (inside ``root``), sorted by name; a symlink among them must stay inside ``root``."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_symlink():  # a plain entry of a folder inside root is inside root; a link may lead out
            resolve_inside(root, *Path(entry.path).relative_to(root).parts)
    return entries


def read_predictions(folder: str | Path, truth: GroundTruth) -> list[np.ndarray]:
    """Predictions for every ground-truth image, in its order; an image without a file has none.

    Logs a warning for event folders that are missing and for files of images not in the ground truth.
    Only the folder's own files are read: an event folder or file that is a symlink leading out of it is
    an error.

    Raises:
        FileError: the folder is missing or holds no prediction file for any ground-truth image, a
            prediction file is malformed, or something in it leads outside it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileError(folder, "no such predictions folder")
    known = set(truth.images)
    extra = 0
    files: list[tuple[tuple[str, str], Path, list[str]]] = []
    for event_entry in _entries(folder, folder):
        if not event_entry.is_dir():
            continue
        event_dir = folder / event_entry.name
        for entry in _entries(event_dir, folder):
            if not entry.is_dir():
                key, lines = _read_lines(event_dir / entry.name)
                files.append(((event_entry.name, key), event_dir / entry.name, lines))
    found: dict[tuple[str, str], np.ndarray] = {}
    for (image, path, _), boxes in zip(files, _parse_files([(path, lines) for _, path, lines in files]), strict=True):
        if image not in known:
            extra += 1
            shown_key = shown("/".join(image))[1:-1]  # escaped and cut, without the quotes
            log.warning("%s: image %s is not in the ground truth; ignored", path, shown_key)
            continue
        found[image] = boxes
    if not found:
        raise FileError(
            folder,
            f"no prediction file for any of the {len(known)} ground-truth images "
            f"(expected EVENT/IMAGE.txt files; {extra} files name other images)",
        )
    for event in truth.events:
        if not (folder / event).is_dir():
            log.warning("%s: no event folder %s: its images count as having no predictions", folder, event)
    missing = len(known) - len(found)
    if missing:
        log.warning("%s: %d of %d ground-truth images have no prediction file", folder, missing, len(known))
    return [found.get(image, np.zeros((0, 5))) for image in truth.images]


def prediction_text(image_name: str, boxes_xywh_score: np.ndarray) -> str:
    """The text of one prediction file (biubug6 test_widerface.py's format)."""
    lines = [image_name, str(len(boxes_xywh_score))]
    lines += [f"{x:.4f} {y:.4f} {w:.4f} {h:.4f} {s:.10f}" for x, y, w, h, s in boxes_xywh_score]
    return "\n".join(lines) + "\n"
