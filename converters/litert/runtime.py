"""LiteRT's interpreter (``ai-edge-litert``): the one module of the package that imports ``ai_edge_litert``.

Every interpreter the package makes (verification, detect, parity, bench, the scripts), the flatbuffer
schema the trust check reads and the flatbuffer writer the converter adds metadata with come from here.

The interpreter options are pinned, because they are what the verified numbers were measured with
(``docs/targets/litert.md``): ``OpResolverType.AUTO`` (LiteRT's builtin kernels with the XNNPACK delegate
applied by default, as an application gets them), ``experimental_default_delegate_latest_features`` off,
and ``num_threads`` as asked. XNNPACK runs these models in float32: it only computes in float16 when an
application forces it (``TfLiteXNNPackDelegateOptions`` FP16 flags) or the model declares reduced
precision, which ours do not. Both kinds of interpreter (with and without XNNPACK) are checked in the
tests.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from retinaface_export.converters.litert.trust import SIGNATURE, CheckedModel, check_tflite_bytes
from retinaface_export.errors import UsageError
from retinaface_export.extras import import_extra
from retinaface_export.format_api import Runner, Runtime
from retinaface_export.native_stderr import library_log_line, native_chatter_to_debug
from retinaface_export.safety.safe_paths import read_regular_bytes

EXTRA = "litert"


def litert_module(name: str, purpose: str = "running .tflite files") -> ModuleType:
    """``ai_edge_litert.<name>``, or the one-line ``pip install "retinaface-export[litert]"`` error."""
    return import_extra(f"ai_edge_litert.{name}", EXTRA, purpose)


def check_tflite_file(path: Path) -> CheckedModel:
    """The file's bytes, trust-checked (:mod:`~retinaface_export.converters.litert.trust`) before any use.

    Raises:
        InputFileError: not a readable regular file.
        UntrustedArtifactError: the bytes are refused.
        MissingExtraError: ai-edge-litert is not installed.
    """
    schema = litert_module("schema_py_generated")
    return check_tflite_bytes(path, read_regular_bytes(path, "a .tflite file"), schema)


def interpreter_options(threads: int | None, delegate: bool = True) -> dict[str, Any]:
    """The ``Interpreter`` keyword arguments the verified numbers were measured with (see the module's notes)."""
    interpreter = litert_module("interpreter")
    resolver = interpreter.OpResolverType
    return {
        "num_threads": threads,
        "experimental_op_resolver_type": resolver.AUTO if delegate else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "experimental_default_delegate_latest_features": False,
    }


# The options as a manifest records them.
RECORDED_OPTIONS = {
    "experimental_op_resolver_type": "AUTO (builtin kernels + XNNPACK delegate, float32)",
    "experimental_default_delegate_latest_features": False,
}


def model_runner(model: CheckedModel, threads: int | None = None, delegate: bool = True) -> Runner:
    """A checked model in LiteRT's interpreter: its one input in, its outputs in the contract's order.

    The signature runner maps names, so the outputs come back as the contract orders them whatever order
    the flatbuffer lists them in. The model takes the shape it was converted at (size and batch); another
    shape is refused with a one-line :class:`UsageError` before the interpreter sees it.
    """
    interpreter = litert_module("interpreter").Interpreter(
        model_content=model.content, **interpreter_options(threads, delegate)
    )
    with native_chatter_to_debug(library_log_line, "LiteRT"):  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter.allocate_tensors()  # applies the delegate now rather than in the first run
    signature = interpreter.get_signature_runner(SIGNATURE)
    (detail,) = signature.get_input_details().values()
    shape = tuple(int(d) for d in detail["shape"])
    busy = threading.Lock()  # an interpreter runs one inference at a time

    def run(data: np.ndarray) -> list[np.ndarray]:
        if tuple(data.shape) != shape:
            raise UsageError(
                f"{model.path.name} takes {'×'.join(map(str, shape))} inputs (its size and batch), "
                f"got {'×'.join(map(str, data.shape))}"
            )
        with busy:
            outputs = signature(data=np.ascontiguousarray(data, dtype=np.float32))
            return [np.array(outputs[name]) for name in model.outputs]

    return run


class LiteRtRuntime(Runtime):
    """LiteRT's interpreter on the CPU: builtin kernels and the XNNPACK delegate, in float32."""

    name = "litert"
    libraries = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer")

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """The trust-checked file in an interpreter with the pinned options.

        XNNPACK is LiteRT's default, so ``optimize`` changes nothing: verification runs what an application runs.
        """
        del optimize
        return model_runner(check_tflite_file(path), threads)


RUNTIME = LiteRtRuntime()
