"""A small reader for the MATLAB 5 files of WIDER FACE's ground truth: cells, char rows and real matrices.

Importing scipy.io costs more than scoring a whole prediction set, so the ground truth's four files are
read here: the 128-byte header, then top-level data elements (compressed with zlib or not), each a
``miMATRIX`` whose cells, strings and numbers are decoded with NumPy. Anything else (big-endian files,
structs, sparse or complex arrays, multi-row strings, non-ASCII text) raises :class:`UnsupportedMatFile`,
and the caller reads the file with scipy instead. ``tests/test_evaluation.py`` checks that both readers
give the same ground truth.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_NUMBERS = {1: "<i1", 2: "<u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}
_CELL, _CHAR = 1, 4
_NUMERIC_CLASSES = set(range(6, 16))  # double, single, int8 ... uint64
_COMPLEX, _LOGICAL = 0x08, 0x02  # array-flag bits (second byte)


class UnsupportedMatFile(ValueError):
    """The file uses a part of the format this reader does not decode (scipy can)."""


@dataclass(frozen=True)
class Cell:
    """A cell array: its dimensions and its elements in MATLAB's (column-major) order."""

    dims: tuple[int, ...]
    items: list[object]


def _element(data: bytes | memoryview, pos: int) -> tuple[int, memoryview, int]:
    """(type, data, position after the element) of the data element at ``pos``.

    Elements are padded to eight bytes, but for compressed ones (the zlib stream's length is the size).
    """
    first, second = struct.unpack_from("<II", data, pos)
    if first >> 16:  # small data element: type and size in the first word, up to four bytes of data after
        size = first >> 16
        if size > 4:
            raise UnsupportedMatFile("a small data element of more than 4 bytes")
        return first & 0xFFFF, memoryview(data)[pos + 4 : pos + 4 + size], pos + 8
    start, end = pos + 8, pos + 8 + second
    if end > len(data):
        raise UnsupportedMatFile("a data element runs past the end of the file")
    return first, memoryview(data)[start:end], end + (0 if first == _MI_COMPRESSED else -second % 8)


def _numbers(kind: int, data: memoryview) -> np.ndarray:
    if kind not in _NUMBERS:
        raise UnsupportedMatFile(f"data type {kind}")
    return np.frombuffer(data, dtype=_NUMBERS[kind])


def _matrix(data: memoryview) -> object:
    """A decoded ``miMATRIX`` body: :class:`Cell`, ``str`` (a one-row char array) or ``np.ndarray``."""
    if not len(data):  # MATLAB writes an empty element for an empty matrix
        return np.zeros((0, 0))
    kind, flags, pos = _element(data, 0)
    if kind != 6 or len(flags) < 8:
        raise UnsupportedMatFile("no array flags")
    array_class, array_flags = flags[0], flags[1]
    kind, dims_data, pos = _element(data, pos)
    if kind != 5 or len(dims_data) % 4:
        raise UnsupportedMatFile("dimensions that are not int32")
    dims = struct.unpack_from(f"<{len(dims_data) // 4}i", dims_data)
    _, _, pos = _element(data, pos)  # the array name: empty inside cells
    if array_flags & (_COMPLEX | _LOGICAL):
        raise UnsupportedMatFile("a complex or logical array")
    count = math.prod(dims)
    if array_class == _CELL:
        items = []
        for _ in range(count):
            kind, body, pos = _element(data, pos)
            if kind != _MI_MATRIX:
                raise UnsupportedMatFile("a cell element that is not a matrix")
            items.append(_matrix(body))
        return Cell(dims, items)
    kind, body, pos = _element(data, pos)
    if array_class == _CHAR:
        if kind in (2, 16):  # uint8, utf8
            text = bytes(body).decode("utf-8", errors="replace")
        elif kind == 4:  # uint16: UTF-16 code units
            text = bytes(body).decode("utf-16-le", errors="replace")
        else:
            raise UnsupportedMatFile(f"characters of data type {kind}")
        if len(dims) != 2 or dims[0] != 1 or len(text) != count or not text.isascii():
            raise UnsupportedMatFile("a string that is not one row of ASCII")
        return text
    if array_class not in _NUMERIC_CLASSES:
        raise UnsupportedMatFile(f"array class {array_class}")
    values = _numbers(kind, body)
    if len(values) != count:
        raise UnsupportedMatFile("a matrix whose data does not fill its dimensions")
    return values.reshape(dims, order="F")


def read_variables(data: bytes, names: set[str]) -> dict[str, object]:
    """The variables ``names`` of a MATLAB 5 file's bytes (others are skipped, compressed ones undecoded).

    Raises:
        UnsupportedMatFile: not a little-endian MATLAB 5 file, or one using what this reader does not decode.
    """
    if len(data) < 128 or data[126:128] != b"IM" or data[124:126] != b"\x00\x01":
        raise UnsupportedMatFile("not a little-endian MATLAB 5 file")
    found: dict[str, object] = {}
    pos = 128
    while pos < len(data) and len(found) < len(names):
        kind, body, pos = _element(data, pos)
        if kind == _MI_COMPRESSED:
            stream = zlib.decompressobj()
            head = stream.decompress(body, 512)  # enough for the element's tag, flags, dims and name
            if len(head) < 8 or struct.unpack_from("<I", head)[0] != _MI_MATRIX or _name(head[8:]) not in names:
                continue
            body = memoryview(head + stream.decompress(stream.unconsumed_tail) + stream.flush())
            kind, body, _ = _element(body, 0)
        if kind == _MI_MATRIX and (name := _name(body)) in names:
            found[name] = _matrix(body)
    missing = names - set(found)
    if missing:
        raise UnsupportedMatFile(f"no variable {sorted(missing)[0]}")
    return found


def _name(body: bytes | memoryview) -> str:
    """The name of the ``miMATRIX`` whose body starts ``body`` (flags, dims, then the name element)."""
    _, _, pos = _element(body, 0)
    _, _, pos = _element(body, pos)
    _, name, _ = _element(body, pos)
    return bytes(name).decode("ascii", errors="replace")
