"""Where a detection stream goes: a JSON-lines file written as it runs, and WIDER FACE prediction files.

The JSON-lines file is a log, not a document: it grows one line per image while the run goes on, so it is
appended to and flushed line by line rather than written to a temporary file and renamed (the atomic
write every other output of the project gets would publish nothing until the end, and lose everything on a
kill). Each line goes out in one ``write`` on a descriptor opened with ``O_APPEND``; a run killed in the
middle of one leaves at most a torn last line, which ``--resume`` drops. The WIDER files are small and
whole, each written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.detection.faces import Face
from retinaface_export.errors import FileError, UsageError
from retinaface_export.safety.atomic import atomic_write_bytes
from retinaface_export.safety.safe_paths import resolve_inside
from retinaface_export.widerface import prediction_text

log = logging.getLogger(__name__)


def read_done(path: Path) -> set[str]:
    """The images already recorded in a JSON-lines file; a torn last line is cut off (with a warning).

    Raises:
        FileError: a line other than the last is not a JSON object with an ``image`` (the message names the
            line), or the file cannot be read or cut.
    """
    done: set[str] = set()
    try:
        with open(path, "rb") as handle:
            good_end = 0
            number = 0
            torn = False
            for number, line in enumerate(handle, start=1):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("no line end")
                    record = json.loads(line)
                    done.add(record["image"])
                except (ValueError, KeyError, TypeError):
                    if handle.read(1):  # not the last line: a damaged file, not a run cut short
                        raise FileError(
                            path, f"line {number} is not a detection record; --resume cannot trust this file"
                        ) from None
                    torn = True
                    break
                good_end += len(line)
    except OSError as exc:
        raise FileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from exc
    if torn:
        log.warning("%s: line %d was cut short by an interrupted run; dropped, its image runs again", path, number)
        try:
            os.truncate(path, good_end)
        except OSError as exc:
            raise FileError(path, f"cannot drop its torn last line ({exc.strerror or type(exc).__name__})") from exc
    return done


class JsonLines:
    """An append-only JSON-lines file, one flushed line per record (see the module's note on atomicity)."""

    def __init__(self, path: Path, resume: bool) -> None:
        """Open ``path`` for appending; without ``resume`` it must be absent or empty.

        Raises:
            UsageError: the file has records and ``resume`` is False.
            FileError: the file cannot be opened, or (with ``resume``) is damaged.
        """
        self.path = path
        self.done: set[str] = set()
        if path.exists() and not path.is_file():
            raise FileError(path, "--predictions is not a regular file")
        if resume and path.exists():
            self.done = read_done(path)
        elif path.exists() and path.stat().st_size > 0:
            raise UsageError(f"--predictions {path} already has records: add --resume to go on with it, or remove it")
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise FileError(path, f"cannot be written ({exc.strerror or type(exc).__name__})") from exc

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line, in one ``write`` (flushed: nothing is buffered in this process)."""
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:  # a regular file takes it whole; the loop only covers a short write
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        """Close the file (its lines are already written)."""
        os.close(self._fd)


def widerface_rows(faces: tuple[Face, ...] | list[Face]) -> np.ndarray:
    """Faces as the N×5 ``x y w h score`` rows of a WIDER prediction file (w = x2 − x1 + 1, as retinaface-eval)."""
    rows = [[f.box[0], f.box[1], f.box[2] - f.box[0] + 1, f.box[3] - f.box[1] + 1, f.score] for f in faces]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def write_widerface_prediction(root: Path, image: Path, faces: tuple[Face, ...] | list[Face]) -> Path:
    """``root/EVENT/NAME.txt`` for an image ``.../EVENT/NAME.jpg``, written atomically; its path.

    Raises:
        OutsideFolderError: the image's folder name would lead outside ``root``.
    """
    event, name = image.parent.name, image.stem
    if not event:
        raise FileError(image, "has no folder to name its WIDER event after")
    target = resolve_inside(root, event, f"{name}.txt")
    atomic_write_bytes(target, prediction_text(name, widerface_rows(faces)).encode())
    return target
