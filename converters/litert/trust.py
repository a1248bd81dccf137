"""What the tools trust in a ``.tflite`` file, checked on its bytes before an interpreter is made from them.

A LiteRT model is a flatbuffer the interpreter reads with few checks of its own, and it can name custom
operators (code the host application registers). :func:`check_tflite_bytes` refuses, with one line naming
the file:

- bytes that are not a LiteRT flatbuffer (the file identifier at offset 4 is not ``TFL3``), or not one of
  schema version 3;
- a flatbuffer that does not parse, or whose weight buffers, tensors or operators point outside it
  (a truncated file);
- any operator that is not a builtin of the schema this runtime knows (a custom operator, or a code past
  the schema's last builtin);
- a model whose one signature does not take ``data`` and give the contract's outputs (raw, decoded or NMS
  names).

The flatbuffer schema module is ai-edge-litert's; it reaches this module as an argument, so that
:mod:`~retinaface_export.converters.litert.runtime` stays the one module importing the runtime package.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES
from retinaface_export.errors import UntrustedArtifactError
from retinaface_export.postprocess.settings import DECODE_OUTPUTS, NMS_OUTPUTS
from retinaface_export.safety.safe_paths import shown

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
# the signature litert-torch writes for a module converted without a name
SIGNATURE = "serving_default"
# the named metadata entry holding the retinaface-export provenance block (JSON)
METADATA_NAME = "retinaface_export"
# every output set an artifact may have, each in the contract's order
_OUTPUT_SETS = (OUTPUT_NAMES, DECODE_OUTPUTS, NMS_OUTPUTS)
_CUSTOM = 32  # BuiltinOperator.CUSTOM


@dataclass(frozen=True)
class CheckedModel:
    """A ``.tflite`` file's bytes after the checks, and what the checks read from them."""

    path: Path
    content: bytes
    # the provenance block (the ``retinaface_export`` metadata entry); {} when there is none
    provenance: dict[str, Any]
    # the signature's output names, in the contract's order
    outputs: tuple[str, ...]
    # the builtin operator names the model uses, sorted
    operators: tuple[str, ...]


def _refuse(path: Path, reason: str) -> UntrustedArtifactError:
    return UntrustedArtifactError(path, f"{reason}; refused before opening it with a runtime")


def _builtin_names(schema: ModuleType) -> dict[int, str]:
    names = vars(schema.BuiltinOperator)
    return {value: name for name, value in names.items() if not name.startswith("_") and isinstance(value, int)}


def _text(value: bytes | str | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def _check_buffers(path: Path, model: Any, size: int) -> None:
    """Every weight buffer inside the file: inline data within it, offset/size data (large models) too."""
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        offset, length = buffer.Offset(), buffer.Size()
        if offset > 1 and offset + length > size:
            raise _refuse(path, f"weight buffer {index} lies outside the file (truncated?)")
        if not buffer.DataIsNone():
            start = buffer._tab.Vector(buffer._tab.Offset(4))  # the data vector's first byte
            if start + buffer.DataLength() > size:
                raise _refuse(path, f"weight buffer {index} lies outside the file (truncated?)")


def _check_operators(path: Path, model: Any, schema: ModuleType) -> tuple[str, ...]:
    builtins = _builtin_names(schema)
    codes = []
    for index in range(model.OperatorCodesLength()):
        opcode = model.OperatorCodes(index)
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        custom = _text(opcode.CustomCode())
        if code == _CUSTOM or custom:
            raise _refuse(path, f"custom operator {shown(custom or '?')}: only LiteRT's builtin operators are run")
        if code not in builtins:
            raise _refuse(path, f"operator code {code} is not a builtin this LiteRT knows")
        codes.append(builtins[code])
    buffers = model.BuffersLength()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        tensors = subgraph.TensorsLength()
        for t in range(tensors):
            if subgraph.Tensors(t).Buffer() >= max(buffers, 1):
                raise _refuse(path, f"tensor {t} of subgraph {g} names a buffer the file does not have")
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            if operator.OpcodeIndex() >= len(codes):
                raise _refuse(path, f"operator {o} of subgraph {g} names an operator code the file does not have")
            for i in [*operator.InputsAsNumpy().tolist(), *operator.OutputsAsNumpy().tolist()]:
                if i >= tensors:
                    raise _refuse(path, f"operator {o} of subgraph {g} reads a tensor the file does not have")
    return tuple(sorted(set(codes)))


def _signature_outputs(path: Path, model: Any) -> tuple[str, ...]:
    if model.SignatureDefsLength() != 1:
        raise _refuse(path, f"has {model.SignatureDefsLength()} signatures, expected one ({SIGNATURE})")
    signature = model.SignatureDefs(0)
    inputs = [_text(signature.Inputs(i).Name()) for i in range(signature.InputsLength())]
    outputs = [_text(signature.Outputs(i).Name()) for i in range(signature.OutputsLength())]
    if inputs != [INPUT_NAME]:
        raise _refuse(path, f"takes {', '.join(map(shown, inputs)) or 'nothing'}, not the contract's {INPUT_NAME!r}")
    for names in _OUTPUT_SETS:
        if sorted(outputs) == sorted(names):
            return names
    raise _refuse(path, f"outputs {', '.join(map(shown, outputs))} are not the contract's ({', '.join(OUTPUT_NAMES)})")


def _provenance(path: Path, model: Any, content: bytes) -> dict[str, Any]:
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if _text(entry.Name()) != METADATA_NAME:
            continue
        if entry.Buffer() >= model.BuffersLength():
            raise _refuse(path, f"its {METADATA_NAME!r} metadata names a buffer the file does not have")
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:
            data = content[buffer.Offset() : buffer.Offset() + buffer.Size()]
        else:
            data = buffer.DataAsNumpy().tobytes() if not buffer.DataIsNone() else b""
        try:
            block = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _refuse(path, f"its {METADATA_NAME!r} metadata is not JSON") from None
        if not isinstance(block, dict):
            raise _refuse(path, f"its {METADATA_NAME!r} metadata is not a JSON object")
        return block
    return {}


def check_tflite_bytes(path: Path, content: bytes, schema: ModuleType) -> CheckedModel:
    """``content`` (the bytes of ``path``) checked as the module says; ``schema``: the flatbuffer schema module.

    Raises:
        UntrustedArtifactError: naming the file and the first problem found.
    """
    if len(content) < 8 or content[4:8] != FILE_IDENTIFIER:
        found = content[4:8] if len(content) >= 8 else b""
        raise _refuse(path, f"not a LiteRT model (file identifier {found!r}, expected {FILE_IDENTIFIER!r})")
    if struct.unpack_from("<I", content, 0)[0] + 4 > len(content):
        raise _refuse(path, "its root table lies outside the file (truncated?)")
    try:
        model = schema.Model.GetRootAs(content, 0)
        if model.Version() != SCHEMA_VERSION:
            raise _refuse(path, f"schema version {model.Version()}, expected {SCHEMA_VERSION}")
        _check_buffers(path, model, len(content))
        operators = _check_operators(path, model, schema)
        outputs = _signature_outputs(path, model)
        provenance = _provenance(path, model, content)
    except UntrustedArtifactError:
        raise
    except Exception as exc:  # the generated reader fails in struct/index/numpy errors on a damaged flatbuffer
        raise _refuse(path, f"not a readable LiteRT flatbuffer ({type(exc).__name__}; truncated or damaged?)") from None
    return CheckedModel(path, content, provenance, outputs, operators)
