"""onnxsim: fold constants and shape arithmetic out of an exported ONNX graph, then prove nothing changed.

The simplified graph is run by ONNX Runtime with graph optimisation off (onnxsim's own ``compare`` habit)
on the source's check inputs and judged against the source's outputs by the project's one comparison
(FP32 tolerance); if onnxsim fails or the outputs differ, the original graph is kept and the manifest says
why.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from retinaface_export.comparison import Case, compare_detections, compare_outputs
from retinaface_export.converters.onnx.format import read_onnx_provenance, set_metadata, source_model
from retinaface_export.converters.onnx.runtime import RUNTIME, onnxruntime_runner
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job
from retinaface_export.precision import PRECISIONS

log = logging.getLogger(__name__)


def _op_counts(model) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


class OnnxSimFormat(ArtifactFormat):
    """Simplified ONNX from an ONNX artifact, run by ONNX Runtime."""

    name = "onnxsim"
    suffix = ".sim.onnx"
    runtime = RUNTIME
    source_format = "onnx"
    uses_opset = True

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        import onnx
        import onnxsim

        original = source_model(inputs)
        before = _op_counts(original)
        try:
            # onnxsim works on its own copy; its own check is off: the result is checked below, as written.
            simplified, _ = onnxsim.simplify(original, check_n=0)
            onnx.checker.check_model(simplified, full_check=True)
            set_metadata(simplified, inputs.provenance | {"simplified": True})
            candidate = onnxruntime_runner(simplified.SerializeToString())
            compare = compare_detections if job.postprocess.detections else compare_outputs
            verdict = compare(
                (
                    Case(f"check input {i}", outputs, candidate(data))
                    for i, (data, outputs) in enumerate(inputs.source_cases())
                ),
                PRECISIONS["fp32"],
            )
            reason = (
                None if verdict.passed else "simplified graph differs from the original: " + "; ".join(verdict.failures)
            )
        except Exception as exc:  # onnxsim raises whatever its passes raise; the original is still good
            reason = f"onnxsim failed: {type(exc).__name__}: {exc}"
        if reason is None:
            model, after = simplified, _op_counts(simplified)
        else:
            log.warning("%s: kept the original graph: %s", job.file_name, reason)
            model = onnx.ModelProto()
            model.CopyFrom(original)
            set_metadata(model, inputs.provenance | {"simplified": False})
            after = before
        (staging / job.file_name).write_bytes(model.SerializeToString())
        return {
            "simplified": reason is None,
            "reason": reason,
            "ops_before": before,
            "ops_after": after,
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
        }

    def describe_conversion(self, conversion: dict[str, Any]) -> str:
        """Nodes before and after, or why the original graph was kept."""
        if not conversion.get("simplified"):
            return f"kept the original graph: {conversion.get('reason')}"
        return f"{conversion['nodes_before']} → {conversion['nodes_after']} nodes"

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return read_onnx_provenance(path)


FORMAT = OnnxSimFormat()
