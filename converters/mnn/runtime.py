"""MNN: the one module of the package that imports ``MNN`` (and runs MNN's converter and quantiser).

Every MNN interpreter the package makes (verification, detect, parity, bench) comes from :func:`mnn_runner`,
configured as :data:`RUNTIME_OPTIONS` says, which is also what every artifact records. Traps measured with
MNN 3.6.1 (pip ``MNN``) on x86:

- **Winograd** convolution, on by default on the CPU backend, costs float32 accuracy: 1.9e-3 abs on boxes,
  1.8e-4 on scores, 2.4e-3 on landmarks at 320 (2e-4 to 3.3e-4 of each output's range), whatever the
  precision mode; with the hint ``WINOGRAD_MEMORY_LEVEL`` = 0 the same files are within 1.6e-6 of range
  of ONNX Runtime. The FP32 rule (1e-4 + 1e-5 × range) holds only without Winograd.
- MNN prints to the process's standard output from C (``The device supports: ...`` on import, ``MNN use
  high precision`` per runtime manager, the converter's log): that would corrupt ``--json -``. Those calls
  run with file descriptor 1 sent to /dev/null (:func:`_quiet_stdout`).
- ``MNN.tools.mnnconvert`` / ``mnnquant`` (and the ``mnnconvert``/``mnnquant`` scripts) import
  ``MNN.tools.utils.log``, which runs ``pip install -U aliyun-log-python-sdk`` when that package is missing
  and then reports usage to Alibaba's log service: never imported here. The converter and quantiser are
  the extension ``_tools`` called directly, in a child process (:func:`run_tool`), since a converter crash
  (C++ ``abort``) would otherwise end this process. ``_tools.mnnquant`` takes one argv list in 3.6.1; the
  bundled ``mnnquant`` wrapper still passes three strings and dies with ``std::length_error``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.contract import INPUT_NAME
from retinaface_export.converters.mnn.trust import MnnFile, check_mnn_file
from retinaface_export.errors import ExportError
from retinaface_export.extras import import_extra
from retinaface_export.format_api import Runner, Runtime

EXTRA = "mnn"
# MNN's Interpreter::HintMode: Winograd unit candidates (0 turns Winograd convolution off).
_WINOGRAD_MEMORY_LEVEL = 3
# How every artifact is run and verified; recorded in each artifact's provenance and manifest row.
RUNTIME_OPTIONS: dict[str, Any] = {
    "api": "MNN.nn.load_module_from_file (Module API, shape_mutable)",
    "backend": "CPU",
    # Precision_High: float32 arithmetic. "low" would allow fp16 arithmetic on ARMv8.2 CPUs (not verified).
    "precision": "high",
    # Interpreter::HintMode::WINOGRAD_MEMORY_LEVEL = 0: no Winograd (see the module docstring)
    "hints": {"WINOGRAD_MEMORY_LEVEL": 0},
}
# Longest a converter or quantiser run may take.
_TOOL_TIMEOUT_S = 1800

_stdout_lock = threading.Lock()
_mnn: list[Any] = []


@contextlib.contextmanager
def _quiet_stdout():
    """File descriptor 1 sent to /dev/null while MNN's C code prints; Python's own stdout flushed first."""
    with _stdout_lock:
        try:
            sys.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError, AttributeError):  # no standard output at all: nothing to protect
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).fflush(None)  # C stdio's buffer goes to /dev/null, not to the restored fd
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def mnn_module():
    """``MNN`` (with ``MNN.nn`` and ``MNN.expr``), imported quietly; MissingExtraError names the pip install."""
    with _stdout_lock:
        if _mnn:
            return _mnn[0]
    with _quiet_stdout():
        module = import_extra("MNN", EXTRA, "running .mnn files")
        import_extra("MNN.nn", EXTRA, "running .mnn files")
        import_extra("MNN.expr", EXTRA, "running .mnn files")
    with _stdout_lock:
        _mnn[:] = [module]
    return module


def run_tool(tool: str, argv: list[str], what: str) -> str:
    """Run MNN's ``_tools.<tool>(argv)`` (``mnnconvert``, ``mnnquant``) in a child process; its log returned.

    Raises:
        MissingExtraError: MNN is not installed.
        ExportError: the tool crashed or did not finish (its last log lines quoted).
    """
    mnn_module()  # the extra's message if MNN is missing; _tools ships in the same wheel
    code = "import sys, _tools; _tools.%s(sys.argv[1:])" % tool  # noqa: UP031  no user text in the code
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, tool, *argv],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_TOOL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what}: MNN's {tool} did not finish in {_TOOL_TIMEOUT_S} s") from None
    log = (done.stdout + done.stderr).replace("\r", "\n")
    if done.returncode != 0:
        tail = " | ".join(line.strip() for line in log.splitlines() if line.strip())[-300:]
        raise ExportError(f"{what}: MNN's {tool} failed (exit code {done.returncode}): {tail}")
    return log


def _runtime_manager(threads: int):
    mnn = mnn_module()
    with _quiet_stdout():  # "MNN use high precision"
        manager = mnn.nn.create_runtime_manager(
            ({"backend": RUNTIME_OPTIONS["backend"], "numThread": threads, "precision": RUNTIME_OPTIONS["precision"]},)
        )
    manager.set_hint(_WINOGRAD_MEMORY_LEVEL, RUNTIME_OPTIONS["hints"]["WINOGRAD_MEMORY_LEVEL"])
    return manager


def mnn_runner(path: Path, checked: MnnFile, threads: int | None = None) -> Runner:
    """The ``.mnn`` file at ``path`` (already trust-checked: ``checked``) as a runner, any input shape.

    One MNN Module per runner; calls are serialised (a Module runs one inference at a time).
    """
    mnn = mnn_module()
    expr = mnn.expr
    manager = _runtime_manager(threads or os.cpu_count() or 1)
    with _quiet_stdout():
        module = mnn.nn.load_module_from_file(
            str(path), [INPUT_NAME], list(checked.outputs), runtime_manager=manager, shape_mutable=True
        )
    if module is None:
        raise ExportError(f"{path}: MNN could not load it")
    busy = threading.Lock()

    def run(data: np.ndarray) -> list[np.ndarray]:
        data = np.ascontiguousarray(data, dtype=np.float32)
        with busy:
            outputs = module.forward([expr.const(data, list(data.shape), expr.NCHW)])
            return [np.array(output.read(), copy=True) for output in outputs]

    return run


class MnnRuntime(Runtime):
    """MNN's CPU backend in float32 (Precision_High), Winograd off, through the Module API."""

    name = "mnn"
    # its Python binding holds the GIL while it computes: measured on 2 cores, two one-thread modules in two
    # threads ran 27.6 inferences/s, one alone 29.1, one on two threads 49.5
    runs_side_by_side = False
    libraries = ("mnn",)

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """The artifact, trust-checked first; ``optimize`` changes nothing (verified options = deployed ones)."""
        del optimize
        return mnn_runner(path, check_mnn_file(path), threads)


RUNTIME = MnnRuntime()
