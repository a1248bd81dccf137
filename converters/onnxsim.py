"""onnxsim: fold constants and shape arithmetic out of an exported ONNX graph, then prove nothing changed.

The simplified graph is run by ONNX Runtime with graph optimisation off (onnxsim's own ``compare`` habit)
on the inputs given and compared with the original's outputs on them (computed once by the caller, which
checks its other conversions of the same source against them too); if onnxsim fails or the outputs
differ, the original graph is kept and the result says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from retinaface_export.onnx_export import set_metadata
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


def simplify_onnx(
    original: onnx.ModelProto,
    checks: list[tuple[np.ndarray, list[np.ndarray]]],
    atol: float,
    metadata: dict[str, Any],
) -> SimplifyResult:
    """Simplify ``original`` (left unchanged; dynamic axes stay dynamic) and check it on ``checks``.

    Args:
        original: the exported model.
        checks: ``(input, original's outputs on it)`` pairs.
        atol: largest abs difference allowed on any output.
        metadata: ``metadata_props`` of the result, plus ``simplified`` (true or false).
    """
    import onnxsim

    before = _op_counts(original)

    def keep_original(reason: str, error: float | None = None) -> SimplifyResult:
        kept = onnx.ModelProto()
        kept.CopyFrom(original)
        set_metadata(kept, metadata | {"simplified": False})
        return SimplifyResult(kept.SerializeToString(), False, reason, before, before, error)

    try:
        # onnxsim works on its own copy; its own check is off: the result is checked below, as written.
        simplified, _ = onnxsim.simplify(original, check_n=0)
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:  # onnxsim raises whatever its passes raise; the original is still good
        return keep_original(f"onnxsim failed: {type(exc).__name__}: {exc}")
    set_metadata(simplified, metadata | {"simplified": True})
    simplified_bytes = simplified.SerializeToString()
    run_simplified = onnxruntime_runner(simplified_bytes)
    worst = 0.0
    for data, expected_outputs in checks:
        for expected, got in zip(expected_outputs, run_simplified(data), strict=True):
            if expected.shape != got.shape:
                return keep_original(f"simplified graph changes an output shape {expected.shape} -> {got.shape}")
            worst = max(worst, float(np.max(np.abs(expected - got))))
    if not worst <= atol:
        return keep_original(f"simplified graph differs from the original by {worst:.2e} > {atol:g}", worst)
    return SimplifyResult(simplified_bytes, True, None, before, _op_counts(simplified), worst)
