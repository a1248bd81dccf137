"""The toolchain does each costly step once: one ONNX graph pinned per size, one OpenVINO conversion per
graph, eager outputs shared; threads give the same artifacts as a sequential run."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import onnx
import pytest

from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.converters.onnx.format import graph_fingerprint
from retinaface_export.converters.onnx.runtime import onnxruntime_runner
from retinaface_export.converters.openvino.runtime import openvino_core
from retinaface_export.pipeline.convert import ConvertOptions, convert_export
from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
from retinaface_export.sizes import InputSize
from retinaface_export.workers import OnceCache, run_jobs

SIZES = (InputSize(320, 320), InputSize(384, 512))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, real_weights):
    out = tmp_path_factory.mktemp("reuse")
    checkpoint = load_checkpoint(real_weights)
    export_checkpoint(checkpoint, ExportOptions(sizes=SIZES, formats=("onnx",)), out)
    return checkpoint, out


def _declared(value_info) -> list[int]:
    return [dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


def test_fixed_size_onnx_files_are_one_graph_with_their_own_shapes(onnx_export, crowd_photo):
    checkpoint, out = onnx_export
    models = {size: onnx.load(str(out / f"retinaface_mobilenet0.25_{size}.onnx")) for size in SIZES}
    assert len({graph_fingerprint(model) for model in models.values()}) == 1
    for size, model in models.items():
        anchors = checkpoint.variant.anchors.num_anchors(size.height, size.width)
        assert _declared(model.graph.input[0]) == [1, 3, size.height, size.width]
        assert [_declared(o) for o in model.graph.output] == [[1, anchors, 4], [1, anchors, 2], [1, anchors, 10]]
        onnx.checker.check_model(model, full_check=True)  # strict shape inference agrees with the declared shapes
        data = np.zeros((1, 3, size.height, size.width), np.float32)
        got = onnxruntime_runner(out / f"retinaface_mobilenet0.25_{size}.onnx")(data)
        assert [list(o.shape) for o in got] == [_declared(o) for o in model.graph.output]


def test_openvino_converts_each_graph_once_and_reshapes_per_size(onnx_export, tmp_path, monkeypatch):
    from retinaface_export.converters.openvino import format as ov_converter

    calls = []
    real_read = ov_converter.read_onnx

    def counting_read(source):
        calls.append(source.name)
        return real_read(source)

    monkeypatch.setattr(ov_converter, "read_onnx", counting_read)
    _, out = onnx_export
    result = convert_export(out, ConvertOptions("openvino", ("fp32", "fp16")), tmp_path)
    assert len(calls) == 1
    assert len(result.added) == 4
    for entry in result.added:  # each IR passed its tensor check against its own source at its own size
        check = entry.verification
        assert (
            check["kind"] == "tensors" and check["passed"] and check["reference"] == f"its source {entry.source.path}"
        )
        assert set(check["max_abs_error"]) == {"face_rpn_bbox_pred", "face_rpn_cls_prob", "face_rpn_landmark_pred"}
        assert 0 < max(check["max_abs_error"].values()) <= (1e-4 if entry.precision == "fp32" else 0.2)
        assert check["sizes"] == [list(entry.size)]
        model = openvino_core().read_model(str(tmp_path / entry.path))
        assert list(model.input(0).get_shape()) == [1, 3, *entry.size]


def test_threads_give_the_artifacts_of_a_sequential_run(real_weights, tmp_path):
    checkpoint = load_checkpoint(real_weights)
    manifests = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        export_checkpoint(checkpoint, ExportOptions(sizes=SIZES, workers=workers), out)
        manifest = json.loads((out / "manifest.json").read_text())
        # TorchScript archives are not byte-reproducible across traces; ONNX files are
        rows = [
            (a["path"], a["sha256"] if a["format"] == "onnx" else None, a["verification"]["max_abs_error"])
            for a in manifest["artifacts"]
        ]
        manifests[workers] = rows
    assert len(manifests[1]) == 4
    assert manifests[1] == manifests[2]


def test_run_jobs_keeps_order_and_raises_the_first_failure():
    assert run_jobs(lambda x: x * x, list(range(7)), 3) == [x * x for x in range(7)]

    def fails_on_three(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        run_jobs(fails_on_three, list(range(7)), 2)


def test_once_cache_computes_each_key_once_under_concurrency():
    cache, computed = OnceCache(), []
    lock = threading.Lock()

    def slow(key):
        def compute():
            with lock:
                computed.append(key)
            time.sleep(0.05)
            return key * 10

        return compute

    results = run_jobs(lambda key: cache.get(key, slow(key)), [1, 2, 1, 2, 1, 1], 6)
    assert results == [10, 20, 10, 20, 10, 10]
    assert sorted(computed) == [1, 2]
