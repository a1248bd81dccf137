"""WIDER FACE files: the official validation ground truth (.mat) and prediction folders (WIDER text format).

Prediction format (one file per image, in a folder per event): the image name, the number of faces, then
one ``x y w h score`` row per face.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from retinaface_export.errors import FileError, InputFileError
from retinaface_export.safety.safe_paths import (
    check_plain_name,
    read_regular_bytes,
    require_folder,
    resolve_inside,
    shown,
)
from retinaface_export.sizes import env_limit

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
# A prediction file holds at most 750 rows of ~60 bytes; anything near this is not one.
MAX_PREDICTION_FILE_BYTES = 16 << 20
# Rows a prediction file may hold (the reference keeps 750 a photo after NMS, from 5000 candidates): scoring
# allocates rows × faces per photo, and a 400,000-row file took 2 GiB. RETINAFACE_EXPORT_MAX_PREDICTIONS sets it.
MAX_PREDICTIONS = 5000
MAX_PREDICTIONS_ENV = "RETINAFACE_EXPORT_MAX_PREDICTIONS"
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

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each image's boxes start among all boxes (one more entry: the total)."""
        return np.concatenate(([0], np.cumsum([len(b) for b in self.boxes]))).astype(np.int64)

    @cached_property
    def corners(self) -> np.ndarray:
        """All boxes, image after image, as float x1 y1 x2 y2 (x2 = x + w, y2 = y + h)."""
        return _corners(np.concatenate(self.boxes) if self.boxes else np.zeros((0, 4)))

    @cached_property
    def counted(self) -> dict[str, np.ndarray]:
        """Per setting, whether each box (in :attr:`corners`' order) is in its image's keep list."""
        return {
            setting: _counted(self.offsets, _flat_keep(self.keep[setting]), [len(k) for k in self.keep[setting]])
            for setting in SETTINGS
        }

    @cached_property
    def kept_total(self) -> dict[str, int]:
        """Per setting, the faces that count (the reference's count_face: the keep lists' lengths summed)."""
        return {setting: sum(len(k) for k in self.keep[setting]) for setting in SETTINGS}


def _corners(boxes: np.ndarray) -> np.ndarray:
    corners = boxes.astype(float)  # a copy
    corners[:, 2:] += corners[:, :2]
    return corners


def _flat_keep(kept: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, np.int64)


def _counted(offsets: np.ndarray, kept: np.ndarray, kept_counts: np.ndarray | list[int]) -> np.ndarray:
    """Which boxes are kept, from every image's 1-based keep list one after the other (``kept_counts`` each)."""
    mask = np.zeros(offsets[-1], dtype=bool)
    mask[kept - 1 + np.repeat(offsets[:-1], kept_counts)] = True
    return mask


def _check_ground_truth(
    images: list[tuple[str, str]], boxes: list[np.ndarray], keep: dict[str, list[np.ndarray]]
) -> None:
    """Boxes finite, kept indices among each image's boxes (checked over the whole set at once).

    Raises:
        ValueError: naming the first image that breaks a rule.
    """
    counts = np.array([len(b) for b in boxes], dtype=np.int64)
    flat = np.concatenate(boxes) if counts.sum() else np.zeros((0, 4))
    kept_counts = {s: np.array([len(k) for k in keep[s]], dtype=np.int64) for s in SETTINGS}
    kept = {s: np.concatenate(keep[s]) if kept_counts[s].sum() else np.zeros(0, np.int64) for s in SETTINGS}
    _check_flat(images, flat, counts, kept, kept_counts)


def _check_flat(
    images: list[tuple[str, str]],
    boxes: np.ndarray,
    counts: np.ndarray,
    kept: dict[str, np.ndarray],
    kept_counts: dict[str, np.ndarray],
) -> None:
    """:func:`_check_ground_truth` of the boxes and keep lists of every image one after the other (``counts`` each)."""
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        image = int(np.searchsorted(np.cumsum(counts), np.flatnonzero(~finite)[0], side="right"))
        raise ValueError(f"image {shown(images[image][1])} has NaN or infinite boxes")
    for setting in SETTINGS:
        if not kept_counts[setting].sum():
            continue
        wrong = (kept[setting] < 1) | (kept[setting] > np.repeat(counts, kept_counts[setting]))
        if wrong.any():
            image = int(np.searchsorted(np.cumsum(kept_counts[setting]), np.flatnonzero(wrong)[0], side="right"))
            raise ValueError(f"{setting}: image {shown(images[image][1])} keeps boxes it does not have")


# parsed ground truth by the sha256 of its four files: a process that loads it twice parses it once
_LOADED: dict[str, GroundTruth] = {}
# the version of a ground-truth cache file's format (see ground_truth_cache)
_CACHE_FORMAT = 2


def _read_mats(folder: Path) -> dict[str, tuple[Path, bytes]]:
    """The bytes of the four .mat files, by key ("all", "easy", ...).

    Raises:
        FileError: a file is missing or not a readable regular file.
    """
    mats = {}
    for key, name in _MAT_FILES.items():
        path = folder / name
        try:
            mats[key] = (path, read_regular_bytes(path, "a MATLAB file"))
        except InputFileError as exc:
            if exc.reason != "no such file":
                raise
            raise FileError(
                path, "missing: WIDER FACE ground truth needs wider_face_val.mat and the easy/medium/hard files"
            ) from None
    return mats


def _digest(mats: dict[str, tuple[Path, bytes]]) -> str:
    digest = hashlib.sha256()
    for key in _MAT_FILES:
        data = mats[key][1]
        digest.update(f"{key}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def ground_truth_key(folder: str | Path) -> str:
    """The sha256 of the four ``wider_*_val.mat`` files in ``folder`` (names a cache of their parsed content).

    Raises:
        FileError: a file is missing or not a readable regular file.
    """
    return _digest(_read_mats(require_folder(folder, "ground-truth folder")))


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """Read the four official ``wider_*_val.mat`` files (once per process for the same files).

    :mod:`retinaface_export.mat5` reads them; scipy reads what it does not (another layout, a damaged file).

    Event and image names are input: each must be a plain name (no separator, no ``..``), as they become
    paths under ``--images`` and ``--save-predictions``. Files already parsed in this process (same
    sha256) are not parsed again.

    Raises:
        FileError: a file is missing or not the expected MATLAB structure, or a name is not plain.
    """
    folder = require_folder(folder, "ground-truth folder")
    mats = _read_mats(folder)
    key = _digest(mats)
    if key not in _LOADED:
        _LOADED[key] = _parse_mats(folder, mats)
    return _LOADED[key]


def _parse_mats(folder: Path, files: dict[str, tuple[Path, bytes]]) -> GroundTruth:
    """Ground truth from the four files' bytes: with :mod:`retinaface_export.mat5`, else with scipy.

    Importing scipy.io takes longer than the rest of an evaluation; the small reader decodes the official
    files, and anything it does not (a damaged file, another layout) is read by scipy as before.
    """
    truth = _ground_truth_mat5(folder, files)
    return truth if truth is not None else _ground_truth_scipy(folder, files)


def _ground_truth_mat5(folder: Path, files: dict[str, tuple[Path, bytes]]) -> GroundTruth | None:
    """The ground truth read by :mod:`retinaface_export.mat5`, or None where it cannot read the files.

    The lists of names, boxes and keep indices are decoded whole (:func:`~retinaface_export.mat5.decode_cell_columns`)
    into the flat arrays scoring reads; only the events' names are decoded one by one.
    """
    import struct
    import zlib

    from retinaface_export.mat5 import (
        Cell,
        CellColumns,
        UnsupportedMatFile,
        decode,
        decode_cell_columns,
        variable_bodies,
    )

    def column(dims: tuple[int, ...], length: int | None = None) -> None:
        if len(dims) != 2 or dims[1] != 1:
            raise UnsupportedMatFile("not a column of cells")
        if length is not None and dims[0] != length:
            raise UnsupportedMatFile("columns of different lengths")

    def columns(cells: CellColumns, lengths: list[int]) -> None:
        column(cells.dims, len(lengths))
        for dims, length in zip(cells.inner_dims, lengths, strict=True):
            column(dims, length)

    try:
        bodies = {key: variable_bodies(data, set(_MAT_VARIABLES[key])) for key, (_, data) in files.items()}
        event_list = decode(bodies["all"]["event_list"])
        if not isinstance(event_list, Cell):
            raise UnsupportedMatFile("not a column of cells")
        column(event_list.dims)
        file_list = decode_cell_columns(bodies["all"]["file_list"])
        column(file_list.dims, len(event_list.items))
        for dims in file_list.inner_dims:
            column(dims)
        lengths = [dims[0] for dims in file_list.inner_dims]
        box_list = decode_cell_columns(bodies["all"]["face_bbx_list"])
        columns(box_list, lengths)
        kept_lists = {s: decode_cell_columns(bodies[s]["gt_list"]) for s in SETTINGS}
        for kept_list in kept_lists.values():
            columns(kept_list, lengths)
        names = file_list.texts
        if names is None or not all(isinstance(event, str) for event in event_list.items):
            raise UnsupportedMatFile("names that are not strings")
        if box_list.values is None or any(kept.values is None for kept in kept_lists.values()):
            raise UnsupportedMatFile("boxes or keep lists that are not matrices")
    except (UnsupportedMatFile, zlib.error, struct.error):
        return None
    try:
        events, images = [], []
        start = 0
        for event, length in zip(event_list.items, lengths, strict=True):
            events.append(check_plain_name(event))
            images += [(event, check_plain_name(name)) for name in names[start : start + length]]
            start += length
        sizes = box_list.shapes.prod(axis=1)
        if (sizes % 4).any():
            image = int(np.flatnonzero(sizes % 4)[0])
            raise ValueError(f"image {shown(images[image][1])} has boxes that are not rows of four numbers")
        kept = {s: kept_lists[s].values.astype(np.int64) for s in SETTINGS}
        kept_counts = {s: kept_lists[s].shapes.prod(axis=1) for s in SETTINGS}
        return _flat_ground_truth(events, images, box_list.values.reshape(-1, 4), sizes // 4, kept, kept_counts)
    except ValueError as exc:
        raise FileError(
            folder / _MAT_FILES["all"], f"not WIDER FACE validation ground truth ({type(exc).__name__}: {exc})"
        ) from None


def _flat_ground_truth(
    events: list[str] | tuple[str, ...],
    images: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    flat: np.ndarray,
    counts: np.ndarray,
    kept: dict[str, np.ndarray],
    kept_counts: dict[str, np.ndarray],
) -> GroundTruth:
    """Ground truth from every image's boxes and keep lists one after the other (``counts``, ``kept_counts`` each).

    The per-image arrays are views of ``flat`` and ``kept``; what scoring reads is computed from the flat
    arrays at once and stored in the cached properties' own slots.

    Raises:
        ValueError: the counts do not add up, or :func:`_check_flat` finds a broken rule.
    """
    boxes = _pieces(flat, counts)
    keep = {s: _pieces(kept[s], kept_counts[s]) for s in SETTINGS}
    if not (len(boxes) == len(images) and all(len(keep[s]) == len(images) for s in SETTINGS)):
        raise ValueError("its lists differ in length")
    _check_flat(list(images), flat, counts, kept, kept_counts)
    truth = GroundTruth(tuple(events), tuple(images), tuple(boxes), {s: tuple(v) for s, v in keep.items()})
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    truth.__dict__.update(
        offsets=offsets,
        corners=_corners(flat),
        counted={s: _counted(offsets, kept[s], kept_counts[s]) for s in SETTINGS},
        kept_total={s: len(kept[s]) for s in SETTINGS},
    )
    return truth


def _ground_truth_scipy(folder: Path, files: dict[str, tuple[Path, bytes]]) -> GroundTruth:
    import io

    from scipy.io import loadmat

    mats = {}
    for key, (path, data) in files.items():
        try:  # only the variables used: the files hold six more label lists, as large
            mats[key] = loadmat(io.BytesIO(data), variable_names=_MAT_VARIABLES[key])
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


# A ground-truth cache file holds these arrays one after the other, each in NumPy's .npy format
# (numpy.lib.format; no pickles, no zip: an .npz cost zipfile's import and a CRC pass, ~8 ms of a ~0.3 s
# evaluation). Names are UTF-8, joined by NUL (no plain name holds one).
_CACHE_ARRAYS = (
    "format",
    "key",
    "events",
    "image_events",
    "image_names",
    "box_counts",
    "boxes",
    *(f"{part}_{setting}" for setting in SETTINGS for part in ("keep_counts", "keep")),
)
CACHE_SUFFIX = ".npys"


def _joined(names: list[str] | tuple[str, ...]) -> np.ndarray:
    return np.frombuffer("\0".join(names).encode(), np.uint8)


def _split_names(joined: np.ndarray, count: int) -> list[str]:
    names = joined.tobytes().decode().split("\0") if count else []
    if len(names) != count:
        raise ValueError("names that do not match their count")
    return [check_plain_name(name) for name in names]


def ground_truth_cache(truth: GroundTruth, key: str) -> bytes:
    """``truth`` as the bytes of a ground-truth cache file, tagged with the .mat files' sha256 ``key``.

    :func:`read_ground_truth_cache` reads it back without scipy, in milliseconds.
    """
    import io

    event_index = {event: i for i, event in enumerate(truth.events)}
    arrays = {
        "format": np.array([_CACHE_FORMAT, len(truth.events)]),
        "key": np.frombuffer(key.encode(), np.uint8),
        "events": _joined(truth.events),
        "image_events": np.array([event_index[event] for event, _ in truth.images], dtype=np.int64),
        "image_names": _joined([name for _, name in truth.images]),
        "box_counts": np.array([len(b) for b in truth.boxes], dtype=np.int64),
        "boxes": np.concatenate(truth.boxes).astype(float) if truth.boxes else np.zeros((0, 4)),
    }
    for setting in SETTINGS:
        arrays[f"keep_counts_{setting}"] = np.array([len(k) for k in truth.keep[setting]], dtype=np.int64)
        arrays[f"keep_{setting}"] = _flat_keep(truth.keep[setting])
    buffer = io.BytesIO()
    for name in _CACHE_ARRAYS:
        np.lib.format.write_array(buffer, arrays[name], allow_pickle=False)
    return buffer.getvalue()


def _pieces(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``flat`` cut into consecutive pieces of ``counts`` rows (views; np.split is slower for many)."""
    bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
    if bounds[-1] != len(flat) or (np.asarray(counts) < 0).any():
        raise ValueError("counts that do not add up to the rows")
    return [flat[start:stop] for start, stop in itertools.pairwise(bounds)]


def read_ground_truth_cache(path: str | Path, key: str) -> GroundTruth:
    """Ground truth from a file :func:`ground_truth_cache` wrote for the .mat files whose sha256 is ``key``.

    The file is input like any other: names are checked to be plain, indices to be in range.

    Raises:
        FileError: not such a file, or one written for other .mat files.
    """
    import io

    path = Path(path)
    stream = io.BytesIO(read_regular_bytes(path, "a ground-truth cache file"))
    try:
        arrays = {name: np.lib.format.read_array(stream, allow_pickle=False) for name in _CACHE_ARRAYS}
        if stream.read(1):
            raise ValueError("more than the cache's arrays")
        if arrays["format"].tolist()[:1] != [_CACHE_FORMAT] or arrays["key"].tobytes() != key.encode():
            raise ValueError("written for other .mat files or by another version")
        events = tuple(_split_names(arrays["events"], int(arrays["format"][1])))
        image_events = arrays["image_events"].astype(np.int64)
        if len(image_events) and not (image_events.min() >= 0 and image_events.max() < len(events)):
            raise ValueError("an image of no event")
        names = _split_names(arrays["image_names"], len(image_events))
        images = tuple(zip([events[e] for e in image_events.tolist()], names, strict=True))
        flat = arrays["boxes"].astype(float).reshape(-1, 4)
        counts = arrays["box_counts"].astype(np.int64)
        kept = {s: arrays[f"keep_{s}"].astype(np.int64) for s in SETTINGS}
        kept_counts = {s: arrays[f"keep_counts_{s}"].astype(np.int64) for s in SETTINGS}
        truth = _flat_ground_truth(events, images, flat, counts, kept, kept_counts)
    except (KeyError, IndexError, TypeError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise FileError(path, f"not a ground-truth cache file for these .mat files ({type(exc).__name__})") from None
    return truth


def _read_lines(path: Path) -> tuple[str, list[str]]:
    """(image key, the ``x y w h score`` lines) of one prediction file."""
    return _split_lines(path, read_regular_bytes(path, "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES))


def _split_lines(path: Path, data: bytes) -> tuple[str, list[str]]:
    """(image key, the lines after the count line) of a prediction file's bytes, as the reference reads them."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        raise FileError(path, "empty prediction file (needs the image name, the count, then x y w h score rows)")
    # the reference keys predictions by the first line's base name with ".jpg" characters stripped
    return _image_key(lines[0]), lines[2:]


def _image_key(first_line: str) -> str:
    return first_line.rstrip("\r\n").split("/")[-1].rstrip(".jpg")


def read_prediction_file(path: Path) -> tuple[str, np.ndarray]:
    """(image key, N×5 array of x y w h score) of one prediction file, as the reference reads it.

    Messages name the file and line but never quote its content: a file may be anything a link led to.

    Raises:
        FileError: not a regular file, empty, a row that is not five numbers, or a NaN/inf value.
    """
    path = Path(path)
    data = read_regular_bytes(path, "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES)
    keys, bodies = _headers([(path, data)])
    plain, (rows,) = _parse_files([(path, data)], bodies)
    return keys[0] or "", plain[rows[0] : rows[1]] if isinstance(rows, tuple) else rows


def _read_file_bytes(path: str) -> bytes:
    """A prediction file's bytes: :func:`read_regular_bytes`' checks on the open descriptor, with less overhead.

    Anything unusual (not a regular file, too large, an error) is left to :func:`read_regular_bytes`, which
    raises the error that names it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return read_regular_bytes(Path(path), "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES)
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_PREDICTION_FILE_BYTES:
            # O_NONBLOCK "has no effect for regular files" (open(2)): no fcntl calls to clear it, per file
            chunks = [os.read(fd, info.st_size + 1)]
            if len(chunks[0]) == info.st_size:  # the size fstat gave, and not a byte more: the whole file
                return chunks[0]
            while chunks[-1] and sum(map(len, chunks)) <= MAX_PREDICTION_FILE_BYTES:
                chunks.append(os.read(fd, 1 << 16))
            data = b"".join(chunks)
            if len(data) <= MAX_PREDICTION_FILE_BYTES:
                return data
    except OSError:
        pass  # an I/O error (EIO): read again below, which names the file and the reason
    finally:
        os.close(fd)
    return read_regular_bytes(Path(path), "a prediction file", max_bytes=MAX_PREDICTION_FILE_BYTES)


# splitlines() breaks lines at these too (\r, \v, \f, \x1c-\x1e, and once decoded \x85, \u2028, \u2029; a lone
# \x85 byte decodes to U+FFFD): a header with any of them is read by the line-by-line path
_ODD_BREAK = re.compile(rb"[\r\x0b\x0c\x1c-\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")
# Fields are read eight bytes at a time as little-endian uint64 words (SWAR): the word that ends a field
# and, for a field of 9 to 15 bytes, the word before it (at most 15 digits: below 2**53, so the mantissa
# converts exactly). Fields of 16 bytes and more are given to float(). The text is read in pieces of about
# _PIECE bytes (whole files): on the whole text at once, most of the time went to fresh memory, and small
# pieces spend it on NumPy's per-call overhead.
_WORD = 8
_LONGEST = 2 * _WORD
_PIECE = 1 << 18
_SHORTEST_LINE = 10  # five one-digit fields, four spaces, a newline
_POW10 = 10.0 ** np.arange(_LONGEST + 1)
_POW10_INT = np.array([10**i for i in range(_WORD + 1)], dtype=np.uint64)
_LOW_BITS = np.uint64(0x0101010101010101)
# _FIELD_LOW[k]: the low bit of each of the last k bytes of a word (a field's own bytes when it is k long)
_FIELD_LOW = np.array([sum(1 << (8 * (_WORD - 1 - i)) for i in range(k)) for k in range(_WORD + 1)], np.uint64)


def _plain_body(data: bytes) -> tuple[str, bytes | memoryview] | None:
    """(image key, body ending in a newline) of a file the one-pass parser may read, or None.

    None for a file whose first two lines the reference's ``splitlines()`` could see differently (another
    line break) or that has no second line. :func:`_parse_plain` checks each line, field and byte of the body.
    """
    first = data.find(b"\n")
    second = data.find(b"\n", first + 1) if first >= 0 else -1
    if second < 0 or _ODD_BREAK.search(data, 0, second):
        return None
    key = _image_key(data[:first].decode("utf-8", errors="replace"))
    if data[-1] != 10:  # the last row without its newline
        return key, data[second + 1 :] + b"\n"
    return key, memoryview(data)[second + 1 :]


def _word_digits(words: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(value of its digits, digit flags, '.' flags, digits after the '.') of the last ``size`` bytes of each word.

    The bytes are digits, '.' or '-' (the caller checked): a digit has bit 4 set ('0'-'9' are 0x30-0x39),
    '.' and '-' (0x2e, 0x2d) do not and differ in bit 0. A word's first byte is its lowest (little-endian);
    the digits before a '.' move up one byte over it, so the digits stand together whatever the '.'. The
    eight digits are then summed in three multiplications (Lemire's "parse eight digits").
    """
    field = _FIELD_LOW[size]
    digit = (words >> np.uint64(4)) & field
    dot = (field ^ digit) & ~words
    above = ~((dot << np.uint64(1)) - np.uint64(1))  # the bits above the '.' (none without one)
    after = ((digit & above) * _LOW_BITS) >> np.uint64(56)
    nibbles = words & (digit * np.uint64(0x0F))
    moved = nibbles & (dot - np.minimum(dot, np.uint64(1)))  # the digits before the '.'
    nibbles ^= moved
    nibbles |= moved << np.uint64(8)
    v = nibbles * np.uint64(10) + (nibbles >> np.uint64(8))  # each even byte: two digits
    pairs = np.uint64(0x000000FF000000FF)
    v = (v & pairs) * np.uint64(100 + (1_000_000 << 32)) + ((v >> np.uint64(16)) & pairs) * np.uint64(
        1 + (10_000 << 32)
    )
    return v >> np.uint64(32), digit, dot, after


def _parse_piece(
    text: bytes, chars: np.ndarray, words: np.ndarray, start: int, stop: int, out: np.ndarray
) -> np.ndarray | None:
    """Where each line of ``text[start:stop]`` (whole lines) ends, its rows×5 values written to ``out``; or None.

    None if the piece is not plain: lines of five fields and a newline, single spaces between them; every
    line of the piece may end with one more space (biubug6's writer leaves it), or none does. ``chars`` and
    ``words`` are ``text`` as bytes and as the (unaligned) uint64 word at each byte; ``text[:start]`` ends
    with a separator; ``out`` (flat) has room for five values a line.
    """
    piece = chars[start:stop]
    kind = piece - np.uint8(45)  # '-' 0, '.' 1, '/' 2, digits 3 to 12; the separators and all else above
    separators = np.flatnonzero(kind > 12)
    if (kind == 2).any():
        return None
    layout = piece[separators]
    line_ends = separators[layout == 10]
    rows = len(line_ends)
    width = len(separators) // rows if rows and len(separators) in (5 * rows, 6 * rows) else 0
    if not width or not (layout.reshape(rows, width)[:, :-1] == 32).all() or layout[-1] != 10:
        return None  # four spaces (five with the trailing one) then the newline, every line
    lengths = np.diff(separators, prepend=-1) - 1
    if width == 6:  # the trailing space: an empty sixth field, left out
        if (lengths[5::6] != 0).any():
            return None
        separators, lengths = separators.reshape(rows, 6)[:, :5].ravel(), lengths.reshape(rows, 6)[:, :5].ravel()
    minus = np.flatnonzero(kind == 0)
    before = chars[start - 1 + minus]
    if not ((before == 32) | (before == 10)).all():  # a '-' only first
        return None
    ends = separators + start
    value, digit, dot, after = _word_digits(words[ends - _WORD], np.minimum(lengths, _WORD))
    malformed = ((dot & (dot - np.uint64(1))) != 0) | (digit == 0)  # two '.' in the word, or no digit
    two = np.flatnonzero(lengths > _WORD)
    if len(two):  # fields of 9 to 16 bytes: the word before (the last word holds at least six digits)
        high, _, high_dot, high_after = _word_digits(
            words[ends[two] - _LONGEST], np.minimum(lengths[two] - _WORD, _WORD)
        )
        low_digits = (digit[two] * _LOW_BITS) >> np.uint64(56)
        value[two] += high * _POW10_INT[low_digits]
        after[two] = np.where(high_dot != 0, high_after + low_digits, after[two])
        malformed[two] |= (high_dot & (high_dot - np.uint64(1)) != 0) | ((high_dot != 0) & (dot[two] != 0))
    long = lengths >= _LONGEST  # 16 digits may pass 2**53, longer fields are not read here: float() reads them
    if (malformed & ~long).any():
        return None
    values = out[: len(value)]
    np.divide(value, _POW10[after], out=values)  # the mantissa (below 2**53: exact as a float) over 10**after
    values[np.searchsorted(ends, minus + start)] *= -1.0  # a '-' stands first: its field ends next
    for field in np.flatnonzero(long).tolist():  # float() itself, as the reference reads them
        try:
            values[field] = float(text[ends[field] - lengths[field] : ends[field]])
        except ValueError:
            return None
    return line_ends + start


def _parse_plain(bodies: list[bytes | memoryview]) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
    """The rows of the bodies from :func:`_plain_body` one after the other, and where each body's are.

    Returns (R×5 values, per body its first and last + 1 row among them, or None for a body to read line
    by line). One pass of NumPy over the bytes, a piece of whole files at a time: fields are found from
    the separators (single spaces and newlines, five fields a line, a space that ends a line dropped),
    checked (digits, '.' and '-' only, a '-' only first, at most one '.', a digit) and converted, eight
    bytes at a time, to an exact integer mantissa divided by a power of ten: the correctly rounded value
    ``float()`` gives. A field of 16 bytes or more is given to ``float()`` itself. A piece with anything
    else has its files read line by line. The rows are written into one array as they are read (at most
    a row a line), not gathered from an array per piece.
    """
    pad = b"\n" * _LONGEST  # before the text: the first field follows a separator, its words stay inside
    text = b"".join([pad, *bodies])
    bounds = np.cumsum([_LONGEST, *map(len, bodies)], dtype=np.int64)
    chars = np.frombuffer(text, np.uint8)
    words = np.ndarray((len(chars) - _WORD + 1,), dtype="<u8", buffer=text, strides=(1,))
    # room for every row a plain text can hold (a line is at least "0 0 0 0 0\n"): pages never written to
    # are never mapped, and counting the lines would read the whole text once more
    out = np.empty(5 * ((len(text) - _LONGEST) // _SHORTEST_LINE))
    spans: list[tuple[int, int] | None] = [None] * len(bodies)
    row = 0
    cuts = np.searchsorted(bounds, np.arange(_LONGEST + _PIECE, bounds[-1], _PIECE)).tolist()
    for first, last in itertools.pairwise(sorted({0, *cuts, len(bodies)})):
        piece_bounds = bounds[first : last + 1]
        line_ends = _parse_piece(text, chars, words, int(piece_bounds[0]), int(piece_bounds[-1]), out[5 * row :])
        if line_ends is None and b" \n" in text[piece_bounds[0] : piece_bounds[-1]]:
            # some lines end with a space and some do not: once more without those spaces
            parts = [bytes(body).replace(b" \n", b"\n") for body in bodies[first:last]]
            piece_text = b"".join([pad, *parts])
            piece_bounds = np.cumsum([_LONGEST, *map(len, parts)], dtype=np.int64)
            piece_chars = np.frombuffer(piece_text, np.uint8)
            piece_words = np.ndarray((len(piece_chars) - _WORD + 1,), "<u8", piece_text, strides=(1,))
            line_ends = _parse_piece(piece_text, piece_chars, piece_words, _LONGEST, len(piece_text), out[5 * row :])
        if line_ends is not None:
            rows = np.searchsorted(line_ends, piece_bounds).tolist()
            for index, (begin, end) in enumerate(itertools.pairwise(rows), start=first):
                spans[index] = (row + begin, row + end)
            row += len(line_ends)
    return out[: 5 * row].reshape(row, 5), spans


def _headers(files: list[tuple[str | Path, bytes]]) -> tuple[list[str | None], list[bytes | memoryview | None]]:
    """Per prediction file its image key (None: an empty file) and its body if plain (None: read line by line)."""
    keys: list[str | None] = []
    bodies: list[bytes | memoryview | None] = []
    for path, data in files:
        checked = _plain_body(data)
        if checked is None:
            try:
                checked = (_split_lines(Path(path), data)[0], None)
            except FileError:  # empty: :func:`_parse_files` says so, in its turn
                checked = (None, None)
        keys.append(checked[0])
        bodies.append(checked[1])
    return keys, bodies


def _parse_files(
    files: list[tuple[str | Path, bytes]],
    bodies: list[bytes | memoryview | None],
    first: tuple[int, ...] | list[int] = (),
) -> tuple[np.ndarray, list[tuple[int, int] | np.ndarray]]:
    """The rows of prediction files (bytes, and bodies from :func:`_headers`), read as the reference reads them.

    Returns (the rows of the plain files, per file its rows: a (first, last + 1) span of those or its own
    array). The plain files (five numbers a line, single spaces: every writer's layout) are read all at
    once by :func:`_parse_plain`, the files listed in ``first`` before the others and in that order; any
    other file is read line by line by :func:`_parse_rows_slowly`, which also says what is wrong with a
    bad one (the first, in file order).

    Raises:
        FileError: a file is empty, malformed, or holds more rows than a prediction file may.
    """
    listed = set(first)
    plain_files = [i for i in first if bodies[i] is not None]
    plain_files += [i for i, body in enumerate(bodies) if body is not None and i not in listed]
    plain, spans = _parse_plain([bodies[i] for i in plain_files])  # type: ignore[misc]
    rows: list[tuple[int, int] | np.ndarray | None] = [None] * len(files)
    for index, span in zip(plain_files, spans, strict=True):
        rows[index] = span
    limit = env_limit(MAX_PREDICTIONS_ENV, MAX_PREDICTIONS)
    for index, (path, data) in enumerate(files):
        found = rows[index]
        if found is None:
            found = rows[index] = _parse_rows_slowly(Path(path), _split_lines(Path(path), data)[1])
        count = found[1] - found[0] if isinstance(found, tuple) else len(found)
        if count > limit:
            raise FileError(
                path,
                f"{count} predictions is more than the {limit} a prediction file may hold "
                f"(set {MAX_PREDICTIONS_ENV}=N to allow more)",
            )
    return plain, rows  # type: ignore[return-value]


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


def read_prediction_rows(folder: str | Path, truth: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for every ground-truth image as one array: :func:`read_predictions` without an array each.

    Returns:
        (R×5 ``x y w h score`` rows: image after image in ``truth.images`` order, file order within one;
        how many rows each image has, 0 for an image without a file).

    Raises:
        FileError: as :func:`read_predictions`.
    """
    folder = Path(folder)
    require_folder(folder, "predictions folder")
    events: list[str] = []
    paths: list[str] = []
    for event_entry in _entries(folder, folder):
        if not event_entry.is_dir():
            continue
        for entry in _entries(folder / event_entry.name, folder):
            if not entry.is_dir():
                events.append(event_entry.name)
                paths.append(entry.path)
    files = [(path, _read_file_bytes(path)) for path in paths]
    # a file's image is its event and the key its first line gives; of two files with one image, the last
    # counts (the reference's dict). Those files are read first, in ground-truth order: their rows are then
    # the start of one array, in the order scoring takes them. The others are read too (a malformed one is
    # an error, as for the reference, which reads them all).
    keys, bodies = _headers(files)
    known = set(truth.images)
    file_of = {image: i for i, image in enumerate(zip(events, keys, strict=True)) if image in known}
    chosen = {i: file_of[image] for i, image in enumerate(truth.images) if image in file_of}
    images = sorted(chosen)
    plain, rows = _parse_files(files, bodies, [chosen[i] for i in images])
    extra = 0
    for event, path, key in zip(events, paths, keys, strict=True):
        if (event, key) not in known:
            extra += 1
            shown_key = shown(f"{event}/{key}")[1:-1]  # escaped and cut, without the quotes
            log.warning("%s: image %s is not in the ground truth; ignored", path, shown_key)
    if not file_of:
        raise FileError(
            folder,
            f"no prediction file for any of the {len(known)} ground-truth images "
            f"(expected EVENT/IMAGE.txt files; {extra} files name other images)",
        )
    for event in truth.events:
        if not (folder / event).is_dir():
            log.warning("%s: no event folder %s: its images count as having no predictions", folder, event)
    missing = len(known) - len(file_of)
    if missing:
        log.warning("%s: %d of %d ground-truth images have no prediction file", folder, missing, len(known))
    found = [rows[chosen[i]] for i in images]
    counts = np.zeros(len(truth.images), np.int64)
    counts[images] = [
        found_rows[1] - found_rows[0] if isinstance(found_rows, tuple) else len(found_rows) for found_rows in found
    ]
    if (
        all(isinstance(f, tuple) for f in found)
        and found[0][0] == 0
        and all(a[1] == b[0] for a, b in itertools.pairwise(found))
    ):
        return plain[: found[-1][1]], counts  # the plain files' rows, read in this order: no copy
    parts = [plain[f[0] : f[1]] if isinstance(f, tuple) else f for f in found]
    return np.concatenate(parts).reshape(-1, 5), counts


def split_rows(rows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``rows`` cut into consecutive arrays of ``counts`` rows each (views)."""
    return _pieces(rows, counts)


def read_predictions(folder: str | Path, truth: GroundTruth) -> list[np.ndarray]:
    """Predictions for every ground-truth image, in its order; an image without a file has none.

    Logs a warning for event folders that are missing and for files of images not in the ground truth.
    Only the folder's own files are read: an event folder or file that is a symlink leading out of it is
    an error.

    Raises:
        FileError: the folder is missing or holds no prediction file for any ground-truth image, a
            prediction file is malformed, or something in it leads outside it.
    """
    return split_rows(*read_prediction_rows(folder, truth))


def prediction_text(image_name: str, boxes_xywh_score: np.ndarray) -> str:
    """The text of one prediction file (biubug6 test_widerface.py's format)."""
    lines = [image_name, str(len(boxes_xywh_score))]
    lines += [f"{x:.4f} {y:.4f} {w:.4f} {h:.4f} {s:.10f}" for x, y, w, h, s in boxes_xywh_score]
    return "\n".join(lines) + "\n"
