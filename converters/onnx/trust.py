"""What the tools trust in an ONNX file, checked before any runtime opens it.

- **ONNX is data for ONNX Runtime**, with two ways to misuse it: external-data paths (read any file the
  user can read) and operators from other domains (custom-op libraries). :func:`check_onnx_file` refuses
  external data outside the model's folder, operators that are not standard ONNX at the model's opset,
  local functions, and inputs/outputs that are not the contract's (``data``; ``face_rpn_bbox_pred``,
  ``face_rpn_cls_prob``, ``face_rpn_landmark_pred`` in that order).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES, OUTPUT_WIDTHS
from retinaface_export.errors import InputFileError, UntrustedArtifactError
from retinaface_export.safety.safe_paths import open_regular, shown


def _onnx_refuse(path: Path, reason: str) -> UntrustedArtifactError:
    return UntrustedArtifactError(path, f"{reason}; refused before opening it with a runtime")


def _graphs(graph: Any) -> Any:
    """``graph`` and every subgraph in its nodes' attributes (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _tensors(graph: Any) -> Any:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def _check_external_data(path: Path, tensor: Any) -> None:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    windows = PureWindowsPath(location)
    if (
        not location
        or PurePosixPath(location).is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in PurePosixPath(location.replace("\\", "/")).parts
    ):
        raise _onnx_refuse(
            path, f"tensor {shown(tensor.name)} has external data at {shown(location)}, outside its folder"
        )
    folder = path.parent.resolve()
    target = path.parent / location
    try:
        inside = target.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise _onnx_refuse(
            path, f"tensor {shown(tensor.name)} has external data at {shown(location)}, outside its folder"
        )
    try:
        with open_regular(target, "an external data file") as handle:
            size = os.fstat(handle.fileno()).st_size
    except InputFileError as exc:
        raise _onnx_refuse(path, f"external data {shown(location)}: {exc.reason}") from None
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", size))
    except ValueError:
        raise _onnx_refuse(path, f"external data {shown(location)} has a non-numeric offset or length") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise _onnx_refuse(path, f"external data {shown(location)} is shorter than its tensor claims")


def _check_operators(path: Path, model: Any) -> None:
    import onnx

    if len(model.functions):
        raise _onnx_refuse(path, "defines local functions, which retinaface-export models never do")
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None:
        raise _onnx_refuse(path, "imports no standard ONNX opset")
    for graph in _graphs(model.graph):
        for node in graph.node:
            known = node.domain in ("", "ai.onnx")
            if known:
                try:
                    onnx.defs.get_schema(node.op_type, version, "")
                except onnx.defs.SchemaError:
                    known = False
            if not known:
                raise _onnx_refuse(
                    path,
                    f"unknown operator {shown(node.op_type)} (domain {shown(node.domain)}) in node "
                    f"{shown(node.name)}; only standard ONNX operators at opset {version} are allowed",
                )


def _check_contract(path: Path, model: Any) -> None:
    import onnx

    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if [value.name for value in inputs] != [INPUT_NAME]:
        names = ", ".join(shown(value.name) for value in inputs) or "none"
        raise _onnx_refuse(path, f"inputs are {names}, not the contract's one input {INPUT_NAME!r}")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or len(tensor_type.shape.dim) != 4:
        raise _onnx_refuse(path, f"input {INPUT_NAME!r} is not a 4-d float32 tensor (N×3×H×W)")
    from retinaface_export.postprocess.settings import DECODE_OUTPUTS, NMS_OUTPUTS

    outputs = [value.name for value in model.graph.output]
    if outputs in (list(DECODE_OUTPUTS), list(NMS_OUTPUTS)):
        return  # post-processing inside the graph (retinaface-export --postprocess): its own contract
    if outputs != list(OUTPUT_NAMES):
        raise _onnx_refuse(
            path,
            f"outputs are {', '.join(shown(n) for n in outputs) or 'none'}, not the contract's "
            f"{', '.join(OUTPUT_NAMES)} (in that order), nor {', '.join(DECODE_OUTPUTS)} or "
            f"{', '.join(NMS_OUTPUTS)} (post-processing inside)",
        )
    for value, width in zip(model.graph.output, OUTPUT_WIDTHS, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 3 or (dims[2].HasField("dim_value") and dims[2].dim_value != width):
            raise _onnx_refuse(path, f"output {shown(value.name)} is not N×A×{width}")


def check_onnx_file(path: str | Path) -> None:
    """Refuse an ONNX model that could read outside its folder, needs non-standard operators, or breaks the contract.

    Call it before ONNX Runtime (or OpenVINO) opens an ``.onnx`` file. It parses the protobuf without loading
    external data, then checks every tensor's external-data path (relative, inside the model's folder after
    symlinks, a regular file long enough), every node's operator (standard ONNX at the model's opset, also in
    subgraphs; no local functions), the contract's input and outputs (names, order, ranks, widths), and
    finally ``onnx.checker.check_model``.

    Raises:
        UntrustedArtifactError: any of the above, naming the file and the first problem.
        InputFileError: missing, a folder, a FIFO or device, a symlink loop.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    with open_regular(path, "an ONNX model") as handle:
        data = handle.read()
    try:
        model = onnx.load_model_from_string(data)  # external data stays where it is: only its paths are read
    except (DecodeError, ValueError, RuntimeError):
        raise _onnx_refuse(path, "not an ONNX model (its protobuf does not parse)") from None
    for graph in _graphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _check_external_data(path, tensor)
    _check_operators(path, model)
    _check_contract(path, model)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise _onnx_refuse(path, f"not a valid ONNX model ({first})") from None
