"""Exported artifacts against PyTorch eager on a real photo: both backbones, every standard size."""

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import photo_input
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.eager import eager_runner
from retinaface_export.formats import FORMATS, export_formats
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import STANDARD_SIZES, InputSize

onnxruntime_runner = FORMATS["onnx"].open_runner
torchscript_runner = FORMATS["torchscript"].open_runner
ATOL = 1e-4  # issue #2: max abs error of ONNX Runtime and TorchScript against eager


@pytest.mark.slow
@pytest.mark.parametrize("size", STANDARD_SIZES)
@pytest.mark.parametrize("fmt", export_formats())
def test_artifact_equals_eager_on_real_photo(standard_export, crowd_photo, fmt, size):
    checkpoint, out = standard_export
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["format"] == fmt and a["size"] == [size, size]]
    data = photo_input(crowd_photo, size, size)
    expected = eager_runner(checkpoint.model)(data)
    got = FORMATS[fmt].open_runner(out / entry["path"])(data)
    anchors = checkpoint.variant.anchors.num_anchors(size, size)
    for name, exp, out_ in zip(("bbox", "cls", "landmarks"), expected, got, strict=True):
        assert out_.shape == exp.shape and out_.shape[1] == anchors
        err = float(np.max(np.abs(out_ - exp)))
        assert err <= ATOL, f"{entry['path']} {name}: max abs error {err:.2e}"


@pytest.mark.slow
def test_dynamic_export_runs_at_other_shapes_and_batches(tmp_path, real_weights, crowd_photo):
    checkpoint = load_checkpoint(real_weights)
    sizes = (InputSize(640, 640), InputSize(320, 480))
    export_checkpoint(checkpoint, ExportOptions(sizes=sizes, dynamic=True), tmp_path)
    model = onnx.load(str(tmp_path / "retinaface_mobilenet0.25_dynamic.onnx"))
    data_dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert data_dims == ["batch", 3, "height", "width"]
    for output, width in zip(model.graph.output, (4, 2, 10), strict=True):
        dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
        assert dims == ["batch", "anchors", width]
    # a shape it was not traced or verified at, batch of two different photos
    batch = np.concatenate([photo_input(crowd_photo, 416, 608), photo_input(crowd_photo[::-1], 416, 608)])
    expected = eager_runner(checkpoint.model)(batch)
    for path, runner in (
        ("retinaface_mobilenet0.25_dynamic.onnx", onnxruntime_runner),
        ("retinaface_mobilenet0.25_dynamic.torchscript.pt", torchscript_runner),
    ):
        got = runner(tmp_path / path)(batch)
        for exp, out in zip(expected, got, strict=True):
            assert out.shape == exp.shape == (2, checkpoint.variant.anchors.num_anchors(416, 608), exp.shape[2])
            assert float(np.max(np.abs(out - exp))) <= ATOL, path


def test_batch_option_fixes_the_batch_axis(tmp_path, real_weights):
    checkpoint = load_checkpoint(real_weights)
    result = export_checkpoint(
        checkpoint, ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",), batch=3), tmp_path
    )
    (entry,) = [a.to_dict() for a in result.added]
    assert entry["path"] == "retinaface_mobilenet0.25_320x320_b3.onnx"
    data = np.concatenate([photo_input(np.zeros((320, 320, 3), np.uint8) + i * 60, 320, 320) for i in range(3)])
    got = onnxruntime_runner(tmp_path / entry["path"])(data)
    assert got[0].shape == (3, 4200, 4)
    with torch.inference_mode():
        expected = checkpoint.model(torch.from_numpy(data))
    assert float(np.max(np.abs(got[1] - expected[1].numpy()))) <= ATOL


def _traced_input_shape(path) -> tuple[int, ...]:
    """The shape of the example input a TorchScript archive keeps (``traced_inputs.pkl``), read without torch."""
    import io
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/traced_inputs.pkl"))
        ops = list(pickletools.genops(io.BytesIO(archive.read(name))))
    # _rebuild_tensor_v2(storage, offset, size, stride, ...): the tuple after the offset is the size
    start = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    rest = [(op.name, arg) for op, arg, _ in ops[start + 1 :] if op.name not in ("BINPUT", "LONG_BINPUT")]
    size_from = rest.index(("MARK", None)) + 1
    size_to = rest.index(("TUPLE", None), size_from)
    return tuple(arg for _, arg in rest[size_from:size_to])


def test_each_torchscript_file_is_traced_at_its_own_size(tmp_path, real_weights):
    """Tools such as pnnx read the archive's traced example input as the model's input shape."""
    sizes = (InputSize(320, 320), InputSize(416, 320))
    options = ExportOptions(sizes=sizes, formats=("torchscript",), batch=2)
    result = export_checkpoint(load_checkpoint(real_weights), options, tmp_path)
    shapes = {record.size: _traced_input_shape(tmp_path / record.path) for record in result.added}
    assert shapes == {(320, 320): (2, 3, 320, 320), (416, 320): (2, 3, 416, 320)}
