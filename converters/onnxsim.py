"""onnxsim: fold constants and shape arithmetic out of an exported ONNX graph, then prove nothing changed.

The simplified graph is compared with the original by ONNX Runtime with graph optimisation off (onnxsim's
own ``compare`` habit) on the inputs given; if onnxsim fails or the outputs differ, the original graph is
kept and the result says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.runtimes import onnxruntime_runner


@dataclass(frozen=True)
class SimplifyResult:
    """The model to write, whether it is the simplified one, and op counts before and after."""

    model: bytes
    simplified: bool
    reason: str | None
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    max_abs_error: float | None


def _op_counts(model) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def simplify_onnx(source: Path, check_inputs: list[np.ndarray], atol: float) -> SimplifyResult:
    """Simplify the ONNX file ``source`` (dynamic axes stay dynamic) and check it on ``check_inputs``."""
    import onnx
    import onnxsim

    original = onnx.load(str(source))
    original_bytes = original.SerializeToString()
    before = _op_counts(original)

    def keep_original(reason: str, error: float | None = None) -> SimplifyResult:
        return SimplifyResult(original_bytes, False, reason, before, before, error)

    try:
        simplified, _ = onnxsim.simplify(original, check_n=0)  # checked below, against the file as written
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:  # onnxsim raises whatever its passes raise; the original is still good
        return keep_original(f"onnxsim failed: {type(exc).__name__}: {exc}")
    simplified_bytes = simplified.SerializeToString()
    run_original, run_simplified = onnxruntime_runner(original_bytes), onnxruntime_runner(simplified_bytes)
    worst = 0.0
    for data in check_inputs:
        for expected, got in zip(run_original(data), run_simplified(data), strict=True):
            if expected.shape != got.shape:
                return keep_original(f"simplified graph changes an output shape {expected.shape} -> {got.shape}")
            worst = max(worst, float(np.max(np.abs(expected - got))))
    if not worst <= atol:
        return keep_original(f"simplified graph differs from the original by {worst:.2e} > {atol:g}", worst)
    return SimplifyResult(simplified_bytes, True, None, before, _op_counts(simplified), worst)
