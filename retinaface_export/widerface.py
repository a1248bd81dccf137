"""WIDER FACE files: the official validation ground truth (.mat) and prediction folders (WIDER text format).

Prediction format (one file per image, in a folder per event): the image name, the number of faces, then
one ``x y w h score`` row per face.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.errors import FileError

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
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

    Raises:
        FileError: a file is missing or not the expected MATLAB structure.
    """
    from scipy.io import loadmat

    folder = Path(folder)
    mats = {}
    for key, name in _MAT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileError(
                path, "missing: WIDER FACE ground truth needs wider_face_val.mat and the easy/medium/hard files"
            )
        try:
            mats[key] = loadmat(str(path))
        except Exception as exc:  # scipy raises several types on a damaged file
            raise FileError(path, f"not a MATLAB file scipy can read ({type(exc).__name__}: {exc})") from exc
    try:
        event_list, file_list, box_list = (mats["all"][k] for k in ("event_list", "file_list", "face_bbx_list"))
        events, images, boxes = [], [], []
        keep: dict[str, list[np.ndarray]] = {s: [] for s in SETTINGS}
        for e in range(len(event_list)):
            event = str(event_list[e][0][0])
            events.append(event)
            for j in range(len(file_list[e][0])):
                images.append((event, str(file_list[e][0][j][0][0])))
                boxes.append(box_list[e][0][j][0].astype("float"))
                for setting in SETTINGS:
                    keep[setting].append(np.asarray(mats[setting]["gt_list"][e][0][j][0]).reshape(-1).astype(np.int64))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FileError(folder, f"not WIDER FACE validation ground truth ({type(exc).__name__}: {exc})") from exc
    return GroundTruth(tuple(events), tuple(images), tuple(boxes), {s: tuple(v) for s, v in keep.items()})


def read_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """(image key, N×5 array of x y w h score) of one prediction file, as the reference reads it.

    Raises:
        FileError: empty file, or a row that is not five numbers (names the line).
    """
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
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
            raise FileError(path, f"line {number}: not 'x y w h score' numbers: {line.strip()!r}") from None
        if len(rows[-1]) < 5:
            raise FileError(path, f"line {number}: {len(rows[-1])} numbers where 'x y w h score' needs 5")
    # the reference keys predictions by the first line's base name with ".jpg" characters stripped
    key = lines[0].rstrip("\r\n").split("/")[-1].rstrip(".jpg")
    return key, np.array(rows) if rows else np.zeros((0, 5))


def read_predictions(folder: str | Path, truth: GroundTruth) -> list[np.ndarray]:
    """Predictions for every ground-truth image, in its order; an image without a file has none.

    Logs a warning for event folders that are missing and for files of images not in the ground truth.

    Raises:
        FileError: the folder is missing, or a prediction file is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileError(folder, "no such predictions folder")
    found: dict[tuple[str, str], np.ndarray] = {}
    known = set(truth.images)
    for event in truth.events:
        if not (folder / event).is_dir():
            log.warning("%s: no event folder %s: its images count as having no predictions", folder, event)
    extra = 0
    for event_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(event_dir.iterdir()):
            if not path.is_file():
                continue
            key, boxes = read_prediction_file(path)
            if (event_dir.name, key) not in known:
                extra += 1
                log.warning("%s: image %s/%s is not in the ground truth; ignored", path, event_dir.name, key)
                continue
            found[(event_dir.name, key)] = boxes
    missing = len(known) - len(found)
    if missing:
        log.warning("%s: %d of %d ground-truth images have no prediction file", folder, missing, len(known))
    return [found.get(image, np.zeros((0, 5))) for image in truth.images]


def prediction_text(image_name: str, boxes_xywh_score: np.ndarray) -> str:
    """The text of one prediction file (biubug6 test_widerface.py's format)."""
    lines = [image_name, str(len(boxes_xywh_score))]
    lines += [f"{x:.4f} {y:.4f} {w:.4f} {h:.4f} {s:.10f}" for x, y, w, h, s in boxes_xywh_score]
    return "\n".join(lines) + "\n"
