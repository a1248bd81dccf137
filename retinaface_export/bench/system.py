"""What a benchmark ran on: CPU model, cores, INT8 capability, runtime versions."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

from retinaface_export.formats import runtime_libraries, runtimes
from retinaface_export.provenance import library_versions

log = logging.getLogger(__name__)

# /proc/cpuinfo flags that decide how fast INT8 (and BF16) convolutions can be, best first.
_INT8_LEVELS = (
    ("amx_int8", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX-512 (no VNNI)"),
    ("avx2", "AVX2 (no VNNI)"),
)
_RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
_RELEVANT_FLAGS += ("amx_int8", "amx_bf16")


def _cpuinfo() -> tuple[str | None, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def int8_capability(flags: set[str]) -> str:
    """The best INT8 instruction set among ``flags`` (``/proc/cpuinfo`` names), e.g. ``AVX2 (no VNNI)``."""
    for flag, label in _INT8_LEVELS:
        if flag in flags:
            return label
    return "no AVX2" if flags else "unknown"


def _runtime_details() -> dict[str, Any]:
    details: dict[str, Any] = {}
    for runtime in runtimes().values():
        try:
            details |= runtime.machine()
        except Exception as exc:  # an optional detail of the record: any failure just leaves it out
            log.debug("%s: no machine details: %s", runtime.name, exc)
    return details


def machine_record() -> dict[str, Any]:
    """CPU model, cores, the flags that matter for INT8, and what each runtime reports of the CPU."""
    model, flags = _cpuinfo()
    return {
        "cpu": model or platform.processor() or "unknown CPU",
        "cores": os.cpu_count(),
        "int8": int8_capability(flags),
        "cpu_flags": sorted(f for f in _RELEVANT_FLAGS if f in flags),
    } | _runtime_details()


def machine() -> str:
    """``AMD EPYC, 2 cores, AVX2 (no VNNI)``: one line for titles."""
    record = machine_record()
    return f"{record['cpu']}, {record['cores']} cores, {record['int8']}"


def runtime_versions() -> dict[str, str]:
    """Versions of Python, this tool and the runtimes timed."""
    return library_versions(runtime_libraries())
