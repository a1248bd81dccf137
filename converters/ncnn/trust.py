r"""What an ncnn artifact must be before ncnn parses it: the ``.param`` text, the ``.bin`` layout, the sidecar.

ncnn's parser trusts its input. It sizes its blob table from the count on the second line and then writes
every layer's outputs into it, so a count that lies writes past the table; it creates any layer type it
knows (or a custom one a program registered); a convolution's ``weight_data_size`` decides how much it
reads from the ``.bin`` and how many input channels it assumes. So nothing is handed to ncnn until
:func:`check_ncnn_artifact` has read all three files and found them to be what ``converters/ncnn`` writes:

- ``.param``: ASCII, magic ``7767517``, exactly as many layer lines as the header says and as many distinct
  blobs; layer types from :data:`LAYER_PARAMS` (what pnnx writes for RetinaFace) with only their known
  parameter ids, numeric values (quoted shape expressions only where pnnx writes them); plain layer and blob
  names (no ``/``, ``\`` or ``..``); every blob made once, before it is read, and read at most once; one
  ``Input`` named ``data``; the contract's three outputs and no other unread blob; every convolution's
  weight count equal to its output channels × its input channels (followed through the graph) × kernel.
- ``.bin``: exactly the bytes those convolutions read, each weight block tagged float32 (FP32 artifacts)
  or float16 (FP16), nothing else (no INT8 tables).
- ``.ncnn.json`` (the sidecar: ncnn's param format has no comments): a JSON object of at most 1 MB whose
  ``retinaface_export`` block is the provenance and whose ``ncnn`` block holds the sha256 of the ``.param``
  and ``.bin`` it describes, so a sidecar beside another model (another size) is refused.

Every refusal is one :class:`UntrustedArtifactError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES
from retinaface_export.errors import UntrustedArtifactError
from retinaface_export.safety.safe_paths import read_regular_bytes, shown

MAGIC = "7767517"
PARAM_SUFFIX = ".ncnn.param"
BIN_SUFFIX = ".ncnn.bin"
SIDECAR_SUFFIX = ".ncnn.json"
# the provenance block and the ncnn block of the sidecar
PROVENANCE_BLOCK = "retinaface_export"
NCNN_BLOCK = "ncnn"
# ncnn's weight-block tags (ModelBin): raw float32, and float16 (0x01306B47)
TAG_FP32 = b"\x00\x00\x00\x00"
TAG_FP16 = (0x01306B47).to_bytes(4, "little")
WEIGHT_TAGS = {"fp32": TAG_FP32, "fp16": TAG_FP16}

# Layer types pnnx writes for RetinaFace (both backbones, fixed and dynamic) and the parameter ids each
# carries: anything else is refused.
_CONV = {0, 1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16, -23310}
LAYER_PARAMS: dict[str, frozenset[int]] = {
    "Input": frozenset({0, 1, 2}),
    "Convolution": frozenset(_CONV),
    "ConvolutionDepthWise": frozenset(_CONV | {7}),
    "Pooling": frozenset({0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15}),
    "ReLU": frozenset({0}),
    "BinaryOp": frozenset({0}),
    "Split": frozenset(),
    "Concat": frozenset({0}),
    "Interp": frozenset({0, 1, 2, 3, 4, 5, 6, 9}),
    "Permute": frozenset({0}),
    "Reshape": frozenset({0, 1, 2, 3, 6}),
    "Softmax": frozenset({0, 1}),
}
# (layer, id) whose value may be a quoted shape expression (pnnx's dynamic shapes)
_EXPRESSIONS = {("Reshape", 6), ("Interp", 9)}
# (inputs, outputs) each layer may have: None = any count ≥ 1
_ARITY: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = {
    "Input": ((0,), (1,)),
    "Split": ((1,), None),
    "Concat": (None, (1,)),
    "BinaryOp": ((2,), (1,)),
    "Interp": ((1, 2), (1,)),
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,63}")
_INT = re.compile(r"-?\d{1,10}")
_FLOAT = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?")
_EXPRESSION = re.compile(r'"[0-9A-Za-z,*()+\-/.]{1,128}"')
_PRINTABLE = re.compile(r"[\x20-\x7e\n]*")
MAX_PARAM_BYTES = 1 << 20
MAX_SIDECAR_BYTES = 1 << 20
MAX_LAYERS = 4096
# Largest .bin accepted: RetinaFace Resnet50 is ~105 MB in float32.
MAX_BIN_BYTES = 1 << 30


def _refuse(path: Path, reason: str) -> UntrustedArtifactError:
    return UntrustedArtifactError(path, f"{reason}; refused before ncnn parses it")


@dataclass(frozen=True)
class Layer:
    """One line of a ``.param``."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, str]


@dataclass(frozen=True)
class CheckedArtifact:
    """An ncnn artifact's three files, read once and checked."""

    param_text: str
    layers: tuple[Layer, ...]
    bin_path: Path
    provenance: dict[str, Any]
    ncnn: dict[str, Any]


def _value(path: Path, layer: str, key: int, value: str) -> None:
    if key <= -23300:  # an array: count, then that many numbers
        items = value.split(",")
        if not _INT.fullmatch(items[0]) or int(items[0]) != len(items) - 1 or len(items) > 17:
            raise _refuse(path, f"layer {shown(layer)}: array parameter {key} with a count that lies")
        if not all(_FLOAT.fullmatch(item) for item in items[1:]):
            raise _refuse(path, f"layer {shown(layer)}: parameter {key} is not a list of numbers")
    elif _EXPRESSION.fullmatch(value):
        return
    elif not _FLOAT.fullmatch(value):
        raise _refuse(path, f"layer {shown(layer)}: parameter {key}={shown(value)} is not a number")


def parse_param(path: Path, text: str) -> tuple[Layer, ...]:
    """The layers of a ``.param`` text, or :class:`UntrustedArtifactError` (see the module's notes)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != MAGIC:
        raise _refuse(path, f"not an ncnn param file (the first line is not the magic number {MAGIC})")
    header = lines[1].split() if len(lines) > 1 else []
    if len(header) != 2 or not all(_INT.fullmatch(v) and int(v) > 0 for v in header):
        raise _refuse(path, "the second line is not '<layer count> <blob count>'")
    layer_count, blob_count = (int(v) for v in header)
    if layer_count > MAX_LAYERS or blob_count > 2 * MAX_LAYERS:
        raise _refuse(path, f"{layer_count} layers and {blob_count} blobs; RetinaFace has a few hundred")
    if len(lines) - 2 != layer_count:
        raise _refuse(path, f"the header says {layer_count} layers, the file has {len(lines) - 2} layer lines")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) < 4 or not _INT.fullmatch(fields[2]) or not _INT.fullmatch(fields[3]):
            raise _refuse(path, f"line {number} is not a layer ('<type> <name> <inputs> <outputs> ...')")
        kind, name = fields[0], fields[1]
        if kind not in LAYER_PARAMS:
            raise _refuse(
                path, f"line {number}: layer type {shown(kind)} is not one retinaface-export's conversion writes"
            )
        if not _NAME.fullmatch(name) or ".." in name:
            raise _refuse(path, f"line {number}: layer name {shown(name)} is not a plain name")
        n_in, n_out = int(fields[2]), int(fields[3])
        allowed_in, allowed_out = _ARITY.get(kind, ((1,), (1,)))
        if (allowed_in and n_in not in allowed_in) or (allowed_out and n_out not in allowed_out) or n_in < 0:
            raise _refuse(path, f"line {number}: {kind} with {n_in} inputs and {n_out} outputs")
        if kind in ("Split", "Concat") and (n_out < 1 or n_in < 1):
            raise _refuse(path, f"line {number}: {kind} with {n_in} inputs and {n_out} outputs")
        blobs = fields[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise _refuse(path, f"line {number}: fewer blob names than its counts say")
        for blob in blobs:
            if not _NAME.fullmatch(blob) or ".." in blob:
                raise _refuse(path, f"line {number}: blob name {shown(blob)} is not a plain name")
        params: dict[int, str] = {}
        for item in fields[4 + n_in + n_out :]:
            key, sep, value = item.partition("=")
            if not sep or not _INT.fullmatch(key) or int(key) in params:
                raise _refuse(path, f"line {number}: {shown(item)} is not a parameter '<id>=<value>'")
            if int(key) not in LAYER_PARAMS[kind]:
                raise _refuse(path, f"line {number}: {kind} parameter {key} is not one our conversion writes")
            if value.startswith('"') and (kind, int(key)) not in _EXPRESSIONS:
                raise _refuse(path, f"line {number}: {kind} parameter {key} is a string")
            _value(path, name, int(key), value)
            params[int(key)] = value
        layers.append(Layer(kind, name, tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    _check_graph(path, layers, blob_count)
    return tuple(layers)


def _int_param(layer: Layer, key: int, default: int) -> int:
    value = layer.params.get(key)
    if value is None:
        return default
    if not _INT.fullmatch(value):
        raise ValueError(f"{layer.type} parameter {key} is not an integer")
    return int(value)


def _check_graph(path: Path, layers: list[Layer], blob_count: int) -> None:
    """Blobs made once and read once after; one input ``data``; the contract's outputs; channel counts."""
    made: dict[str, int | None] = {}  # blob -> channels (None: not a C×H×W feature map)
    read: set[str] = set()
    inputs = [layer for layer in layers if layer.type == "Input"]
    if [layer.outputs for layer in inputs] != [(INPUT_NAME,)]:
        raise _refuse(path, f"does not have exactly one Input layer whose blob is {INPUT_NAME!r}")
    for layer in layers:
        for blob in layer.inputs:
            if blob not in made:
                raise _refuse(path, f"layer {shown(layer.name)} reads blob {shown(blob)} before any layer makes it")
            if blob in read:
                raise _refuse(path, f"blob {shown(blob)} is read by two layers (ncnn needs a Split)")
            read.add(blob)
        for blob in layer.outputs:
            if blob in made:
                raise _refuse(path, f"blob {shown(blob)} is made by two layers")
        try:
            channels = _channels(layer, [made[b] for b in layer.inputs])
        except ValueError as exc:
            raise _refuse(path, f"layer {shown(layer.name)}: {exc}") from None
        for blob in layer.outputs:
            made[blob] = channels
    if len(made) != blob_count:
        raise _refuse(path, f"the header says {blob_count} blobs, the layers make {len(made)}")
    unread = [blob for blob in made if blob not in read]
    if sorted(unread) != sorted(OUTPUT_NAMES):
        raise _refuse(
            path,
            f"outputs are {', '.join(shown(b) for b in unread) or 'none'}, not the contract's "
            f"{', '.join(OUTPUT_NAMES)}",
        )


def _channels(layer: Layer, bottoms: list[int | None]) -> int | None:
    """Output channels of ``layer`` from its inputs' (None: not a C×H×W map); ValueError when inconsistent."""
    kind = layer.type
    if kind == "Input":
        return 3
    if kind in ("Convolution", "ConvolutionDepthWise"):
        (cin,) = bottoms
        if cin is None:
            raise ValueError(f"{kind} on a blob that is not a feature map")
        cout = _int_param(layer, 0, 0)
        kw = _int_param(layer, 1, 0)
        kh = _int_param(layer, 11, kw)
        groups = _int_param(layer, 7, 1) if kind == "ConvolutionDepthWise" else 1
        weights = _int_param(layer, 6, 0)
        if min(cout, kw, kh, groups) < 1 or cin % groups or cout % groups:
            raise ValueError(f"{cout} outputs, kernel {kw}x{kh}, {groups} groups on {cin} channels")
        if weights != cout * (cin // groups) * kw * kh:
            raise ValueError(f"weight_data_size {weights} is not {cout} outputs × {cin // groups} inputs × {kw}x{kh}")
        if _int_param(layer, 5, 0) not in (0, 1):
            raise ValueError("bias_term is neither 0 nor 1")
        return cout
    if kind == "BinaryOp":
        if bottoms[0] != bottoms[1]:
            raise ValueError(f"adds blobs of {bottoms[0]} and {bottoms[1]} channels")
        return bottoms[0]
    if kind == "Concat":
        if _int_param(layer, 0, 0) == 0 and all(c is not None for c in bottoms):
            return sum(c for c in bottoms if c is not None)
        return None
    if kind in ("Permute", "Reshape", "Softmax"):
        return None
    return bottoms[0]  # Split, ReLU, Pooling, Interp keep the channels of their (first) input


def weight_blocks(layers: tuple[Layer, ...]) -> list[tuple[str, int, int]]:
    """``(layer name, weight count, bias count)`` of every layer that reads the ``.bin``, in file order."""
    return [
        (layer.name, _int_param(layer, 6, 0), _int_param(layer, 0, 0) if _int_param(layer, 5, 0) else 0)
        for layer in layers
        if layer.type in ("Convolution", "ConvolutionDepthWise")
    ]


def check_bin(path: Path, data: bytes, layers: tuple[Layer, ...], precision: str) -> None:
    """The ``.bin`` bytes ``data`` hold exactly the weight blocks ``layers`` read, each tagged for ``precision``."""
    tag = WEIGHT_TAGS.get(precision)
    if tag is None:
        raise _refuse(path, f"precision {shown(str(precision))} is not one ncnn artifacts are written in")
    position = 0
    item = 2 if precision == "fp16" else 4
    for name, weights, biases in weight_blocks(layers):
        if data[position : position + 4] != tag:
            raise _refuse(path, f"the weights of layer {shown(name)} are not tagged {precision}")
        position += 4 + (weights * item + 3) // 4 * 4 + 4 * biases
        if position > len(data):
            raise _refuse(path, f"shorter than its param file's layers read (at layer {shown(name)})")
    if position != len(data):
        raise _refuse(path, f"{len(data) - position} bytes more than its param file's layers read")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar JSON (at most 1 MB): an object with a provenance block and an ncnn block."""
    data = read_regular_bytes(path, "an ncnn artifact's sidecar", MAX_SIDECAR_BYTES)
    try:
        sidecar = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise _refuse(path, "not a JSON sidecar") from None
    if (
        not isinstance(sidecar, dict)
        or not isinstance(sidecar.get(PROVENANCE_BLOCK), dict)
        or not isinstance(sidecar.get(NCNN_BLOCK), dict)
    ):
        raise _refuse(path, f"not a retinaface-export sidecar ({PROVENANCE_BLOCK!r} and {NCNN_BLOCK!r} blocks)")
    return sidecar


def companion(param: Path, suffix: str) -> Path:
    """The file beside ``param`` (``x.ncnn.param``) with ``suffix`` instead of ``.ncnn.param``."""
    return param.with_name(param.name.removesuffix(PARAM_SUFFIX) + suffix)


def check_ncnn_artifact(path: str | Path) -> CheckedArtifact:
    """Read and check an ncnn artifact's ``.param``, ``.bin`` and sidecar (see the module's notes).

    Raises:
        UntrustedArtifactError: any file is not what retinaface-export writes, or the sidecar describes
            other files.
        InputFileError: a file is missing, not a regular file, or too large.
    """
    path = Path(path)
    raw = read_regular_bytes(path, "an ncnn param file", MAX_PARAM_BYTES)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _refuse(path, "not an ncnn param file (not ASCII text)") from None
    if not _PRINTABLE.fullmatch(text):
        raise _refuse(path, "not an ncnn param file as pnnx writes it (control characters)")
    layers = parse_param(path, text)
    sidecar_path = companion(path, SIDECAR_SUFFIX)
    sidecar = read_sidecar(sidecar_path)
    block = sidecar[NCNN_BLOCK]
    if block.get("param_sha256") != hashlib.sha256(raw).hexdigest():
        raise _refuse(sidecar_path, f"describes another param file than {path.name}")
    bin_path = companion(path, BIN_SUFFIX)
    weights = read_regular_bytes(bin_path, "an ncnn weights file", MAX_BIN_BYTES)
    check_bin(bin_path, weights, layers, sidecar[PROVENANCE_BLOCK].get("precision"))
    if block.get("bin_sha256") != hashlib.sha256(weights).hexdigest():
        raise _refuse(sidecar_path, f"describes another weights file than {bin_path.name}")
    return CheckedArtifact(text, layers, bin_path, sidecar[PROVENANCE_BLOCK], block)
