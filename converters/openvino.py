"""OpenVINO IR from an exported ONNX graph, with optional INT8 (NNCF) and embedded preprocessing.

:func:`read_onnx` converts an ONNX file (``openvino.convert_model``, the slow step: ~2 s for Resnet50);
:func:`finish_ir` makes the IR asked for from a copy of that model, reshaped to a size (the exported ONNX
files of one checkpoint share their graph and differ in input shape only, so one conversion serves every
size), quantised by NNCF, with the preprocessing embedded; the command saves it with :func:`save_ir`.

INT8 settings, chosen by measuring F1 of decoded faces against FP32 on the crowd photo (mobilenet0.25 at
320 and 640): NNCF's MIXED preset (asymmetric activations; the symmetric PERFORMANCE preset lost a quarter
of the faces: F1 0.75 at 640), full bias correction (F1 0.92 at 320 where the fast one gave 0.83, and
faster IR), the three prediction heads and the softmax left in floating point.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.contract import INPUT_NAME, MEAN_BGR
from retinaface_export.runtimes import OPENVINO_LOCK, OPENVINO_RT_SECTION

# Input formats an IR can take (see retinaface_export.preprocess.INPUT_FORMATS).
PLAIN_INPUT = "f32-nchw-minus-mean"
RAW_FLOAT_INPUT = "f32-nchw"
RAW_U8_INPUT = "u8-nhwc"
# Nodes kept out of INT8: the 1×1 heads (tiny, and their outputs are the detections) and the softmax.
INT8_IGNORED_PATTERNS = (r".*ClassHead.*", r".*BboxHead.*", r".*LandmarkHead.*")
INT8_IGNORED_TYPES = ("Softmax", "SoftMax")


@dataclass(frozen=True)
class OpenVinoRequest:
    """What IR to make."""

    precision: str
    input_format: str = PLAIN_INPUT
    calibration: list[np.ndarray] | None = None


def _quantize(model, samples: list[np.ndarray]):
    import nncf
    from nncf.common.logging.logger import set_log_level

    # NNCF logs at INFO to its own stdout handler and draws progress bars on stdout with no switch to turn
    # them off; the command has its own progress display, so both are silenced here.
    set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            model,
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(
                patterns=list(INT8_IGNORED_PATTERNS), types=list(INT8_IGNORED_TYPES), validate=False
            ),
        )


def _embed_preprocessing(model, input_format: str):
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    data = ppp.input(INPUT_NAME)
    if input_format == RAW_U8_INPUT:
        data.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        data.preprocess().convert_element_type(ov.Type.f32)
    else:
        data.tensor().set_layout(ov.Layout("NCHW"))
    data.model().set_layout(ov.Layout("NCHW"))
    data.preprocess().mean(list(MEAN_BGR))
    return ppp.build()


def read_onnx(source: Path):
    """``source`` (an exported ONNX file) as an ``ov.Model``, before any precision or preprocessing choice."""
    import openvino as ov

    with OPENVINO_LOCK:
        return ov.convert_model(str(source))


def finish_ir(base, input_shape: list[int | str], request: OpenVinoRequest, provenance: dict[str, Any]):
    """The IR for ``request`` from a copy of ``base`` (left as it is), with ``provenance`` in its ``rt_info``.

    Args:
        base: from :func:`read_onnx`.
        input_shape: the source ONNX's input shape (its dimension names for dynamic axes); ``base`` is
            reshaped to it.
        request: precision (``fp32``/``fp16``/``int8``), input format, calibration samples for INT8
            (network inputs as the ONNX model takes them).
        provenance: written under ``rt_info/retinaface_export``; values that are not strings as JSON.
    """
    from openvino.passes import ConstantFolding, Manager

    with OPENVINO_LOCK:
        model = base.clone()
        model.reshape({INPUT_NAME: [dim if isinstance(dim, int) else -1 for dim in input_shape]})
        # At a fixed size the shape arithmetic (ShapeOf → Resize sizes) is constant: fold it before NNCF
        # sees the graph, as a per-size export would have it.
        folding = Manager()
        folding.register_pass(ConstantFolding())
        folding.run_passes(model)
    if request.precision == "int8":
        if not request.calibration:
            raise ValueError("INT8 needs calibration samples")
        model = _quantize(model, request.calibration)
    if request.input_format != PLAIN_INPUT:
        model = _embed_preprocessing(model, request.input_format)
    for key, value in provenance.items():
        model.set_rt_info(
            value if isinstance(value, str) else json.dumps(value, sort_keys=True), [OPENVINO_RT_SECTION, key]
        )
    return model


def save_ir(model, xml_path: Path, precision: str) -> list[Path]:
    """Write ``model.xml`` and ``model.bin``; FP16 compresses weights, FP32 and INT8 keep FP32 weights.

    ``ov.save_model`` compresses to FP16 by default, which must not happen to an IR labelled FP32.
    """
    import openvino as ov

    with OPENVINO_LOCK:
        ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return [xml_path, xml_path.with_suffix(".bin")]
