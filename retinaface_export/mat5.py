"""A small reader for the MATLAB 5 files of WIDER FACE's ground truth: cells, char rows and real matrices.

Importing scipy.io costs more than scoring a whole prediction set, so the ground truth's four files are
read here: the 128-byte header, then top-level data elements (compressed with zlib or not), each a
``miMATRIX`` (:func:`variable_bodies`). :func:`decode` decodes one element by element; WIDER's lists (a
cell of 61 cells holding 3,226 names, box matrices or keep lists) are decoded whole by
:func:`decode_cell_columns`: one pass over the tags, then NumPy checks every header and gathers every
matrix at once. Anything else (big-endian files, structs, sparse, complex or logical arrays, multi-row
strings, non-ASCII text, for the whole-cell decoder also N-D matrices and named elements) raises
:class:`UnsupportedMatFile`, and the caller reads the file with scipy instead. ``tests/test_mat5.py`` and
``tests/test_evaluation.py`` check both readers against scipy.
"""

from __future__ import annotations

import array
import itertools
import math
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_NUMBERS = {1: "<i1", 2: "<u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}
_CELL, _CHAR = 1, 4
_NUMERIC_CLASSES = set(range(6, 16))  # double, single, int8 ... uint64
_COMPLEX, _LOGICAL = 0x08, 0x02  # array-flag bits (second byte)
_TEXT = {2: "<u1", 4: "<u2", 16: "<u1"}  # uint8, uint16 (UTF-16 code units), utf8


class UnsupportedMatFile(ValueError):
    """The file uses a part of the format this reader does not decode (scipy can)."""


@dataclass(frozen=True)
class Cell:
    """A cell array: its dimensions and its elements in MATLAB's (column-major) order."""

    dims: tuple[int, ...]
    items: list[object]


@dataclass(frozen=True)
class CellColumns:
    """A cell of cells whose innermost elements are all numeric matrices or all strings, decoded at once.

    Attributes:
        dims: the outer cell's dimensions.
        inner_dims: each inner cell's dimensions, in MATLAB's (column-major) order.
        shapes: (rows, columns) of every innermost element, inner cell after inner cell (0x0 for an empty one).
        values: the numbers as float64 (64-bit integers past 2**53 rounded), element after element, each
            element's in row-major (C) order, as ``np.asarray(element).reshape(-1)`` gives them; None for
            strings (empty if there are no elements).
        texts: the strings, element after element; None for numbers (empty if there are no elements).
    """

    dims: tuple[int, ...]
    inner_dims: list[tuple[int, ...]]
    shapes: np.ndarray
    values: np.ndarray | None
    texts: list[str] | None


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
    if len(data) % np.dtype(_NUMBERS[kind]).itemsize:
        raise UnsupportedMatFile("a matrix whose data does not fill its dimensions")
    return np.frombuffer(data, dtype=_NUMBERS[kind])


def _header(data: memoryview, pos: int = 0) -> tuple[int, tuple[int, ...], int]:
    """(array class, dimensions, position after the name) of the ``miMATRIX`` body starting at ``pos``."""
    kind, flags, pos = _element(data, pos)
    if kind != 6 or len(flags) < 8:
        raise UnsupportedMatFile("no array flags")
    array_class, array_flags = flags[0], flags[1]
    kind, dims_data, pos = _element(data, pos)
    if kind != 5 or len(dims_data) % 4:
        raise UnsupportedMatFile("dimensions that are not int32")
    dims = struct.unpack_from(f"<{len(dims_data) // 4}i", dims_data)
    if min(dims, default=0) < 0:
        raise UnsupportedMatFile("negative dimensions")
    _, _, pos = _element(data, pos)  # the array name: empty inside cells
    if array_flags & (_COMPLEX | _LOGICAL):
        raise UnsupportedMatFile("a complex or logical array")
    return array_class, dims, pos


def decode(data: memoryview) -> object:
    """A ``miMATRIX`` body, element by element: :class:`Cell`, ``str`` (a one-row char array) or ``np.ndarray``."""
    if not len(data):  # MATLAB writes an empty element for an empty matrix
        return np.zeros((0, 0))
    array_class, dims, pos = _header(data)
    count = math.prod(dims)
    if array_class == _CELL:
        items = []
        for _ in range(count):
            kind, body, pos = _element(data, pos)
            if kind != _MI_MATRIX:
                raise UnsupportedMatFile("a cell element that is not a matrix")
            items.append(decode(body))
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


def variable_bodies(data: bytes, names: set[str]) -> dict[str, memoryview]:
    """The ``miMATRIX`` bodies of the variables ``names`` (others are skipped, compressed ones undecoded).

    Raises:
        UnsupportedMatFile: not a little-endian MATLAB 5 file, or a variable of ``names`` missing.
        zlib.error, struct.error: a damaged file.
    """
    if len(data) < 128 or data[126:128] != b"IM" or data[124:126] != b"\x00\x01":
        raise UnsupportedMatFile("not a little-endian MATLAB 5 file")
    found: dict[str, memoryview] = {}
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
            found[name] = body
    missing = names - set(found)
    if missing:
        raise UnsupportedMatFile(f"no variable {sorted(missing)[0]}")
    return found


def decode_cell_columns(body: memoryview) -> CellColumns:
    """A variable that is a cell of cells of numeric matrices (or of strings), decoded in a few array operations.

    WIDER FACE's lists hold thousands of small matrices; decoding them one by one (:func:`decode`) costs
    more than scoring a prediction set. Here one pass over the tags finds where each innermost element
    starts, and NumPy checks their headers and gathers their data all at once. Each innermost element must
    be a real 2-D matrix with an empty name (as MATLAB and scipy write cells) holding only its flags,
    dimensions, name and data, every one a number or every one a one-row ASCII string.

    Raises:
        UnsupportedMatFile: any other layout (:func:`decode` or scipy may still read it).
    """
    try:
        return _cell_columns(body)
    except (IndexError, struct.error):
        raise UnsupportedMatFile("a cell element that runs past its cell") from None


def _cell_columns(body: memoryview) -> CellColumns:
    if len(body) % 8:
        raise UnsupportedMatFile("a variable that is not a whole number of 8-byte words")
    words = array.array("I")
    if words.itemsize != 4:
        raise UnsupportedMatFile("no 4-byte unsigned integers on this platform")
    words.frombytes(body)
    if sys.byteorder != "little":
        words.byteswap()
    outer_class, dims, pos = _header(body)
    if outer_class != _CELL:
        raise UnsupportedMatFile("not a cell")
    inner_dims: list[tuple[int, ...]] = []
    starts: list[int] = []
    append = starts.append
    for _ in range(math.prod(dims)):
        if words[pos // 4] != _MI_MATRIX:
            raise UnsupportedMatFile("a cell element that is not a matrix")
        end = pos + 8 + words[pos // 4 + 1]
        if not words[pos // 4 + 1]:
            raise UnsupportedMatFile("an empty matrix where a cell is expected")
        inner_class, inner, first = _header(body, pos + 8)
        if inner_class != _CELL or first % 8:
            raise UnsupportedMatFile("a cell element that is not a cell")
        inner_dims.append(inner)
        at = first // 4
        for _ in range(math.prod(inner)):  # where each innermost element starts (its tag is checked later)
            append(at)
            at += 2 + (words[at + 1] >> 2)  # sizes that are not whole words are refused later
        if at * 4 != end:
            raise UnsupportedMatFile("a cell whose elements do not fill it")
        pos = end
    leaves = _leaves(body, np.array(starts, dtype=np.int64))
    return CellColumns(tuple(dims), inner_dims, *leaves)


def _leaves(body: memoryview, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(shapes, values, texts) of the innermost matrices whose tags are at word ``starts`` (see CellColumns)."""
    if not len(starts):
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0), []
    words = np.frombuffer(body, "<u4")
    if (words[starts] != _MI_MATRIX).any():
        raise UnsupportedMatFile("a cell element that is not a matrix")
    sizes = words[starts + 1].astype(np.int64)
    full = sizes > 0  # an empty element stands for a 0x0 matrix
    at = starts[full]
    if (sizes[full] < 48).any() or (sizes % 8).any():
        raise UnsupportedMatFile("a cell element too short for a matrix header")
    # flags tag, flags, nzmax, dims tag, rows, cols, name tag, data tag (its two words)
    head = words[at[:, None] + np.arange(2, 14)].astype(np.int64)
    if not (
        (head[:, 0] == 6).all()
        and (head[:, 1] == 8).all()
        and (head[:, 4] == 5).all()
        and (head[:, 5] == 8).all()  # two dimensions
        and (head[:, 8] == 1).all()
        and (head[:, 9] == 0).all()  # an empty name
        and not (head[:, 2] & ((_COMPLEX | _LOGICAL) << 8)).any()
        and (head[:, 6] < 2**31).all()
        and (head[:, 7] < 2**31).all()
    ):
        raise UnsupportedMatFile("a cell element that is not a plain 2-D matrix")
    classes = head[:, 2] & 0xFF
    small = head[:, 10] >> 16 > 0  # a small data element: type and size in one word, the data after it
    kinds = np.where(small, head[:, 10] & 0xFFFF, head[:, 10])
    nbytes = np.where(small, head[:, 10] >> 16, head[:, 11])
    data_at = np.where(small, at + 13, at + 14) * 4
    ends = np.where(small, at + 14, at + 14 + (nbytes + 7) // 8 * 2)
    if (small & (nbytes > 4)).any() or (ends != at + 2 + sizes[full] // 4).any():
        raise UnsupportedMatFile("a matrix with more than its flags, dimensions, name and data")
    shapes = np.zeros((len(starts), 2), dtype=np.int64)
    shapes[full] = head[:, 6:8]
    if len(at) and (classes == _CHAR).all() and full.all():
        if (head[:, 6] != 1).any():
            raise UnsupportedMatFile("a string that is not one row")
        codes = _gather(body, _TEXT, kinds, data_at, nbytes, head[:, 6:8])
        if len(codes) and codes.max() >= 128:
            raise UnsupportedMatFile("a string that is not ASCII")
        text = codes.astype(np.uint8).tobytes().decode("ascii")
        bounds = np.concatenate(([0], np.cumsum(head[:, 7]))).tolist()
        return shapes, None, [text[a:b] for a, b in itertools.pairwise(bounds)]
    if not ((classes >= min(_NUMERIC_CLASSES)) & (classes <= max(_NUMERIC_CLASSES))).all():
        raise UnsupportedMatFile("a cell element that is neither a number matrix nor a string")
    return shapes, _gather(body, _NUMBERS, kinds, data_at, nbytes, head[:, 6:8]), None


def _gather(
    body: memoryview,
    types: dict[int, str],
    kinds: np.ndarray,
    data_at: np.ndarray,
    nbytes: np.ndarray,
    shapes: np.ndarray,
) -> np.ndarray:
    """Every matrix's numbers (``shapes`` rows x columns, data at byte ``data_at``) as float64, each row-major."""
    counts = shapes[:, 0] * shapes[:, 1]
    parts = []
    for kind in sorted(set(kinds.tolist())):  # not np.unique: its first call imports numpy.ma (~20 ms)
        if kind not in types:
            raise UnsupportedMatFile(f"data type {kind}")
        dtype = np.dtype(types[kind])
        chosen = kinds == kind
        if (nbytes[chosen] != counts[chosen] * dtype.itemsize).any() or (data_at[chosen] % dtype.itemsize).any():
            raise UnsupportedMatFile("a matrix whose data does not fill its dimensions")
        typed = np.frombuffer(body, dtype, count=len(body) // dtype.itemsize)
        parts.append((chosen, typed[_row_major(data_at[chosen] // dtype.itemsize, shapes[chosen])]))
    if len(parts) == 1:
        return parts[0][1].astype(np.float64)
    out = np.empty(int(counts.sum()), dtype=np.float64)
    first = np.cumsum(counts) - counts
    for chosen, part in parts:
        out[_runs(first[chosen], counts[chosen])] = part
    return out


def _runs(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices first[0], first[0] + 1, ... (counts[0] of them), then the same from first[1], ..."""
    return np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))


def _row_major(first: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Where each element of matrices stored column-major from ``first`` on is, taken in row-major order."""
    rows, cols = shapes[:, 0], shapes[:, 1]
    counts = rows * cols
    if (rows <= 1).all() or (cols <= 1).all():  # vectors: both orders are the storage order
        return _runs(first, counts)
    some = counts > 0
    first, rows, cols = first[some], rows[some], cols[some]
    if (cols == cols[0]).all():  # one width (boxes: N x 4): the start of every row, then its columns
        step = np.repeat(rows, rows)
        return (_runs(first, rows)[:, None] + np.arange(cols[0]) * step[:, None]).ravel()
    counts = counts[some]
    start = np.repeat(first, counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return start + k % np.repeat(cols, counts) * np.repeat(rows, counts) + k // np.repeat(cols, counts)


def _name(body: bytes | memoryview) -> str:
    """The name of the ``miMATRIX`` whose body starts ``body`` (flags, dims, then the name element)."""
    _, _, pos = _element(body, 0)
    _, _, pos = _element(body, pos)
    _, name, _ = _element(body, pos)
    return bytes(name).decode("ascii", errors="replace")
