"""ONNX: exported with the Open Model Zoo names and provenance in ``metadata_props``; run by ONNX Runtime.

Deliberately the TorchScript-based exporter (``dynamo=False``), not the torch.export one that is
torch's default since 2.9: for this static CNN it gives the same graph numerics, any opset from 11, and
exports in a tenth of the time (0.6 s vs 8 s for mobilenet0.25 at 640, 5.6 s vs 13 s for Resnet50).
torch is pinned, so its deprecation does not bite; this module is the one place to change if it does.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES, OUTPUT_WIDTHS
from retinaface_export.converters.onnx.int8 import INT8
from retinaface_export.converters.onnx.runtime import RUNTIME, onnxruntime_runner
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner
from retinaface_export.quantize import quantize_detector
from retinaface_export.sizes import InputSize

if TYPE_CHECKING:
    from retinaface_export.anchors import AnchorConfig

DEFAULT_OPSET = 17
# Resize with `sizes` (the FPN's nearest upsampling) needs opset 11.
MIN_OPSET = 11
MAX_OPSET = 20


def _dynamic_axes() -> dict[str, dict[int, str]]:
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 1: "anchors"} for name in OUTPUT_NAMES})
    return axes


def _fix_output_widths(proto) -> None:
    """The exporter leaves the last output axis symbolic under dynamic axes; it is 4, 2 and 10."""
    for output, width in zip(proto.graph.output, OUTPUT_WIDTHS, strict=True):
        last = output.type.tensor_type.shape.dim[-1]
        last.Clear()
        last.dim_value = width


def _set_dims(dims, values: tuple[int, ...]) -> None:
    for dim, value in zip(dims, values, strict=True):
        dim.Clear()
        dim.dim_value = value


def pin_shapes(proto, batch: int, size: InputSize, num_anchors: int) -> None:
    """Give a dynamic graph a fixed ``batch``×3×H×W input and ``batch``×``num_anchors``×(4, 2, 10) outputs."""
    _set_dims(proto.graph.input[0].type.tensor_type.shape.dim, (batch, 3, size.height, size.width))
    for output, width in zip(proto.graph.output, OUTPUT_WIDTHS, strict=True):
        _set_dims(output.type.tensor_type.shape.dim, (batch, num_anchors, width))


class OnnxExporter:
    """Exports ``model`` once, with dynamic batch/height/width; :meth:`artifact` pins that graph per size.

    ``torch.onnx.export`` traces the whole model and serialises every weight on each call (2-3 s for
    Resnet50). A fixed-size export differs from the dynamic one only in its declared shapes and in the
    FPN upsampling sizes, which the dynamic graph computes from its input (Shape → Resize) where a
    fixed-size trace holds them as constants. So the graph is exported once and each fixed-size artifact
    is that graph with its input shape pinned: the same operators and weights at every size, which also
    lets ``retinaface-convert`` convert it to OpenVINO once and reshape it per size. onnxsim folds the
    shape arithmetic into constants, per size.
    """

    def __init__(self, model, example, opset: int = DEFAULT_OPSET) -> None:
        import onnx
        import torch

        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice of the TorchScript-based exporter
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=_dynamic_axes(),
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buffer.getvalue())
        _fix_output_widths(proto)
        onnx.checker.check_model(proto, full_check=True)
        self._dynamic = proto.SerializeToString()

    def artifact(self, job: Job, anchors: AnchorConfig, provenance: dict[str, Any]) -> bytes:
        """The serialised model at the job's size × batch (dynamic without a size) with ``provenance``.

        The dynamic graph passed ``onnx.checker`` (with strict shape inference) when it was exported; a
        pinned copy differs from it in declared dimensions only, which the exporter's verification run
        at that size checks against PyTorch. Post-processing (``decode``, ``nms``) is appended to the
        pinned graph (:mod:`retinaface_export.converters.onnx.postprocess`).
        """
        import onnx

        from retinaface_export.converters.onnx.postprocess import add_postprocess  # imports onnx

        proto = onnx.load_from_string(self._dynamic)
        if job.size is not None:
            pin_shapes(proto, job.batch, job.size, anchors.num_anchors(job.size.height, job.size.width))
        if not job.postprocess.raw:
            proto = add_postprocess(proto, anchors, job.postprocess.mode, job.postprocess.settings, job.size)
        set_metadata(proto, provenance)
        return proto.SerializeToString()


def set_metadata(proto, values: dict[str, Any]) -> None:
    """Make ``metadata_props`` exactly ``values`` (values that are not strings as JSON).

    Entries already there are dropped: a derived model describes itself, not its source.
    """
    del proto.metadata_props[:]
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        proto.metadata_props.add(key=key, value=text)


def decode_metadata(proto) -> dict[str, Any]:
    """``metadata_props`` with JSON-encoded values decoded (the inverse of :func:`set_metadata`)."""
    decoded: dict[str, Any] = {}
    for entry in proto.metadata_props:
        try:
            decoded[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            decoded[entry.key] = entry.value
    return decoded


def read_onnx_provenance(path: str | Path) -> dict[str, Any]:
    """An ONNX file's provenance: its ``metadata_props``, JSON values decoded."""
    import onnx

    check_onnx_file(path)
    return decode_metadata(onnx.load(str(path), load_external_data=False))


def graph_fingerprint(proto) -> str:
    """sha256 of an ONNX model with its declared input/output shapes and metadata left out.

    Two files with the same fingerprint compute the same function and differ only in the shapes they
    declare (the fixed-size artifacts pinned from one dynamic export): a converter may convert one and
    reshape it for the others.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    for value in [*copy.graph.input, *copy.graph.output]:
        value.type.tensor_type.shape.Clear()
    return hashlib.sha256(copy.SerializeToString()).hexdigest()


def _sort_nodes(graph) -> None:
    """Order ``graph``'s nodes so each comes after the nodes whose outputs it reads (ONNX requires it).

    Written here deliberately: onnx has no public topological sort, and this is a dozen lines.
    """
    available = {value.name for value in [*graph.input, *graph.initializer]} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ValueError("the graph has a cycle or reads a value nothing produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if node not in ready]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def source_model(inputs: ConvertInputs):
    """The parsed source ONNX of a conversion, shared by every job of the run (changers work on a copy)."""
    import onnx

    def load():
        check_onnx_file(inputs.source_path)
        return onnx.load(str(inputs.source_path))

    return inputs.shared.get(("onnx-model", inputs.source_path), load)


class OnnxFormat(ArtifactFormat):
    """ONNX from the PyTorch model (FP32), and FP16/INT8 ONNX converted from it; run by ONNX Runtime."""

    name = "onnx"
    suffix = ".onnx"
    runtime = RUNTIME
    int8 = INT8
    exported = True
    source_format = "onnx"
    precisions = ("fp32", "fp16", "int8")
    conversion_precisions = ("fp16", "int8")
    uses_opset = True

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        del input_format
        return stem + ("" if precision == "fp32" else f"_{precision}") + self.suffix

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        """FP16: weights and compute in half, inputs and outputs float32; INT8: static QDQ, calibrated."""
        import onnx

        source = source_model(inputs)
        conversion: dict[str, Any] = {}
        if job.precision == "fp16":
            # onnxruntime's own converter (bundled with it): keep_io_types leaves data and the outputs float32
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(source, keep_io_types=True)
            _sort_nodes(model.graph)  # the converter appends its input casts after their consumers
        else:
            if inputs.int8 is None:
                raise ValueError("INT8 needs calibration and validation photos")
            copy = onnx.ModelProto()
            copy.CopyFrom(source)
            model, conversion["int8"] = quantize_detector(INT8, copy, inputs.int8)
        set_metadata(model, inputs.provenance | conversion)
        (staging / job.file_name).write_bytes(model.SerializeToString())
        return conversion

    def exporter(self, model, example, opset: int) -> OnnxExporter:
        return OnnxExporter(model, example, opset)

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """Provenance and runner with one trust check of the file."""
        import onnx

        check_onnx_file(path)
        metadata = decode_metadata(onnx.load(str(path), load_external_data=False))
        return metadata, onnxruntime_runner(path, optimize=optimize, threads=threads, checked=True)

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return read_onnx_provenance(path)


FORMAT = OnnxFormat()
