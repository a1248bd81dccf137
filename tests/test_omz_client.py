"""Open Model Zoo's ``RetinaFacePyTorch`` wrapper, configured from the IR's ``rt_info/model_info`` alone, finds the
faces ``retinaface-detect`` finds.

The wrapper (``tests/omz_model_api.py``, transcribed from the OpenVINO Model API) does its own resize, mean
subtraction and layout change from ``model_info``, then its own decoding and NMS on our raw outputs, and maps the
boxes back with the stretch ratios. Its NMS is fixed at IoU 0.5 (no ``model_info`` key sets it), so
``retinaface-detect`` runs with ``--nms 0.5`` here; everything else is ``retinaface-detect``'s defaults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from omz_model_api import RetinaFacePyTorch, load_config

from conftest import SHARED, require
from matching import greedy_match
from retinaface_export.cli.detect import main as detect_main
from retinaface_export.contract import MEAN_BGR
from retinaface_export.converters.openvino.format import RT_SECTION, model_info
from retinaface_export.images import images_in_folder, read_image
from retinaface_export.postprocess.settings import PostprocessMode

SIZE = 640
WRAPPER_NMS = 0.5  # RetinaFacePyTorchPostprocessor.nms_threshold with landmarks
MIN_IOU = 0.5


@pytest.fixture(scope="module")
def irs(tmp_path_factory, real_weights) -> dict[str, Path]:
    """The plain FP32 IR and the OMZ drop-in IR (``--embed-mean``) at 640, as the commands write them."""
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.convert import ConvertOptions, convert_export
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    out = tmp_path_factory.mktemp("omz")
    export_checkpoint(
        load_checkpoint(real_weights), ExportOptions(sizes=(InputSize(SIZE, SIZE),), formats=("onnx",)), out
    )
    convert_export(out, ConvertOptions("openvino", precisions=("fp32", "fp16")))
    convert_export(out, ConvertOptions("openvino", input_format="f32-nchw"))
    stem = f"retinaface_mobilenet0.25_{SIZE}x{SIZE}_fp32"
    return {"plain": out / f"{stem}.xml", "drop-in": out / f"{stem}_mean.xml"}


def read_model_info(path: Path) -> dict[str, str]:
    from retinaface_export.converters.openvino.runtime import openvino_core

    model = openvino_core().read_model(str(path))
    return {key: model.get_rt_info(["model_info", key]).astype(str) for key in model.get_rt_info()["model_info"]}


def omz_client(path: Path, info: dict[str, str]) -> RetinaFacePyTorch:
    """The wrapper over the IR compiled as a client compiles it (``compile_model(path, "CPU")``, nothing else)."""
    from retinaface_export.converters.openvino.runtime import openvino_core

    compiled = openvino_core().compile_model(str(path), "CPU")
    port = compiled.input(0)
    element = np.uint8 if port.get_element_type().get_type_name() == "u8" else np.float32

    def infer(inputs):
        results = compiled({port.get_any_name(): inputs[port.get_any_name()].astype(element)})
        return {out.get_any_name(): results[out] for out in compiled.outputs}

    nchw = info["layout"].split(":")[1] == "NCHW"
    return RetinaFacePyTorch(info, port.get_any_name(), tuple(port.get_shape()), nchw, infer)


def detect_boxes(path: Path, images: list[Path], tmp_path: Path) -> dict[str, np.ndarray]:
    json_path = tmp_path / "faces.json"
    args = [*map(str, images), "--model", str(path), "--nms", str(WRAPPER_NMS), "--json", str(json_path), "-q"]
    result = CliRunner().invoke(detect_main, args)
    assert result.exit_code == 0, result.output
    return {
        Path(e["image"]).name: np.array([f["box"] for f in e["faces"]], np.float32).reshape(-1, 4)
        for e in json.loads(json_path.read_text())
    }


def precision_recall(path: Path, info: dict[str, str], tmp_path: Path) -> tuple[float, float, int]:
    """P and R of the wrapper's faces against retinaface-detect's (greedy IoU ≥ 0.5), over the shared photos."""
    images = images_in_folder(require(SHARED / "images"))
    ours = detect_boxes(path, images, tmp_path)
    client = omz_client(path, info)
    matched = found = expected = 0
    for image_path in images:
        detections = client(read_image(image_path))
        theirs = np.array([[d.xmin, d.ymin, d.xmax, d.ymax] for d in detections], np.float32).reshape(-1, 4)
        reference = ours[image_path.name]
        matched += len(greedy_match(reference, theirs, MIN_IOU))
        found += len(theirs)
        expected += len(reference)
    assert expected > 100  # the crowd alone has about a hundred faces above 0.5
    return matched / max(found, 1), matched / expected, expected


def test_the_drop_in_ir_configures_the_omz_wrapper(irs, tmp_path):
    info = read_model_info(irs["drop-in"])
    assert load_config(info)["mean_values"] == [0, 0, 0]
    precision, recall, _ = precision_recall(irs["drop-in"], info, tmp_path)
    assert precision >= 0.98 and recall >= 0.98, (precision, recall)


def test_the_plain_ir_configures_the_omz_wrapper_with_the_mean_model_info_gives(irs, tmp_path):
    info = read_model_info(irs["plain"])
    assert load_config(info)["mean_values"] == [int(m) for m in MEAN_BGR]
    precision, recall, _ = precision_recall(irs["plain"], info, tmp_path)
    assert precision >= 0.98 and recall >= 0.98, (precision, recall)


def test_yesterdays_model_info_misplaced_the_faces(irs, tmp_path):
    """The check can fail: the centred, zero-padded letterbox today's ``model_info`` named before finds others."""
    info = read_model_info(irs["drop-in"]) | {"resize_type": "fit_to_window_letterbox"}
    precision, recall, _ = precision_recall(irs["drop-in"], info, tmp_path)
    assert precision < 0.5 and recall < 0.5, (precision, recall)


def test_a_plain_ir_fed_without_its_mean_loses_faces(irs, tmp_path):
    """What item 4 of issue 24 is about: the OMZ demo's defaults (no mean) on the plain IR."""
    info = read_model_info(irs["plain"]) | {"mean_values": "0 0 0"}
    _, recall, _ = precision_recall(irs["plain"], info, tmp_path)
    assert recall < 0.95, recall


@pytest.mark.parametrize("mode", list(PostprocessMode))
@pytest.mark.parametrize(
    ("input_format", "mean", "layout"),
    [
        ("f32-nchw-minus-mean", "104 117 123", "data:NCHW"),
        ("f32-nchw", "0 0 0", "data:NCHW"),
        ("u8-nhwc", "0 0 0", "data:NHWC"),
    ],
)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_every_ir_states_layout_mean_scale_colour_order_and_resize(mode, input_format, mean, layout, precision):
    job = SimpleNamespace(input_format=input_format, precision=precision, postprocess=SimpleNamespace(mode=mode))
    info = model_info(job)
    assert info["mean_values"] == mean and info["layout"] == layout
    assert info["scale_values"] == "1 1 1" and info["reverse_input_channels"] == "False"  # BGR in
    assert info["resize_type"] == "standard"
    assert info["model_type"] == "RetinaFace-PyTorch" and RT_SECTION not in info


PLAIN_NOTICE = "leaves the mean to its client (model_info mean_values 104 117 123"


def test_detect_warns_once_about_the_mean_model_info_leaves_to_the_client_or_contradicts(irs, tmp_path):
    """Item 4 of issue 24: a plain IR (the client subtracts the mean) is told in one line, with what a client must
    set; the drop-in IR is not; an IR whose model_info contradicts its provenance is told which is followed."""
    folder = tmp_path / "edited"
    folder.mkdir()
    source = irs["drop-in"]
    shutil.copy(source.with_suffix(".bin"), folder / source.with_suffix(".bin").name)
    text = source.read_text().replace('<mean_values value="0 0 0" />', '<mean_values value="104 117 123" />')
    (folder / source.name).write_text(text)
    image = str(require(SHARED / "images") / "wider_sample_1.jpg")
    contradiction = "model_info says the client subtracts 104 117 123; its provenance: the mean is inside"
    for path, plain, contradicted in ((folder / source.name, 0, 1), (source, 0, 0), (irs["plain"], 1, 0)):
        result = CliRunner().invoke(detect_main, [image, "--model", str(path), "-q"])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert said.count(PLAIN_NOTICE) == plain and said.count(contradiction) == contradicted, (path, said)
        if plain:
            assert "--mean_values 104 117 123" in said and "--embed-mean" in said


@pytest.mark.parametrize("command", ["parity", "bench"])
def test_parity_and_bench_warn_once_for_the_plain_irs_of_a_folder(irs, tmp_path, command):
    """One line for the plain IRs of the folder (FP32 and FP16), none for the drop-in IR."""
    from retinaface_export.cli.bench import main as bench_main
    from retinaface_export.cli.parity import main as parity_main

    folder = tmp_path / "export"
    shutil.copytree(irs["plain"].parent, folder)
    if command == "parity":
        result = CliRunner().invoke(parity_main, [str(folder)])
    else:
        args = [str(folder), "--mode", "latency", "--runs", "5", "--warmup", "0", "--no-eager"]
        result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count(PLAIN_NOTICE) == 1 and "and 1 more" in said, said
