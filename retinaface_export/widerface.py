"""WIDER FACE files: the official validation ground truth (.mat) and prediction folders (WIDER text format).

Prediction format (one file per image, in a folder per event): the image name, the number of faces, then
one ``x y w h score`` row per face.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.errors import FileError, InputFileError
from retinaface_export.safe_paths import check_plain_name, open_regular, read_regular_bytes, resolve_inside, shown

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


@dataclass(frozen=True)
class GroundTruth:
    """Per image, in the .mat files' order: event, name, boxes (x, y, w, h) and, per setting, the kept boxes.

    ``keep[setting][i]`` holds 1-based indices of image i's boxes that count; the others are ignored.
    """

    events: tuple[str, ...]
    images: tuple[tuple[str, str], ...]
    boxes: tuple[np.ndarray, ...]
    keep: dict[str, tuple[np.ndarray, ...]]


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
            try:
                mats[key] = loadmat(handle)
            except Exception as exc:  # scipy raises several types on a damaged file
                raise FileError(path, f"not a MATLAB file scipy can read ({type(exc).__name__})") from None
    try:
        event_list, file_list, box_list = (mats["all"][k] for k in ("event_list", "file_list", "face_bbx_list"))
        events, images, boxes = [], [], []
        keep: dict[str, list[np.ndarray]] = {s: [] for s in SETTINGS}
        for e in range(len(event_list)):
            event = check_plain_name(str(event_list[e][0][0]))
            events.append(event)
            for j in range(len(file_list[e][0])):
                images.append((event, check_plain_name(str(file_list[e][0][j][0][0]))))
                image_boxes = np.asarray(box_list[e][0][j][0], dtype=float).reshape(-1, 4)
                if not np.isfinite(image_boxes).all():
                    raise ValueError(f"image {shown(images[-1][1])} has NaN or infinite boxes")
                boxes.append(image_boxes)
                for setting in SETTINGS:
                    kept = np.asarray(mats[setting]["gt_list"][e][0][j][0]).reshape(-1).astype(np.int64)
                    if len(kept) and (kept.min() < 1 or kept.max() > len(image_boxes)):
                        raise ValueError(f"{setting}: image {shown(images[-1][1])} keeps boxes it does not have")
                    keep[setting].append(kept)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FileError(
            folder / _MAT_FILES["all"], f"not WIDER FACE validation ground truth ({type(exc).__name__}: {exc})"
        ) from None
    return GroundTruth(tuple(events), tuple(images), tuple(boxes), {s: tuple(v) for s, v in keep.items()})


def read_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """(image key, N×5 array of x y w h score) of one prediction file, as the reference reads it.

    Messages name the file and line but never quote its content: a file may be anything a link led to.

    Raises:
        FileError: not a regular file, empty, a row that is not five numbers, or a NaN/inf value.
    """
    data = read_regular_bytes(path, "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        raise FileError(path, "empty prediction file (needs the image name, the count, then x y w h score rows)")
    rows = []
    for number, line in enumerate(lines[2:], start=3):
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
    # the reference keys predictions by the first line's base name with ".jpg" characters stripped
    key = lines[0].rstrip("\r\n").split("/")[-1].rstrip(".jpg")
    return key, np.array(rows) if rows else np.zeros((0, 5))


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
    found: dict[tuple[str, str], np.ndarray] = {}
    known = set(truth.images)
    extra = 0
    for event_dir in sorted(folder.iterdir()):
        event_dir = resolve_inside(folder, event_dir.name)
        if not event_dir.is_dir():
            continue
        for path in sorted(event_dir.iterdir()):
            path = resolve_inside(folder, event_dir.name, path.name)
            if path.is_dir():
                continue
            key, boxes = read_prediction_file(path)
            if (event_dir.name, key) not in known:
                extra += 1
                shown_key = shown(f"{event_dir.name}/{key}")[1:-1]  # escaped and cut, without the quotes
                log.warning("%s: image %s is not in the ground truth; ignored", path, shown_key)
                continue
            found[(event_dir.name, key)] = boxes
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
