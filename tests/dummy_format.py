"""A format made for the tests, with a runtime of its own: the whole of a new format is this module + one row.

``onnx-reference`` is the source ONNX graph rewritten with its own provenance, run by ONNX's reference
evaluator (``onnx.reference``: numpy, no ONNX Runtime). Nothing else in the repository names it: the tests
add its row to ``retinaface_export.formats.FORMATS`` and every command must then see it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.converters.onnx.format import read_onnx_provenance, set_metadata, source_model
from retinaface_export.converters.onnx.trust import check_onnx_file
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner, Runtime


class ReferenceEvaluatorRuntime(Runtime):
    """ONNX's numpy reference evaluator: slow, single-threaded, and not ONNX Runtime."""

    name = "onnx-reference"
    libraries = ("onnx",)

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        import onnx
        from onnx.reference import ReferenceEvaluator

        del threads, optimize  # it has neither
        check_onnx_file(path)
        evaluator = ReferenceEvaluator(onnx.load(str(path)))

        def run(data: np.ndarray) -> list[np.ndarray]:
            return list(evaluator.run(None, {"data": data}))

        return run


class OnnxReferenceFormat(ArtifactFormat):
    name = "onnx-reference"
    suffix = ".ref.onnx"
    runtime = ReferenceEvaluatorRuntime()
    source_format = "onnx"

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(source_model(inputs))
        set_metadata(model, inputs.provenance)
        (staging / job.file_name).write_bytes(model.SerializeToString())
        return {"copied": True}

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return read_onnx_provenance(path)


FORMAT = OnnxReferenceFormat()
