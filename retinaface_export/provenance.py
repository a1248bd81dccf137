"""What every artifact and manifest records about how it was made."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from retinaface_export.version import tool_version

TOOL_NAME = "retinaface-export"
# What every artifact depends on; each format's runtime adds its own libraries (``Runtime.libraries``).
_BASE_PACKAGES = ("torch", "numpy", "onnx", "onnxsim", "nncf")


def library_versions(libraries: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python, this tool, the libraries every artifact depends on, and ``libraries``."""
    found = {"python": platform.python_version(), TOOL_NAME: tool_version()}
    for package in dict.fromkeys((*_BASE_PACKAGES, *libraries)):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


# Provenance keys that must describe the artifact they are inside, and the manifest field each mirrors.
_DESCRIBING_KEYS = ("format", "precision", "input_size", "batch", "input_format")


def provenance_problems(record: dict[str, Any], blocks: dict[str, dict[str, Any]]) -> list[str]:
    """Entries inside an artifact that do not describe it (its manifest ``record``), one line each.

    Every block of metadata an artifact carries is checked, not only the project's own: a block copied from
    a source (an ONNX model's ``metadata_props`` kept by a converter) would claim the source's precision
    and size.
    """
    expected = {
        "format": record["format"],
        "precision": record["precision"],
        "input_size": record["size"] if record["size"] else "dynamic",
        "batch": record["batch"] if record["batch"] else "dynamic",
        "input_format": record["input_format"],
    }
    problems = []
    for block_name, block in blocks.items():
        for key in _DESCRIBING_KEYS:
            if key in block and block[key] != expected[key]:
                problems.append(
                    f"provenance block {block_name!r} says {key}={block[key]!r}, the artifact is {expected[key]!r}"
                )
    return problems
