"""OpenVINO from several threads: the first tensor→numpy conversion of a process is made once, up front.

pyopenvino fills its numpy dtype tables on that first conversion in C++ statics whose initialiser lets the
GIL go; two threads making it at once deadlock (issue 11's OPENVINO_LOCK hid it by serialising everything).
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPENVINO_RUNTIME = REPO / "converters" / "openvino" / "runtime.py"
IMPORTS_OPENVINO = re.compile(r"^\s*(import openvino\b|from openvino[\s.])", re.MULTILINE)

# Slows the step where the initialiser lets the GIL go, so that two threads would meet there every time.
DRIVER = r"""
import threading, time, sys
import numpy as np, numpy.lib
import onnx
from onnx import TensorProto, helper

original = numpy.lib.NumpyVersion.__init__
def slow(self, *args, **kwargs):
    time.sleep(0.5)
    original(self, *args, **kwargs)
numpy.lib.NumpyVersion.__init__ = slow

from retinaface_export.converters.openvino.format import FORMAT
from retinaface_export.converters.openvino.runtime import openvino_module
ov = openvino_module()
folder = sys.argv[1]
paths = []
for index in range(2):
    node = helper.make_node("Relu", ["data"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{folder}/m{index}.onnx")
    ov.save_model(ov.convert_model(f"{folder}/m{index}.onnx"), f"{folder}/m{index}.xml")
    paths.append(f"{folder}/m{index}.xml")
runners = [FORMAT.open_runner(path) for path in paths]
data = np.ones((1, 3, 8, 8), np.float32)
results = []
threads = [threading.Thread(target=lambda r=r: results.append(r(data)[0].sum())) for r in runners]
for t in threads: t.start()
for t in threads: t.join()
print("done", len(results))
"""


def test_two_threads_infer_at_once_without_a_process_wide_lock(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done 2"


def test_openvino_is_imported_through_one_function():
    # any other `import openvino` could make the first tensor conversion in a worker thread
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("retinaface_export", "converters")
        for path in (REPO / folder).rglob("*.py")
        if path != OPENVINO_RUNTIME and IMPORTS_OPENVINO.search(path.read_text())
    ]
    assert offenders == []


SIGNAL_AFTER_A_RUNNER_DROPPED_IN_ANOTHER_THREAD = """
import gc, os, signal, sys, threading
import numpy as np
from retinaface_export.converters.openvino.runtime import openvino_module
from retinaface_export.formats import FORMATS
ov = openvino_module()
from openvino import opset13 as ops
data = ops.parameter([1, 3, 8, 8], np.float32)
path = sys.argv[1]
ov.save_model(ov.Model([ops.relu(data)], [data]), path)
box = [FORMATS["openvino"].open_runner(path)]
box[0](np.ones((1, 3, 8, 8), np.float32))
def drop():
    box.clear()
    gc.collect()
worker = threading.Thread(target=drop)
worker.start()
worker.join()
signal.signal(signal.SIGTERM, lambda *args: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGTERM)
print("alive", flush=True)
"""


def test_a_signal_after_a_runner_is_dropped_in_another_thread_is_handled(tmp_path):
    # Before the fix (an ov.Core per runner) this process died of SIGSEGV: the CPU plugin instance of the
    # dropped Core freed the main thread's alternate signal stack, on which Python then handled SIGTERM.
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_AFTER_A_RUNNER_DROPPED_IN_ANOTHER_THREAD, str(tmp_path / "relu.xml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["handled", "alive"]


def test_the_package_makes_one_openvino_core():
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("retinaface_export", "converters")
        for path in (REPO / folder).rglob("*.py")
        if path != OPENVINO_RUNTIME and "Core()" in path.read_text()
    ]
    assert offenders == []


def test_a_runtime_given_threads_is_not_pinned_to_cores(tmp_path, monkeypatch):
    """Workers side by side each get a thread-limited IR; pinned, the CPU plugin puts them all on the same cores."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from retinaface_export.converters.openvino import runtime
    from retinaface_export.converters.openvino.format import FORMAT

    ov = runtime.openvino_module()
    node = helper.make_node("Relu", ["data"], ["y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("data", TensorProto.FLOAT, [1, 3, 8, 8])], [value("y", TensorProto.FLOAT, [1, 3, 8, 8])]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    ov.save_model(ov.convert_model(tmp_path / "m.onnx"), tmp_path / "m.xml")
    compiled = []

    def recording(*args, **kwargs):
        compiled.append(runtime_compile_ir(*args, **kwargs))
        return compiled[-1]

    runtime_compile_ir = runtime.compile_ir
    monkeypatch.setattr(runtime, "compile_ir", recording)
    for threads in (1, None):
        run = FORMAT.open_runner(tmp_path / "m.xml", threads=threads)
        assert run(np.full((1, 3, 8, 8), -1.0, np.float32))[0].max() == 0.0
    limited, default = compiled
    assert limited.get_property("ENABLE_CPU_PINNING") is False
    assert limited.get_property("INFERENCE_NUM_THREADS") == 1
    plain = runtime.compile_ir(tmp_path / "m.xml")  # the plugin's own choice when nothing limits the threads
    assert default.get_property("ENABLE_CPU_PINNING") == plain.get_property("ENABLE_CPU_PINNING")
