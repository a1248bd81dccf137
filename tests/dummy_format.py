"""A format made for the tests: the whole of a new format is this module plus one row in the table.

``onnx-copy`` is the source ONNX graph rewritten with its own provenance, run by ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retinaface_export.converters.onnx import onnxruntime_runner, read_onnx_provenance, set_metadata, source_model
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner


class OnnxCopyFormat(ArtifactFormat):
    name = "onnx-copy"
    suffix = ".copy.onnx"
    backend = "onnxruntime"
    source_format = "onnx"

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(source_model(inputs))
        set_metadata(model, inputs.provenance)
        (staging / job.file_name).write_bytes(model.SerializeToString())
        return {"copied": True}

    def open_runner(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        return onnxruntime_runner(path, optimize=optimize, threads=threads)

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return read_onnx_provenance(path)


FORMAT = OnnxCopyFormat()
