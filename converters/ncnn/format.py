"""ncnn ``.ncnn.param`` + ``.ncnn.bin`` from our TorchScript with pnnx; provenance in a ``.ncnn.json`` sidecar.

pnnx (Tencent's PyTorch → ncnn converter, the pip package's executable) is given the checked bytes of the
TorchScript artifact (``converters/torchscript/trust``) in a private folder, the artifact's own input shape,
and ``fp16=0``. The defaults are wrong for us, measured with mobilenet0.25 (real weights) against PyTorch:

- ``fp16=1`` (pnnx's default) writes the weights in float16 and **flushes float16 subnormals to zero**:
  454 weights of the BN-folded mobilenet0.25 are below 6.1e-5 (41 of the first convolution's 216), and
  losing them moves boxes by 6.7% of their range at 640 (4.6% at 320), landmarks by 5.7%, scores by
  3.1e-3: the "0.37 on boxes" of issue 21, and outside even the FP16 rule (3%). With ``fp16=0`` ncnn is
  within 4e-6 of range of PyTorch, whatever its runtime options on x86.
- the FP16 artifact is therefore written here, not by pnnx: pnnx's float32 weights rounded to float16 by
  numpy (round to nearest even, subnormals kept), tagged as ncnn's float16 blocks: 0.5% of range on boxes
  and landmarks at 640 with the same weights pnnx would have flushed.

pnnx names the blobs ``in0``/``out0..2``; they are renamed to the contract's (pnnx's outputs follow the
model's output order). ncnn's param format has no comment syntax (a ``#`` line makes ``load_param`` fail:
"parse layer_count failed"), so the provenance, the runtime options and the sha256 of both files are in the
sidecar, a companion the manifest hashes.

A dynamic source is converted with pnnx's ``inputshape2`` (its two verification sizes): ncnn then takes any
size. Sources with post-processing inside (``decode``, ``nms``) are refused (see :data:`POSTPROCESS_REFUSAL`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.contract import INPUT_NAME, MEAN_BGR, OUTPUT_NAMES
from retinaface_export.converters.ncnn.runtime import EXTRA, RUNTIME, RUNTIME_OPTIONS, ncnn_runner
from retinaface_export.converters.ncnn.trust import (
    BIN_SUFFIX,
    NCNN_BLOCK,
    PARAM_SUFFIX,
    PROVENANCE_BLOCK,
    SIDECAR_SUFFIX,
    TAG_FP16,
    TAG_FP32,
    check_ncnn_artifact,
    companion,
    parse_param,
    weight_blocks,
)
from retinaface_export.converters.torchscript.trust import checked_torchscript_bytes
from retinaface_export.extras import import_extra
from retinaface_export.format_api import ArtifactFormat, ConvertInputs, Job, Runner
from retinaface_export.sizes import InputSize

log = logging.getLogger(__name__)

# pnnx's optimisation level (its default): operator fusion (Conv+BN+LeakyReLU into one ncnn Convolution)
OPT_LEVEL = 2
PNNX_TIMEOUT_S = 600
# pnnx's blob names → the contract's
_PNNX_NAMES = {"in0": INPUT_NAME} | {f"out{i}": name for i, name in enumerate(OUTPUT_NAMES)}
POSTPROCESS_REFUSAL = (
    "ncnn artifacts keep the raw outputs: pnnx does not convert the scripted post-processing (the "
    "per-image loop, nonzero, argsort and NMS of --postprocess {mode}) into ncnn layers; convert the raw "
    "export and decode on the host (retinaface-detect does)"
)


def pnnx_executable() -> str:
    """The pnnx executable the pip package ships (MissingExtraError without it)."""
    pnnx = import_extra("pnnx", EXTRA, "converting TorchScript to ncnn")
    return str(pnnx.EXEC_PATH)


def _shape(size: InputSize) -> str:
    return f"[1,3,{size.height},{size.width}]f32"


def _second_size(job: Job) -> InputSize:
    """The other shape pnnx traces a dynamic model at (it marks the axes that differ as dynamic)."""
    if len(job.verify_sizes) > 1:
        return job.verify_sizes[1]
    first = job.verify_sizes[0]
    return InputSize(first.height + 64, first.width + 32)


def _pnnx_reason(output: str) -> str:
    """The line of pnnx's output that says why it failed (a libtorch exception's ``what()`` if any)."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("frame #")]
    thrown = [line for line in lines if line.startswith("what():")]
    return (thrown or lines or ["no output"])[-1][:200]


def run_pnnx(torchscript: bytes, job: Job, folder: Path) -> tuple[str, bytes, list[str]]:
    """``(param text, weights, arguments)`` of pnnx on ``torchscript`` (float32 weights) in ``folder``.

    Raises:
        RuntimeError: pnnx failed (its last output line) or wrote no ncnn model.
    """
    source = folder / "model.pt"
    source.write_bytes(torchscript)
    arguments = [f"inputshape={_shape(job.verify_sizes[0] if job.dynamic else job.size)}"]
    if job.dynamic:
        arguments.append(f"inputshape2={_shape(_second_size(job))}")
    arguments += [f"optlevel={OPT_LEVEL}", "fp16=0", "device=cpu"]
    outputs = [f"{key}={folder / name}" for key, name in (
        ("pnnxparam", "model.pnnx.param"), ("pnnxbin", "model.pnnx.bin"), ("pnnxpy", "model_pnnx.py"),
        ("pnnxonnx", "model.pnnx.onnx"), ("ncnnparam", "model.ncnn.param"), ("ncnnbin", "model.ncnn.bin"),
        ("ncnnpy", "model_ncnn.py"),
    )]  # fmt: skip
    done = subprocess.run(
        [pnnx_executable(), str(source), *arguments, *outputs],
        cwd=folder,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=PNNX_TIMEOUT_S,
        check=False,
    )
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        raise RuntimeError(f"pnnx exited with {done.returncode}: {_pnnx_reason(done.stderr + done.stdout)}")
    return param.read_text(encoding="ascii"), weights.read_bytes(), arguments


def rename_blobs(text: str) -> str:
    """Rename pnnx's ``in0``/``out0..2`` to the contract's names (blob and Input layer names only)."""
    lines = text.split("\n")
    for index, line in enumerate(lines[2:], start=2):
        fields = line.split()
        if len(fields) < 4:
            continue
        n_blobs = int(fields[2]) + int(fields[3])
        for position in range(4, 4 + n_blobs):
            fields[position] = _PNNX_NAMES.get(fields[position], fields[position])
        if fields[0] == "Input":
            fields[1] = INPUT_NAME
        lines[index] = " ".join(fields)
    return "\n".join(lines)


def half_weights(path: Path, text: str, weights: bytes) -> bytes:
    """The float32 ``.bin`` pnnx wrote, with every weight block in float16 (round to nearest even, subnormals kept).

    Biases stay float32, as ncnn reads them. pnnx's own ``fp16=1`` flushes subnormals (see the module).
    """
    chunks, position = [], 0
    for name, count, biases in weight_blocks(parse_param(path, text)):
        if weights[position : position + 4] != TAG_FP32:
            raise RuntimeError(f"pnnx wrote layer {name}'s weights in another type than float32")
        block = np.frombuffer(weights, np.float32, count, position + 4).astype(np.float16)
        chunks += [TAG_FP16, block.tobytes(), bytes(-block.nbytes % 4)]
        position += 4 + 4 * count
        chunks.append(weights[position : position + 4 * biases])
        position += 4 * biases
    if position != len(weights):
        raise RuntimeError("pnnx's weights file does not match its param file")
    return b"".join(chunks)


class NcnnFormat(ArtifactFormat):
    """ncnn param + bin (FP32, FP16) from a TorchScript artifact with pnnx; run by ncnn."""

    name = "ncnn"
    suffix = PARAM_SUFFIX
    runtime = RUNTIME
    source_format = "torchscript"
    precisions = ("fp32", "fp16")
    conversion_precisions = precisions
    companion_suffixes = (BIN_SUFFIX, SIDECAR_SUFFIX)

    def file_name(self, stem: str, precision: str, input_format: str) -> str:
        del input_format
        return f"{stem}_{precision}{self.suffix}"

    def refusal(self, job: Job) -> str | None:
        return None if job.postprocess.raw else POSTPROCESS_REFUSAL.format(mode=job.postprocess.mode)

    def convert(self, job: Job, inputs: ConvertInputs, staging: Path) -> dict[str, Any]:
        """Run pnnx once per source (shared by its precisions), blobs renamed, FP16 rounded here, sidecar written."""

        def convert_source() -> tuple[str, bytes, list[str]]:
            torchscript = checked_torchscript_bytes(inputs.source_path)  # what pnnx loads is what was checked
            with tempfile.TemporaryDirectory(prefix="pnnx-") as folder:
                text, weights, arguments = run_pnnx(torchscript, job, Path(folder))
            return rename_blobs(text), weights, arguments

        text, weights, arguments = inputs.shared.get(("pnnx", inputs.source_path, job.dynamic), convert_source)
        main = staging / job.file_name
        parse_param(main, text)  # the conversion writes only what the trust check accepts
        if job.precision == "fp16":
            weights = half_weights(main, text, weights)
        main.write_text(text, encoding="ascii")
        companion(main, BIN_SUFFIX).write_bytes(weights)
        conversion = {
            "converter": "pnnx",
            "pnnx_arguments": arguments,
            "weights": "float16 (round to nearest even, subnormals kept)" if job.precision == "fp16" else "float32",
            "runtime_options": RUNTIME_OPTIONS[job.precision],
            "batch": "ncnn runs one image at a time; the runner loops over the batch",
        }
        sidecar = {
            PROVENANCE_BLOCK: inputs.provenance,
            NCNN_BLOCK: {
                "param_sha256": hashlib.sha256(text.encode("ascii")).hexdigest(),
                "bin_sha256": hashlib.sha256(weights).hexdigest(),
                "input_blob": INPUT_NAME,
                "output_blobs": list(OUTPUT_NAMES),
                "preprocessing": {
                    "channels": "BGR",
                    "mean_bgr": list(MEAN_BGR),
                    "norm": [1.0, 1.0, 1.0],
                    "layout": "C×H×W per image (ncnn.Mat from_pixels with PIXEL_BGR, then substract_mean_normalize)",
                    "resize": "letterbox: aspect kept, padded bottom/right (as retinaface-detect)",
                },
            }
            | conversion,
        }
        companion(main, SIDECAR_SUFFIX).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
        return conversion

    def load(self, path: Path, threads: int | None = None, optimize: bool = False) -> tuple[dict[str, Any], Runner]:
        """Provenance and runner from one check of the three files."""
        del optimize
        return ncnn_runner(path, threads)

    def read_provenance(self, path: Path) -> dict[str, Any]:
        return check_ncnn_artifact(path).provenance


FORMAT = NcnnFormat()
