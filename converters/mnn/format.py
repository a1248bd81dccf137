"""MNN (``.mnn``) from an exported ONNX artifact with MNN's own converter; run by MNN's CPU backend.

``mnnconvert`` (``-f ONNX``, defaults otherwise) keeps the contract's names (``data``; the three raw
outputs, or the ``decode`` ones) and writes our provenance into the model's ``bizCode`` string, which
:func:`~retinaface_export.converters.mnn.trust.check_mnn_file` reads back without MNN. FP16 is MNN's
``--fp16``: convolution weights stored in half, computed in float32 (the runtime options are the same for
every artifact: :data:`~retinaface_export.converters.mnn.runtime.RUNTIME_OPTIONS`). ``--fp16`` truncates
each weight toward zero, so the converter is given a copy of the ONNX file whose convolution weights are
already rounded to the nearest half (:mod:`~retinaface_export.converters.mnn.half`).

Not made here, each refused with one line before any work:

- ``--postprocess nms`` sources: MNN 3.6.1 runs the graph's ``NonMaxSuppression`` (the face counts match
  ONNX Runtime) but its ``ScatterND`` with row updates writes only the first value of each row, so every
  detection comes out as ``x1, 0, 0, ...`` (measured on a 2-row ScatterND and on the whole graph).
- INT8: see :data:`INT8_REFUSAL` (MNN's quantiser misses the accuracy target).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retinaface_export.converters.mnn.half import WEIGHT_ROUNDING, round_convolution_weights
from retinaface_export.converters.mnn.runtime import RUNTIME, RUNTIME_OPTIONS, mnn_runner, run_tool
from retinaface_export.converters.mnn.trust import SEAL_KEY, UNSEALED, MnnFile, check_mnn_file, seal
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.errors import ExportError, UsageError
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner
from retinaface_export.postprocess.settings import PostprocessMode

NMS_REFUSAL = (
    "--to mnn cannot convert --postprocess nms artifacts: MNN 3.6.1's ScatterND writes only the first value of "
    "each detection row (x1, then zeros); export with --postprocess decode or none for MNN"
)
INT8_REFUSAL = (
    "--to mnn makes fp32 and fp16: MNN's quantiser (mnnquant, KL/EMA, BGR mean 104/117/123) measured a strict "
    "F1 of 0.76-0.83 against FP32 on held-out photos with every convolution in INT8 (target 0.97); see "
    "docs/targets/mnn.md"
)


def converter_arguments(source: Path, target: Path, precision: str, biz_code: str) -> list[str]:
    """``mnnconvert``'s arguments: MNN's defaults, plus ``--fp16`` for FP16 (weights stored in half)."""
    arguments = ["-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(target), "--bizCode", biz_code]
    return [*arguments, "--fp16"] if precision == "fp16" else arguments


def _shape_check(path: Path, checked: MnnFile, run: Runner) -> Runner:
    """A fixed-size artifact refuses an input of another size or batch (MNN would resize and run it)."""
    size, batch = checked.provenance.get("input_size"), checked.provenance.get("batch")
    if size == "dynamic" or not isinstance(size, list) or not isinstance(batch, int):
        return run
    expected = (batch, 3, *size)

    def checked_run(data):
        if tuple(data.shape) != expected:
            raise UsageError(
                f"{path}: a fixed {size[0]}x{size[1]} artifact of batch {batch} takes "
                f"{'×'.join(map(str, expected))} input, got {'×'.join(map(str, data.shape))}"
            )
        return run(data)

    return checked_run


class MnnFormat(ArtifactFormat):
    """MNN FP32/FP16 converted from an exported ONNX file."""

    name = "mnn"
    suffix = ".mnn"
    runtime = RUNTIME
    source_format = "onnx"
    precisions = ("fp32", "fp16")
    conversion_precisions = precisions

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        del input_format
        return f"{stem}_{precision}{self.suffix}"

    def refusal(self, job: Job) -> str | None:
        return NMS_REFUSAL if job.postprocess.mode == PostprocessMode.NMS else None

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        """Convert with ``mnnconvert`` in a child process, seal the provenance, and check the file as read back."""
        if job.precision not in self.conversion_precisions:
            raise UsageError(INT8_REFUSAL)
        check_onnx_file(inputs.source_path)
        target = staging / job.file_name
        unsealed = staging / f".{job.file_name}.unsealed"
        rounded = staging / f".{job.file_name}.half.onnx"
        fp16 = job.precision == "fp16"
        conversion: dict[str, Any] = {
            "converter": "mnnconvert",
            "arguments": converter_arguments(Path("SOURCE.onnx"), Path(job.file_name), job.precision, "PROVENANCE"),
            "weights": "float16" if fp16 else "float32",
            **({"weight_rounding": WEIGHT_ROUNDING} if fp16 else {}),
            "runtime": RUNTIME_OPTIONS,
        }
        provenance = inputs.provenance | conversion | {SEAL_KEY: UNSEALED}
        biz_code = json.dumps(provenance, sort_keys=True)
        try:
            source = inputs.source_path
            if fp16:
                round_convolution_weights(source, rounded)
                source = rounded
            run_tool(
                "mnnconvert",
                converter_arguments(source, unsealed, job.precision, biz_code),
                f"{job.file_name}: mnnconvert",
            )
            if not unsealed.is_file() or unsealed.stat().st_size == 0:
                raise ExportError(f"{job.file_name}: mnnconvert wrote no model (it reports success either way)")
            target.write_bytes(seal(unsealed.read_bytes()))
        finally:
            unsealed.unlink(missing_ok=True)
            rounded.unlink(missing_ok=True)
        written = check_mnn_file(target)
        if written.outputs != tuple(job.postprocess.outputs):
            raise ExportError(f"{job.file_name}: MNN renamed the outputs to {', '.join(written.outputs)}")
        return conversion

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """Provenance and runner with one trust check of the file."""
        del optimize
        checked = check_mnn_file(path)
        return checked.provenance, _shape_check(path, checked, mnn_runner(path, checked, threads))

    def open_runner(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        return self.load(path, threads, optimize)[1]

    def read_provenance(self, path: Path) -> dict[str, Any]:
        """The provenance in ``bizCode`` (read and checked without MNN)."""
        return check_mnn_file(path).provenance


FORMAT = MnnFormat()
