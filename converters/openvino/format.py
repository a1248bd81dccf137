"""OpenVINO IR from an exported ONNX graph (FP32/FP16/bf16/INT8, embedded preprocessing); run by the CPU plugin.

The exported ONNX files of one checkpoint share their graph and differ in input shape only, so
``openvino.convert_model`` (the slow step: ~2 s for Resnet50) runs once per graph and each IR is a copy
reshaped to its size, its shape arithmetic folded, quantised by NNCF, with the preprocessing embedded.

INT8 is NNCF with accuracy control, judged by strict detection F1 against the float IR on validation photos
(``retinaface_export/quantize.py`` holds the settings and why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retinaface_export.contract import INPUT_NAME, MEAN_BGR
from retinaface_export.converters.onnx.format import graph_fingerprint, source_model
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.converters.openvino.int8 import INT8
from retinaface_export.converters.openvino.postprocess import match_reference_nms
from retinaface_export.converters.openvino.precision import mark_precise, older_ops_for_cpu
from retinaface_export.converters.openvino.runtime import RUNTIME, openvino_core, openvino_module, openvino_submodule
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT
from retinaface_export.quantize import Int8Request, quantize_detector

# rt_info section of an IR that holds retinaface-export's provenance.
RT_SECTION = "retinaface_export"
# rt_info section where openvino.convert_model copies the source ONNX's metadata_props: removed, since it
# describes the source (its precision and size), not the IR.
SOURCE_METADATA_SECTION = "framework"
RAW_FLOAT_INPUT = "f32-nchw"
RAW_U8_INPUT = "u8-nhwc"
# The inference precision each IR asks the CPU plugin for (rt_info runtime_options). bf16: weights stored in
# FP32, executed in bf16 where the CPU has it (avx512_bf16, AMX); INT8's float parts run as the plugin decides.
EXECUTION_HINTS = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}
# Precisions whose every layer is marked to stay out of bf16 for a client that compiles with no options.
KEPT_PRECISE = ("fp32", "fp16")
# File-name tag of each input format.
INPUT_TAGS = {DEFAULT_INPUT_FORMAT: "", RAW_FLOAT_INPUT: "_mean", RAW_U8_INPUT: "_u8"}


def _embed_preprocessing(model, input_format: str):
    ov = openvino_module()
    PrePostProcessor = openvino_submodule("preprocess").PrePostProcessor

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
    ov = openvino_module()
    check_onnx_file(source)
    model = ov.convert_model(str(source))
    del model.get_rt_info()[SOURCE_METADATA_SECTION]
    match_reference_nms(model)  # OpenVINO's NMS suppresses at IoU == threshold, the reference only above
    return model


def finish_ir(base, job: Job, int8: Int8Request | None, provenance: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The IR ``job`` asks for from a copy of ``base`` (left as it is), with ``provenance`` in its ``rt_info``.

    Returns the IR and what its conversion reports (INT8: the photo sets and the accuracy reached).

    Raises:
        AccuracyDropError: INT8 that misses its accuracy target (and the request does not allow it).
    """
    openvino_module()
    passes = openvino_submodule("passes")

    shape = [-1, 3, -1, -1] if job.size is None else [job.batch, 3, job.size.height, job.size.width]
    model = base.clone()
    model.reshape({INPUT_NAME: shape})
    # At a fixed size the shape arithmetic (ShapeOf → Resize sizes) is constant: fold it before NNCF sees
    # the graph, as a per-size export would have it.
    folding = passes.Manager()
    folding.register_pass(passes.ConstantFolding())
    folding.run_passes(model)
    older_ops_for_cpu(model)  # the CPU plugin takes them as they are, keeping their precision marks (precision.py)
    conversion: dict[str, Any] = {}
    if job.precision == "int8":
        if int8 is None:
            raise ValueError("INT8 needs calibration and validation photos")
        model, conversion["int8"] = quantize_detector(INT8, model, int8)
        provenance = provenance | conversion
    if job.input_format != DEFAULT_INPUT_FORMAT:
        model = _embed_preprocessing(model, job.input_format)
    for key, value in provenance.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value, sort_keys=True), [RT_SECTION, key])
    for key, value in model_info(job).items():
        model.set_rt_info(value, ["model_info", key])
    # What the IR asks for; OpenVINO 2026.4's CPU plugin ignores this entry when a client compiles with no
    # options: for FP32/FP16 the precision marks written on every layer after saving (precision.py) keep that
    # compile in f32; a bf16 IR carries no marks, so a CPU with bf16 runs it in bf16 whoever compiles it
    # (and one without runs f32: the verification record says which ran).
    model.set_rt_info(EXECUTION_HINTS[job.precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    return model, conversion


def model_info(job: Job) -> dict[str, str]:
    """``rt_info/model_info``: what OpenVINO Model API-style readers configure their preprocessing from.

    ``mean_values`` is what the client must subtract (``0 0 0`` when the IR subtracts it itself); BGR in, so no
    channel reversal; ``resize_type standard``: the whole image stretched to the input, as ``retinaface-detect``
    then feeds the IR too (:meth:`OpenVinoFormat.client_resize`). That is the one resize whose boxes OMZ's
    ``RetinaFacePyTorch`` wrapper maps back right: its post-processing divides by the two stretch ratios and
    undoes no padding, so a ``fit_to_window*`` letterbox of any kind puts its boxes in the wrong place
    (``tests/test_omz_client.py``).
    """
    embedded = job.input_format != DEFAULT_INPUT_FORMAT
    return {
        "model_type": "RetinaFace-PyTorch",
        "mean_values": "0 0 0" if embedded else " ".join(f"{m:g}" for m in MEAN_BGR),
        "scale_values": "1 1 1",
        "reverse_input_channels": "False",
        "resize_type": "standard",
        "layout": f"{INPUT_NAME}:{'NHWC' if job.input_format == RAW_U8_INPUT else 'NCHW'}",
        "postprocess": job.postprocess.mode,
    }


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class OpenVinoFormat(ArtifactFormat):
    """OpenVINO IR (FP32/FP16/bf16/INT8, optional embedded mean) from an ONNX artifact."""

    name = "openvino"
    suffix = ".xml"
    runtime = RUNTIME
    int8 = INT8
    source_format = "onnx"
    precisions = ("fp32", "fp16", "bf16", "int8")
    conversion_precisions = precisions
    input_formats = (DEFAULT_INPUT_FORMAT, RAW_FLOAT_INPUT, RAW_U8_INPUT)
    companion_suffixes = (".bin",)

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        return f"{stem}_{precision}{INPUT_TAGS[input_format]}{self.suffix}"

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        ov = openvino_module()

        fingerprint = inputs.shared.get(
            ("fingerprint", inputs.source_path), lambda: graph_fingerprint(source_model(inputs))
        )
        base = inputs.shared.get(("openvino-base", fingerprint), lambda: read_onnx(inputs.source_path))
        model, conversion = finish_ir(base, job, inputs.int8, inputs.provenance)
        # save_model compresses to FP16 by default, which must not happen to an IR labelled FP32 or INT8.
        ov.save_model(model, str(staging / job.file_name), compress_to_fp16=job.precision == "fp16")
        if job.precision in KEPT_PRECISE:
            # every layer kept out of bf16: FP32 (and FP16 weights) executed in f32 by every client. Not bf16
            # (its point), nor INT8: under a bf16 inference precision the marks made INT8 lose faces (strict
            # F1 at 416: 0.966 marked, 0.970 unmarked, 0.972 in f32), so an INT8 IR runs as OpenVINO decides
            # for a client (recorded).
            conversion["precise_layers"] = mark_precise(staging / job.file_name)
        return conversion

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return self.provenance_blocks(path).get(RT_SECTION, {})

    def client_resize(self, path: Path) -> str:
        """``stretch`` when the IR's ``model_info`` says ``resize_type standard`` (what this version writes)."""
        info = self.provenance_blocks(path).get("model_info", {})
        return "stretch" if str(info.get("resize_type", "")) == "standard" else "letterbox"

    def input_notices(self, path: Path, provenance: dict[str, Any]) -> list[str]:
        """What a client configured from the IR's ``model_info`` must know about the mean, in one line.

        Our commands feed an IR as its provenance's ``input_format`` says; OMZ clients feed it as ``model_info``
        says. A plain IR (the client subtracts the mean) gets a notice that clients ignoring ``model_info``
        (OMZ demos given no ``--mean_values``) lose faces with it (issue 24, item 4); an IR whose ``model_info``
        contradicts its provenance about the mean gets one saying which the commands follow.
        """
        mean = str(self.provenance_blocks(path).get("model_info", {}).get("mean_values", "")).split()
        try:
            values = [float(v) for v in mean]
        except ValueError:
            values = []
        recorded = provenance.get("input_format")
        stated = " ".join(mean)
        if values and any(values):  # model_info: the client subtracts the mean
            if recorded is None:
                return [
                    f"model_info says the client subtracts {stated}; no input format in its provenance: subtracting it"
                ]
            if recorded != DEFAULT_INPUT_FORMAT:
                return [
                    f"model_info says the client subtracts {stated}; its provenance: the mean is inside ({recorded})"
                ]
            return [
                f"leaves the mean to its client (model_info mean_values {stated}, subtracted here): a client that "
                f"ignores model_info must subtract it or loses faces (OMZ demos: --mean_values {stated}); "
                "the drop-in IR (retinaface-convert --to openvino --embed-mean) needs nothing"
            ]
        if recorded == DEFAULT_INPUT_FORMAT:  # the client must subtract it, and model_info does not say so
            said = f"says mean_values {stated}" if values else "gives no mean_values"
            means = " ".join(f"{m:g}" for m in MEAN_BGR)
            return [
                f"model_info {said}, but the IR expects its client to subtract {means} (its provenance): subtracting it"
            ]
        return []

    def provenance_blocks(self, path: Path) -> dict[str, dict[str, Any]]:
        """Every rt_info section that holds key/value entries (OpenVINO's own version strings left out)."""
        model = openvino_core().read_model(str(path))
        blocks: dict[str, dict[str, Any]] = {}
        for section in model.get_rt_info():
            entries = model.get_rt_info()[section]
            try:
                keys = list(entries.keys())
            except AttributeError:
                continue  # a plain value (the runtime version), not a block
            blocks[section] = {key: _decode(model.get_rt_info([section, key]).astype(str)) for key in keys}
        return blocks


FORMAT = OpenVinoFormat()
