"""What an ``.mnn`` file must be before MNN opens it, checked in pure Python (no MNN import).

MNN's own loader runs a flatbuffers verifier, which refuses truncated files and garbage, but a file whose
structure is intact and whose contents were changed can crash the process: measured with MNN 3.6.1 on our
320 mobilenet0.25 model, 2 of 5 copies with 20 random bytes flipped killed Python with SIGSEGV inside
``load_module_from_file`` or the first ``forward``; the other 3 ran and returned wrong numbers. So
:func:`check_mnn_file` refuses, before MNN sees the bytes:

- a file that is not a regular file, is empty or implausibly large (:data:`MAX_BYTES`);
- a flatbuffer whose ``Net`` table, operator list, tensor names or output names point outside the file
  (every offset this module follows is bounds-checked);
- a file without retinaface-export's provenance in ``bizCode`` (a JSON object naming the tool);
- a file whose bytes differ from those written: the provenance holds the sha256 of the whole file taken
  with that hash's own 64 characters zeroed (:func:`seal`), so a flipped byte anywhere (weights included)
  is caught without a manifest;
- operators that load code (``Plugin``, ``Extra``: custom-op libraries) and inputs/outputs that are not the
  contract's (``data``; the raw outputs, or the ``decode`` ones, in order).

The seal is integrity, not authenticity: whoever can write the file can recompute it. The manifest's sha256
ties the file to its export; a deliberately crafted file is as dangerous to MNN as to any native runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES
from retinaface_export.errors import UntrustedArtifactError
from retinaface_export.postprocess.settings import DECODE_OUTPUTS
from retinaface_export.provenance import TOOL_NAME
from retinaface_export.safety.safe_paths import open_regular, shown

# Largest .mnn file opened (Resnet50 FP32 is ~110 MB).
MAX_BYTES = 1 << 30
# The provenance key holding the file's own sha256 (see ``seal``), and what stands in for it while hashing.
SEAL_KEY = "content_sha256"
UNSEALED = "0" * 64
# MNN.fbs: fields of table Net, and of table Op (a union takes two slots: its type, then its value).
_NET_BIZ_CODE, _NET_OPLISTS, _NET_OUTPUT_NAME, _NET_TENSOR_NAME = 0, 3, 4, 7
_OP_INPUTS, _OP_NAME, _OP_OUTPUTS, _OP_TYPE = 0, 3, 4, 5
# OpType values: Input, and the two that bring code from outside the model (custom-op plugins, Extra ops).
_OP_INPUT = 34
_CODE_OPS = {256: "Plugin", 512: "Extra"}
# Sanity limits on what a RetinaFace graph has (it has ~300 operators and tensors).
_MAX_ITEMS = 1 << 20


class _Malformed(ValueError):
    """An offset or length that leads outside the file."""


class _Buffer:
    """Bounds-checked reading of a little-endian flatbuffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.data):
            raise _Malformed(f"offset {at} outside the file")
        return struct.unpack_from(fmt, self.data, at)[0]

    def u32(self, at: int) -> int:
        return self._unpack("<I", at)

    def i32(self, at: int) -> int:
        return self._unpack("<i", at)

    def u16(self, at: int) -> int:
        return self._unpack("<H", at)

    def field(self, table: int, index: int) -> int | None:
        """Where field ``index`` of the table at ``table`` is stored, or None when absent."""
        vtable = table - self.i32(table)
        size = self.u16(vtable)
        if size < 4 or size % 2 or vtable + size > len(self.data):
            raise _Malformed("a table's vtable is malformed")
        slot = 4 + 2 * index
        if slot >= size:
            return None
        offset = self.u16(vtable + slot)
        if offset and offset >= self.u16(vtable + 2):
            raise _Malformed("a field lies outside its table")
        return table + offset if offset else None

    def indirect(self, at: int) -> int:
        target = at + self.u32(at)
        if target >= len(self.data):
            raise _Malformed(f"offset {target} outside the file")
        return target

    def vector(self, at: int, item: int) -> tuple[int, int]:
        """(first element, count) of the vector referenced at ``at`` with ``item``-byte elements."""
        start = self.indirect(at)
        count = self.u32(start)
        if count > _MAX_ITEMS or start + 4 + count * item > len(self.data):
            raise _Malformed("a vector runs past the end of the file")
        return start + 4, count

    def string_span(self, at: int) -> tuple[int, int]:
        """(first byte, length) of the string referenced at ``at``."""
        return self.vector(at, 1)

    def string(self, at: int) -> str:
        start, length = self.string_span(at)
        try:
            return self.data[start : start + length].decode()
        except UnicodeDecodeError:
            raise _Malformed("a name is not UTF-8") from None

    def strings(self, at: int | None) -> list[str]:
        if at is None:
            return []
        start, count = self.vector(at, 4)
        return [self.string(start + 4 * k) for k in range(count)]

    def tables(self, at: int | None) -> list[int]:
        if at is None:
            return []
        start, count = self.vector(at, 4)
        return [self.indirect(start + 4 * k) for k in range(count)]

    def ints(self, at: int | None) -> list[int]:
        if at is None:
            return []
        start, count = self.vector(at, 4)
        return [self.i32(start + 4 * k) for k in range(count)]


@dataclass(frozen=True)
class MnnFile:
    """What the trust check read from an ``.mnn`` file."""

    provenance: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    operators: int


def _refuse(path: Path, reason: str) -> UntrustedArtifactError:
    return UntrustedArtifactError(path, f"{reason}; refused before opening it with MNN")


def _biz_code_span(buffer: _Buffer) -> tuple[int, int]:
    root = buffer.u32(0)
    at = buffer.field(root, _NET_BIZ_CODE)
    if at is None:
        raise _Malformed("no bizCode")
    return buffer.string_span(at)


def seal(data: bytes) -> bytes:
    """``data`` (an .mnn file whose bizCode holds ``"content_sha256": UNSEALED``) with that hash filled in.

    The hash is the sha256 of the file as written with the placeholder zeros; filling it in changes no
    length or offset of the flatbuffer.

    Raises:
        ValueError: the bizCode holds the placeholder not exactly once.
    """
    start, length = _biz_code_span(_Buffer(data))
    marker = f'"{SEAL_KEY}": "{UNSEALED}"'.encode()
    biz = data[start : start + length]
    if biz.count(marker) != 1:
        raise ValueError("the bizCode does not hold the seal placeholder exactly once")
    at = start + biz.index(marker) + len(marker) - len(UNSEALED) - 1
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:at] + digest + data[at + len(UNSEALED) :]


def _check_seal(path: Path, data: bytes, start: int, length: int, claimed: object) -> None:
    if not isinstance(claimed, str) or len(claimed) != len(UNSEALED):
        raise _refuse(path, f"its provenance has no {SEAL_KEY} (it was not written by {TOOL_NAME})")
    marker = f'"{SEAL_KEY}": "{claimed}"'.encode()
    biz = data[start : start + length]
    if biz.count(marker) != 1:
        raise _refuse(path, f"its provenance holds {SEAL_KEY} more than once")
    at = start + biz.index(marker) + len(marker) - len(UNSEALED) - 1
    unsealed = data[:at] + UNSEALED.encode() + data[at + len(UNSEALED) :]
    if hashlib.sha256(unsealed).hexdigest() != claimed:
        raise _refuse(path, "its bytes differ from those retinaface-export wrote (content sha256 mismatch)")


def _read_structure(buffer: _Buffer) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...], int, str | None]:
    """(provenance, inputs, outputs, operator count, a code-loading operator's name or None)."""
    root = buffer.u32(0)
    start, length = _biz_code_span(buffer)
    text = buffer.data[start : start + length].decode()  # UTF-8 checked by string_span's caller below
    tensor_names = buffer.strings(buffer.field(root, _NET_TENSOR_NAME))
    outputs = tuple(buffer.strings(buffer.field(root, _NET_OUTPUT_NAME)))
    inputs, code_op = [], None
    operators = buffer.tables(buffer.field(root, _NET_OPLISTS))
    for op in operators:
        name_at = buffer.field(op, _OP_NAME)
        name = buffer.string(name_at) if name_at is not None else ""
        type_at = buffer.field(op, _OP_TYPE)
        op_type = buffer.i32(type_at) if type_at is not None else 0
        for index in [*buffer.ints(buffer.field(op, _OP_INPUTS)), *buffer.ints(buffer.field(op, _OP_OUTPUTS))]:
            if not 0 <= index < len(tensor_names):
                raise _Malformed(f"operator {shown(name)} uses tensor {index} of {len(tensor_names)}")
        if op_type == _OP_INPUT:
            inputs.append(name)
        if op_type in _CODE_OPS and code_op is None:
            code_op = f"{_CODE_OPS[op_type]} operator {shown(name)}"
    try:
        provenance = json.loads(text)
    except json.JSONDecodeError:
        provenance = None
    return provenance, tuple(inputs), outputs, len(operators), code_op


def check_mnn_file(path: str | Path) -> MnnFile:
    """Refuse an ``.mnn`` file that is malformed, altered, not ours, loads code or breaks the contract.

    Returns what was read (provenance, input and output names), so callers open and describe the file
    from one check.

    Raises:
        UntrustedArtifactError: any of the module's checks, naming the file and the first problem.
        InputFileError: missing, a folder, a FIFO or device, a symlink loop.
    """
    path = Path(path)
    with open_regular(path, "an MNN model") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_BYTES:
            raise _refuse(path, f"is {size} bytes, more than the {MAX_BYTES} an MNN RetinaFace can be")
        data = handle.read()
    if len(data) < 16:
        raise _refuse(path, "not an MNN model (too short for a flatbuffer)")
    buffer = _Buffer(data)
    try:
        provenance, inputs, outputs, operators, code_op = _read_structure(buffer)
        start, length = _biz_code_span(buffer)
    except (_Malformed, UnicodeDecodeError) as exc:
        raise _refuse(path, f"not an MNN model, or a damaged one (its flatbuffer: {exc})") from None
    if not isinstance(provenance, dict) or provenance.get("tool") != TOOL_NAME:
        raise _refuse(path, f"its bizCode holds no {TOOL_NAME} provenance (not an artifact of this tool)")
    _check_seal(path, data, start, length, provenance.get(SEAL_KEY))
    if code_op:
        raise _refuse(path, f"has a {code_op}, which loads code from outside the model")
    if inputs != (INPUT_NAME,):
        names = ", ".join(shown(n) for n in inputs) or "none"
        raise _refuse(path, f"inputs are {names}, not the contract's one input {INPUT_NAME!r}")
    if outputs not in (OUTPUT_NAMES, DECODE_OUTPUTS):
        raise _refuse(
            path,
            f"outputs are {', '.join(shown(n) for n in outputs) or 'none'}, not the contract's "
            f"{', '.join(OUTPUT_NAMES)} (in that order) nor {', '.join(DECODE_OUTPUTS)}",
        )
    return MnnFile(provenance, inputs, outputs, operators)
