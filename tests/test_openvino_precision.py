"""FP32 IRs execute in f32 for a client that compiles them with no options, on any CPU (issue 22, item 1).

On a CPU with bf16 (AVX512-BF16, AMX) OpenVINO's CPU plugin runs a plain IR in bf16 when compiled with no
options. The IRs retinaface-convert writes carry a precision mark on every layer and Interpolate-4 upsamplings,
so a client's default compile executes f32 and computes what the f32-hinted compile computes. The control
test shows that the marks are what does it; it runs only where the CPU has bf16 (elsewhere OpenVINO runs f32
whatever the IR says, so there is nothing to control).
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import photo_input
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.converters.openvino.precision import interpolate_as_v4
from retinaface_export.converters.openvino.runtime import (
    compile_model,
    executed_precision,
    openvino_core,
    openvino_module,
)
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize

STEM = "retinaface_mobilenet0.25_320x320"
HAS_BF16 = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("precision")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)), out
    )
    convert_export(out, ConvertOptions("openvino", precisions=("fp32", "fp16")))
    convert_export(out, ConvertOptions("openvino", input_format="u8-nhwc"))
    return out


def _run(compiled, data):
    result = compiled({0: data})
    return [np.asarray(result[port]) for port in compiled.outputs]


def _as_a_client(path: Path):
    """What OMZ demos, benchmark_app and users' code do: compile_model(path, "CPU"), nothing else."""
    return openvino_core().compile_model(str(path), "CPU")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_client_compiling_with_no_options_executes_f32(converted, crowd_photo, precision):
    path = converted / f"{STEM}_{precision}.xml"
    data = photo_input(crowd_photo, 320, 320)
    client = _as_a_client(path)
    assert executed_precision(client)["executed"] == "f32"
    assert "bf16" not in executed_precision(client)["runtime_precisions"]
    expected = _run(compile_model(path, precision="f32"), data)
    for got, want in zip(_run(client, data), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_drop_in_ir_computes_f32_numbers_for_a_client(converted, crowd_photo):
    """u8 pixels in, mean inside. On a bf16 CPU the CPU plugin fuses u8→f32 and the mean subtraction into one
    node of its own (which drops the precision mark) and stores its output in bf16: pixel minus an integer
    mean is an integer in [-123, 151], which bf16 holds exactly, so the outputs still equal the f32 compile's."""
    from retinaface_export.detection.letterbox import Letterbox

    path = converted / f"{STEM}_fp32_u8.xml"
    box = Letterbox.fit(crowd_photo.shape[0], crowd_photo.shape[1], 320, 320)
    pixels = box.apply(crowd_photo)[None]
    client = _as_a_client(path)
    for got, want in zip(_run(client, pixels), _run(compile_model(path, precision="f32"), pixels), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_manifest_records_what_executed(converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    rows = [a for a in manifest["artifacts"] if a["format"] == "openvino" and a["input_format"] != "u8-nhwc"]
    assert {row["precision"] for row in rows} == {"fp32", "fp16"}
    for row in rows:
        executed = row["verification"]["executed"]
        assert executed["device"] == "CPU" and executed["executed"] == "f32", row["path"]
        assert executed["inference_precision_hint"] == "f32"  # what the IR asks for, and what ran
        assert executed["client_default"] == "f32"  # what a client compiling with no options runs
        assert row["conversion"]["precise_layers"] > 100


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16: OpenVINO executes f32 whatever the IR says")
def test_without_the_marks_a_bf16_cpu_executes_bf16(converted, crowd_photo, tmp_path):
    """The control: the same IR with its precision marks removed runs in bf16 and loses fidelity."""
    source = converted / f"{STEM}_fp32.xml"
    plain = tmp_path / "plain.xml"
    plain.write_text(re.sub(r'\s*<attribute name="precise" version="0"\s*/>', "", source.read_text()))
    shutil.copy(source.with_suffix(".bin"), plain.with_suffix(".bin"))
    client = _as_a_client(plain)
    assert executed_precision(client)["executed"] == "bf16+f32"
    data = photo_input(crowd_photo, 320, 320)
    expected = _run(compile_model(source, precision="f32"), data)
    worst = max(
        float(np.abs(got - want).max() / (want.max() - want.min()))
        for got, want in zip(_run(client, data), expected, strict=True)
    )
    assert worst > 1e-3  # bf16 keeps 8 bits of mantissa: far outside the FP32 rule


def test_interpolate_as_v4_computes_the_same(converted, crowd_photo):
    ov = openvino_module()
    model = ov.convert_model(str(converted / f"{STEM}.onnx"))
    before = _run(compile_model(model.clone()), photo_input(crowd_photo, 320, 320))
    assert interpolate_as_v4(model) == 2  # the FPN's two upsamplings
    assert not [op for op in model.get_ops() if op.get_type_info().version_id == "opset11"]
    after = _run(compile_model(model), photo_input(crowd_photo, 320, 320))
    for got, want in zip(after, before, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_resnet50_too_executes_f32_for_a_client(tmp_path, crowd_photo):
    """Resnet50's stem max pool (MaxPool-8, rebuilt by the CPU plugin) ran bf16 before it was written as MaxPool-1."""
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    export_checkpoint(
        synthetic_checkpoint(get_variant("resnet50")),
        ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",)),
        tmp_path,
    )
    convert_export(tmp_path, ConvertOptions("openvino"))
    path = tmp_path / "retinaface_resnet50_320x320_fp32.xml"
    assert 'type="MaxPool" version="opset1"' in path.read_text()
    client = _as_a_client(path)
    assert executed_precision(client)["executed"] == "f32"
    data = photo_input(crowd_photo, 320, 320)
    for got, want in zip(_run(client, data), _run(compile_model(path, precision="f32"), data), strict=True):
        np.testing.assert_array_equal(got, want)
