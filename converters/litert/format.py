"""LiteRT (TFLite): converted by litert-torch from the export's PyTorch model; FP16 weights by ai-edge-quantizer.

litert-torch runs ``torch.export``, so it cannot start from the TorchScript file, and it does not read ONNX.
The conversion therefore rebuilds the export's network from the manifest's checkpoint (sha256-checked,
synthetic weights regenerated and their state_dict sha256 compared: ``ConvertInputs.checkpoint_model``)
and converts it at the source artifact's size and batch; the pipeline then verifies the ``.tflite``
against the source ONNX file run by ONNX Runtime, as every conversion is.

- Names: the module is converted with ``data`` as a keyword input and a dict of outputs, so the model's
  one signature (``serving_default``) takes ``data`` and gives the contract's output names; the runner
  returns them in the contract's order whatever order the flatbuffer lists them in.
- Layout: NCHW, as the contract (litert-torch keeps the PyTorch layout at the model's boundary and inserts
  its own transposes inside).
- Provenance: a metadata entry named ``retinaface_export`` (JSON) in the flatbuffer.
- FP16: float-casting of the convolution weights (ai-edge-quantizer's ``FLOAT_CASTING`` weight-only
  recipe): weights stored in float16 behind ``DEQUANTIZE`` operators, computed in float32.
- ``--postprocess decode`` converts (the decode wrapper of ``converters/torchscript/postprocess``, in
  eager form); ``nms`` and dynamic sources are refused (see :func:`refusal`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.contract import INPUT_NAME
from retinaface_export.converters.litert.runtime import (
    EXTRA,
    RECORDED_OPTIONS,
    RUNTIME,
    check_tflite_file,
    litert_module,
    model_runner,
)
from retinaface_export.converters.litert.trust import METADATA_NAME
from retinaface_export.errors import UsageError
from retinaface_export.extras import import_extra
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner
from retinaface_export.native_stderr import library_log_line, native_chatter_to_debug
from retinaface_export.postprocess.settings import PostprocessMode

if TYPE_CHECKING:
    import torch

# torch.export and litert-torch's lowering keep process-wide state: one conversion at a time.
_CONVERTING = threading.Lock()
# ai-edge-quantizer's names for the FP16 recipe: weight-only, float casting to 16 bits.
_FP16_OPERATIONS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")

DYNAMIC_REFUSAL = (
    "--to litert makes fixed-size models only: litert-torch 0.10 fixes the FPN's upsampling sizes at the "
    "example's size (a model converted with dynamic height and width fails at 640x480) and cannot lower the "
    "heads' reshape with a symbolic batch; convert a fixed-size export (--size)"
)
NMS_REFUSAL = (
    "--to litert cannot convert --postprocess nms: litert-torch goes through torch.export, which cannot trace "
    "the NMS's data-dependent loop (how many candidates pass the threshold); convert a raw or decode export"
)


class _LibraryInfo(logging.Filter):
    """Drops the INFO records litert-torch and ai-edge-quantizer log for every lowering and step."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("litert_torch", "ai_edge_quantizer", "litert_converter"))
        return record.levelno >= logging.WARNING or not noisy


# Loggers held at a level while litert-torch is imported and runs, for what a CPU conversion never uses:
# torchao's CUDA kernels (.so) and Triton missing, torch's pytree notice about the Enums torchao registers,
# JAX looking for a TPU.
_HELD_LOGGERS = {"torchao": logging.ERROR, "torch.utils._pytree": logging.ERROR, "jax._src.xla_bridge": logging.WARNING}


def _converter_chatter(line: bytes) -> bool:
    # TensorFlow's absl/glog INFO lines, and ai-edge-quantizer's progress bar, shown although asked off (its
    # ``quantize`` does not pass ``enable_progress_bar`` on to the step that applies the recipe)
    return library_log_line(line) or b"Applying Transformations to tensors" in line


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """What the converting libraries say, kept out of the tool's output (``-q`` shows warnings only).

    Their INFO records (root and absl loggers) are dropped; the loggers of ``_HELD_LOGGERS`` are held at
    their level; torch's pytree FutureWarnings (litert-torch calls the old API) are ignored; below Python,
    TensorFlow's INFO lines and the quantizer's progress bar go to the debug log. Their real warnings and
    errors still show.
    """
    loggers, quiet = [logging.getLogger(), logging.getLogger("absl")], _LibraryInfo()
    held = {name: logging.getLogger(name).level for name in _HELD_LOGGERS}
    for logger in loggers:
        logger.addFilter(quiet)
    for name, level in _HELD_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings(), native_chatter_to_debug(_converter_chatter, "litert-torch"):
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*(LeafSpec|TreeSpec)")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
        for name, level in held.items():
            logging.getLogger(name).setLevel(level)


def refusal(job: Job) -> str | None:
    """Why ``job`` cannot be made as LiteRT (one line), or None."""
    if job.dynamic:
        return DYNAMIC_REFUSAL
    if job.postprocess.mode == PostprocessMode.NMS:
        return NMS_REFUSAL
    return None


def _named_module(job: Job, network: torch.nn.Module, anchors: AnchorConfig) -> torch.nn.Module:
    """``network`` (with the job's post-processing) returning a dict of its outputs by the contract's names."""
    from torch import nn

    module = network
    if job.postprocess.mode == PostprocessMode.DECODE:
        from retinaface_export.converters.torchscript.postprocess import DecodedRetinaFace

        module = DecodedRetinaFace(network, anchors, job.size)
    names = job.postprocess.outputs

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, data):
            return dict(zip(names, self.inner(data), strict=True))

    return Named().eval()


def _convert_float(job: Job, inputs: ConvertInputs) -> tuple[bytes, float]:
    """The FP32 model at the job's size and batch, and the seconds litert-torch took."""
    import torch

    if inputs.checkpoint_model is None:
        raise UsageError("--to litert converts the export's PyTorch model: the run has no checkpoint to rebuild it")
    network = inputs.checkpoint_model()
    anchors = AnchorConfig.from_mapping(inputs.provenance["anchors"])
    example = torch.from_numpy(np.ascontiguousarray(inputs.source_cases()[0][0]))
    with _CONVERTING, torch.no_grad(), _quiet():
        litert_torch = import_extra("litert_torch", EXTRA, "converting to LiteRT")  # imports TensorFlow, torchao
        litert_torch.config.show_progress = False
        start = time.perf_counter()
        edge = litert_torch.convert(_named_module(job, network, anchors), sample_kwargs={INPUT_NAME: example})
        return bytes(edge.model_content()), time.perf_counter() - start


def fp16_weights(content: bytes) -> tuple[bytes, int]:
    """The model with its convolution weights in float16 (``DEQUANTIZE`` before each), and how many."""
    quantizer = import_extra("ai_edge_quantizer.quantizer", EXTRA, "FP16 LiteRT models")
    algorithms = import_extra("ai_edge_quantizer.algorithm_manager", EXTRA, "FP16 LiteRT models")
    qtyping = import_extra("ai_edge_quantizer.qtyping", EXTRA, "FP16 LiteRT models")
    q = quantizer.Quantizer(bytearray(content))
    for operation in _FP16_OPERATIONS:
        q.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName(operation),
            num_bits=16,
            algorithm_key=algorithms.AlgorithmName.FLOAT_CASTING,
        )
    with _quiet():
        result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    schema = litert_module("schema_py_generated", "FP16 LiteRT models")
    model = schema.Model.GetRootAs(bytes(result.quantized_model), 0)
    halves = sum(
        model.Subgraphs(0).Tensors(t).Type() == schema.TensorType.FLOAT16
        for t in range(model.Subgraphs(0).TensorsLength())
    )
    return bytes(result.quantized_model), halves


def with_metadata(content: bytes, provenance: dict[str, Any]) -> bytes:
    """The model with ``provenance`` as its ``retinaface_export`` metadata entry (JSON), replacing any."""
    utils = litert_module("tools.flatbuffer_utils", "writing .tflite files")
    schema = litert_module("schema_py_generated", "writing .tflite files")
    model = utils.read_model_from_bytearray(bytearray(content))
    kept = [m for m in model.metadata or [] if (m.name or b"") not in (METADATA_NAME, METADATA_NAME.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(provenance, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*kept, entry]
    return bytes(utils.convert_object_to_bytearray(model))


class LiteRtFormat(ArtifactFormat):
    """LiteRT flatbuffers (FP32, FP16 weights) converted from the export's PyTorch model; run by LiteRT."""

    name = "litert"
    suffix = ".tflite"
    runtime = RUNTIME
    # the exported artifact whose size, batch and post-processing a conversion takes (and is verified against)
    source_format = "onnx"
    precisions = ("fp32", "fp16")
    conversion_precisions = precisions

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        del input_format
        return f"{stem}_{precision}{self.suffix}"

    def refusal(self, job: Job) -> str | None:
        return refusal(job)

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        key = ("litert-float", job.size, job.batch, job.postprocess)
        content, seconds = inputs.shared.get(key, lambda: _convert_float(job, inputs))
        conversion: dict[str, Any] = {
            "converter": f"litert-torch {version('litert-torch')}",
            "from": "the export's PyTorch model, rebuilt from its checkpoint (sha256-checked)",
            "seconds": round(seconds, 1),
            "layout": "NCHW",
            "runtime_options": RECORDED_OPTIONS,
        }
        if job.precision == "fp16":
            content, halves = fp16_weights(content)
            conversion["fp16"] = {
                "quantizer": f"ai-edge-quantizer {version('ai-edge-quantizer')}",
                "weights": "float16 (FLOAT_CASTING, weight-only), computed in float32",
                "float16_tensors": halves,
            }
        (staging / job.file_name).write_bytes(with_metadata(content, inputs.provenance))
        return conversion

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """Provenance and runner from one read and one trust check of the file."""
        del optimize
        checked = check_tflite_file(path)
        return checked.provenance, model_runner(checked, threads)

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return check_tflite_file(path).provenance


FORMAT = LiteRtFormat()
