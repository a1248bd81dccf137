"""ncnn's CPU path (the ``ncnn`` Python package): the one module of the package that imports ``ncnn``.

ncnn's defaults are not FP32: ``ncnn.Option`` turns ``use_fp16_storage``, ``use_fp16_packed`` and
``use_fp16_arithmetic`` on, and ncnn uses them wherever the CPU has half-precision arithmetic (ARMv8.2
``asimdhp``: most phones since 2018). :data:`RUNTIME_OPTIONS` is what each precision's artifact is verified
with and what its sidecar and manifest record: every reduced-precision option off for FP32, ncnn's FP16
storage and arithmetic on for FP16. A program that loads the files itself must set the same options before
``load_param``.

ncnn has no batch axis: a network runs one C×H×W image per extractor, so the runner runs each image of an
N×3×H×W batch in turn and stacks the outputs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.contract import INPUT_NAME, OUTPUT_NAMES
from retinaface_export.converters.ncnn.trust import CheckedArtifact, check_ncnn_artifact
from retinaface_export.errors import UsageError
from retinaface_export.extras import import_extra
from retinaface_export.format_api import Runner, Runtime
from retinaface_export.provenance import checked_provenance

EXTRA = "ncnn"
_REDUCED_OFF = {
    "use_fp16_storage": False,
    "use_fp16_packed": False,
    "use_fp16_arithmetic": False,
    "use_bf16_storage": False,
    "use_bf16_packed": False,
}
# ncnn.Option values each precision's artifact is verified with (and a user must set to get those numbers)
RUNTIME_OPTIONS: dict[str, dict[str, bool]] = {
    "fp32": _REDUCED_OFF,
    "fp16": _REDUCED_OFF | {"use_fp16_storage": True, "use_fp16_packed": True, "use_fp16_arithmetic": True},
}


def ncnn_module():
    """``ncnn``, or :class:`~retinaface_export.errors.MissingExtraError` naming ``pip install``."""
    return import_extra("ncnn", EXTRA, "running .ncnn.param files")


def open_net(checked: CheckedArtifact, threads: int | None = None):
    """An ``ncnn.Net`` for a checked artifact, with its precision's :data:`RUNTIME_OPTIONS`.

    The param text parsed is the one that was checked; the weights are read from the ``.bin`` the check
    read (its layout and sha256 checked against the param and the sidecar).
    """
    ncnn = ncnn_module()
    net = ncnn.Net()
    for option, value in RUNTIME_OPTIONS[checked.provenance["precision"]].items():
        setattr(net.opt, option, value)
    net.opt.use_vulkan_compute = False
    if threads:
        net.opt.num_threads = threads
    if net.load_param_mem(checked.param_text) != 0:
        raise RuntimeError("ncnn could not parse the param file")
    if net.load_model(str(checked.bin_path)) != 0:
        raise RuntimeError("ncnn could not read the weights file")
    return net


def _fixed_size(provenance: dict[str, Any]) -> tuple[int, int] | None:
    size = provenance.get("input_size")
    return None if size == "dynamic" else (int(size[0]), int(size[1]))


def ncnn_runner(path: Path, threads: int | None = None) -> tuple[dict[str, Any], Runner]:
    """``(provenance, runner)`` of an ncnn artifact: checked, then loaded once.

    The runner takes float32 N×3×H×W (BGR minus the mean, as every format) and runs each image in turn.

    Raises:
        UntrustedArtifactError: the files are not what retinaface-export writes (see ``trust``).
        ProvenanceError: the sidecar's provenance is malformed or out of bounds.
        UsageError: (when run) an input of another size than a fixed-size artifact's.
    """
    checked = check_ncnn_artifact(path)
    checked_provenance(path, checked.provenance)  # its precision and size choose options below: validated first
    ncnn = ncnn_module()
    net = open_net(checked, threads)
    fixed = _fixed_size(checked.provenance)
    lock = threading.Lock()  # one extractor at a time: ncnn's per-net workspace allocators are shared

    def run(data: np.ndarray) -> list[np.ndarray]:
        if data.ndim != 4 or data.shape[1] != 3:
            raise UsageError(f"{path.name} takes N×3×H×W float32 input, got shape {tuple(data.shape)}")
        if fixed is not None and tuple(data.shape[2:]) != fixed:
            raise UsageError(
                f"{path.name} takes {fixed[0]}x{fixed[1]} inputs, got {data.shape[2]}x{data.shape[3]}; "
                "use the artifact of that size or a dynamic one"
            )
        outputs: list[list[np.ndarray]] = [[] for _ in OUTPUT_NAMES]
        with lock:
            for index in range(data.shape[0]):
                image = np.ascontiguousarray(data[index], dtype=np.float32)  # alive while ncnn reads it
                extractor = net.create_extractor()
                extractor.input(INPUT_NAME, ncnn.Mat(image))
                for name, collected in zip(OUTPUT_NAMES, outputs, strict=True):
                    status, result = extractor.extract(name)
                    if status != 0:
                        raise RuntimeError(f"ncnn could not compute {name} ({status})")
                    collected.append(np.array(result, dtype=np.float32))
        return [np.stack(collected) for collected in outputs]

    return checked.provenance, run


class NcnnRuntime(Runtime):
    """ncnn on the CPU (Vulkan off), with the options of the artifact's precision (:data:`RUNTIME_OPTIONS`)."""

    name = "ncnn"
    libraries = ("ncnn", "pnnx")

    def open(self, path: Path, threads: int | None = None, optimize: bool = False) -> Runner:
        """The artifact as verified: ``optimize`` changes nothing (ncnn has no graph optimisation to skip)."""
        del optimize
        return ncnn_runner(path, threads)[1]

    def machine(self) -> dict[str, Any]:
        """What ncnn detects of the CPU (its kernels are chosen from it)."""
        ncnn = ncnn_module()
        features = {
            name: bool(getattr(ncnn, f"cpu_support_{name}")())
            for name in ("x86_avx", "x86_avx2", "arm_neon", "arm_vfpv4", "arm_asimdhp")
            if hasattr(ncnn, f"cpu_support_{name}")
        }
        return {"ncnn_cpu_count": int(ncnn.get_cpu_count()), "ncnn_cpu_support": features}


RUNTIME = NcnnRuntime()
