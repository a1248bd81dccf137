"""What precision the CPU plugin executes an IR in, and how an IR asks for f32 from every client.

On CPUs with bf16 (AVX512-BF16, AMX), OpenVINO's CPU plugin compiles a model with no options in bf16
(``INFERENCE_PRECISION_HINT`` reads ``bf16``), and it ignores the hint an IR's
``rt_info/runtime_options`` holds (measured with openvino 2026.4 on an AMD EPYC with AVX512-BF16).
mobilenet0.25 then differs from f32 by up to 7% of an output's range at 320 (22% at 640 on AMX, as
reported). OMZ demos, ``benchmark_app`` and users' own code compile with no options, so they never
execute the numbers an f32-verified IR was checked for.

What does hold is OpenVINO's per-node "keep this node out of low precision" attribute (``precise``,
``ov::disable_fp16_compression``). The CPU plugin keeps marked nodes in f32 under a bf16 inference
precision. It has no Python API, so :func:`mark_precise` writes it into every layer of the saved IR XML.
Every CPU transformation that rebuilds a node drops the attribute: the CPU plugin rewrites
``Interpolate-11`` (what the ONNX ``Resize`` of the FPN becomes) and ``MaxPool-8`` (Resnet50's stem) into
its own ops, and those stayed bf16 (Resnet50's max pool alone put 6e-2 on every output).
:func:`older_ops_for_cpu` therefore writes them as ``Interpolate-4`` and ``MaxPool-1``, which the plugin
takes as they are. With both, the IR compiled with no options executes every node in f32 and its
outputs equal the f32-hint compile exactly (0.0 difference, measured on the same machine).

FP32 and FP16 IRs are marked; INT8 IRs are not: under a bf16 inference precision the marks made the INT8
model lose faces (strict F1 against FP32 at 416: 0.966 marked, 0.970 unmarked, 0.972 compiled in f32).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.converters.openvino.runtime import openvino_module, openvino_submodule

# The name and version OpenVINO serialises ov::disable_fp16_compression under (RTTI "precise", "0").
PRECISE = {"name": "precise", "version": "0"}


def older_ops_for_cpu(model: Any) -> int:
    """``Interpolate-11`` → ``Interpolate-4`` and ``MaxPool-8`` → ``MaxPool-1`` where they compute the same; count."""
    return interpolate_as_v4(model) + max_pool_as_v1(model)


def max_pool_as_v1(model: Any) -> int:
    """Replace every ``MaxPool-8`` whose indices are unused and dilations are 1 by the same ``MaxPool-1``; count."""
    ov = openvino_module()
    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MaxPool" or node.get_type_info().version_id == "opset1":
            continue
        attributes = node.get_attributes()
        if any(d != 1 for d in attributes.get("dilations", [])) or node.output(1).get_target_inputs():
            continue
        v1 = ov.opset1.max_pool(
            node.input_value(0),
            list(attributes["strides"]),
            list(attributes["pads_begin"]),
            list(attributes["pads_end"]),
            list(attributes["kernel"]),
            rounding_type=attributes["rounding_type"],
            auto_pad=attributes["auto_pad"],
        )
        v1.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(v1.output(0))
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def interpolate_as_v4(model: Any) -> int:
    """Replace every nearest, sizes-mode ``Interpolate-11`` of ``model`` by the same ``Interpolate-4``; count.

    The two compute the same thing for these attributes (``sizes`` over all four axes, scales unused).
    """
    ov = openvino_module()
    opset10 = openvino_submodule("opset10")  # the factory of Interpolate-4 (v4 is unchanged through opset 10)

    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Interpolate" or node.get_type_info().version_id != "opset11":
            continue
        attributes = node.get_attributes()
        if attributes.get("mode") != "nearest" or attributes.get("shape_calculation_mode") != "sizes":
            continue
        if node.get_input_size() != 2:  # axes given: not the FPN's whole-shape resize
            continue
        rank = node.get_input_partial_shape(0).rank.get_length()
        v4 = opset10.interpolate(
            node.input_value(0),
            node.input_value(1),
            ov.opset1.constant(np.ones(rank, np.float32)),
            axes=ov.opset1.constant(np.arange(rank, dtype=np.int64)),
            mode="nearest",
            shape_calculation_mode="sizes",
            coordinate_transformation_mode=attributes["coordinate_transformation_mode"],
            nearest_mode=attributes["nearest_mode"],
            antialias=bool(attributes.get("antialias", False)),
            pads_begin=list(attributes.get("pads_begin", [0] * rank)),
            pads_end=list(attributes.get("pads_end", [0] * rank)),
            cube_coeff=float(attributes.get("cube_coeff", -0.75)),
        )
        v4.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(v4.output(0))
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def mark_precise(xml_path: Path) -> int:
    """Give every layer of the IR at ``xml_path`` the ``precise`` attribute (rewrites the file); count.

    The file is one this package has just written in its staging folder, not an input.
    """
    tree = ElementTree.parse(xml_path)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ElementTree.Element("rt_info")
            layer.insert(0, rt_info)
        if not any(a.get("name") == PRECISE["name"] for a in rt_info.findall("attribute")):
            ElementTree.SubElement(rt_info, "attribute", PRECISE)
            marked += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked
