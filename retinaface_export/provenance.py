"""What every artifact and manifest records about how it was made, and the one check of what an artifact says.

An artifact's provenance (ONNX ``metadata_props``, OpenVINO ``rt_info``, TorchScript's ``provenance.json``,
the ncnn sidecar, MNN's ``bizCode``, LiteRT's metadata) is input read from a file like a manifest:
:func:`checked_provenance` validates it (types, ranges, bounds on every size and count) before anything
decodes with it or allocates by it, and a malformed one is one :class:`ProvenanceError` naming the file.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from retinaface_export.anchors import AnchorConfig
from retinaface_export.contract import INPUT_NAME, MEAN_BGR
from retinaface_export.errors import ProvenanceError, UsageError
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import DEFAULT_INPUT_FORMAT, INPUT_FORMATS
from retinaface_export.sizes import InputSize, check_batch, check_size
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


# The block OpenVINO Model API-style readers configure preprocessing from (OpenVINO IRs): its own keys.
_MODEL_INFO = "model_info"
# Entries only some artifacts hold (converted ones, INT8 ones): one the manifest does not expect is a claim.
_ONLY_SOME = frozenset({"source", "source_sha256", "int8"})


def _normalised_anchors(value: Any) -> Any:
    try:
        return AnchorConfig.from_mapping(value).to_dict()
    except (ValueError, TypeError):
        return value


def _normalised_postprocess(value: Any) -> Any:
    try:
        return PostprocessSpec.from_record(value).record()
    except (UsageError, TypeError):
        return value


def _describing(record: dict[str, Any]) -> dict[str, Any]:
    """What says which file an artifact is: the keys every block must agree on."""
    return {
        "format": record["format"],
        "precision": record["precision"],
        "input_size": record["size"] if record["size"] else "dynamic",
        "batch": record["batch"] if record["batch"] else "dynamic",
        "input_format": record["input_format"],
    }


def expected_provenance(record: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Every entry an artifact's own provenance block must hold, as its manifest row and checkpoint record say.

    The inverse of what the pipeline writes into each artifact (``pipeline.builds.artifact_provenance``, plus
    the INT8 record of an INT8 conversion); ``tool_version`` is left out (a folder can hold artifacts of several
    versions).
    """
    expected = _describing(record) | {
        "tool": TOOL_NAME,
        "variant": record["variant"],
        "opset": record["opset"],
        "mean_embedded": record["input_format"] != DEFAULT_INPUT_FORMAT,
        "mean_bgr": list(MEAN_BGR),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "checkpoint_state_dict_sha256": checkpoint.get("state_dict_sha256"),
        "synthetic": checkpoint.get("synthetic"),
        "anchors": _normalised_anchors(checkpoint.get("anchors")),
        "input": INPUT_NAME,
        "outputs": [tensor["name"] for tensor in record["outputs"]],
        "postprocess": _normalised_postprocess(record["postprocess"]),
    }
    if record.get("source"):
        expected |= {"source": record["source"]["path"], "source_sha256": record["source"]["sha256"]}
    if "int8" in record.get("conversion", {}):
        expected["int8"] = record["conversion"]["int8"]
    return expected


def _model_info(record: dict[str, Any]) -> dict[str, Any]:
    embedded = record["input_format"] != DEFAULT_INPUT_FORMAT
    return {
        "mean_values": "0 0 0" if embedded else " ".join(f"{m:g}" for m in MEAN_BGR),
        "scale_values": "1 1 1",
        "postprocess": _normalised_postprocess(record["postprocess"])["mode"],
    }


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def provenance_problems(
    record: dict[str, Any], blocks: dict[str, dict[str, Any]], checkpoint: dict[str, Any] | None = None
) -> list[str]:
    """Entries inside an artifact that do not describe it (its manifest ``record``), one line each.

    Every block of metadata an artifact carries is checked, not only the project's own: a block copied from
    a source (an ONNX model's ``metadata_props`` kept by a converter) would claim the source's precision
    and size. With the manifest's ``checkpoint`` record, every entry the pipeline writes is compared, both
    ways: the artifact's own block (``tool`` = retinaface-export) must hold each of them (anchors, checkpoint
    digests, variant, post-processing, the INT8 record, ...) with the manifest's value, other blocks may not
    contradict them, and OpenVINO's ``model_info`` must give the manifest's mean and post-processing.
    """
    expected = _describing(record) if checkpoint is None else expected_provenance(record, checkpoint)
    problems = []
    own = [name for name, block in blocks.items() if isinstance(block, dict) and block.get("tool") == TOOL_NAME]
    if checkpoint is not None and not own:
        problems.append(f"no {TOOL_NAME} provenance block (blocks: {', '.join(map(repr, blocks)) or 'none'})")
    for block_name, block in blocks.items():
        if not isinstance(block, dict):
            problems.append(f"provenance block {block_name!r} is not a set of entries")
            continue
        wanted = _model_info(record) if block_name == _MODEL_INFO and checkpoint is not None else expected
        if checkpoint is not None and block_name != _MODEL_INFO:
            for key in sorted(_ONLY_SOME & block.keys() - wanted.keys()):
                problems.append(f"provenance block {block_name!r} has {key}, which the manifest's record does not")
        for key, value in wanted.items():
            if key not in block:
                if block_name in own:
                    problems.append(f"provenance block {block_name!r} lacks {key}, the manifest says {_shown(value)}")
                continue
            found = block[key]
            if key == "anchors":
                found = _normalised_anchors(found)
            elif key == "postprocess" and block_name != _MODEL_INFO:
                found = _normalised_postprocess(found)
            if found != value:
                said = f"provenance block {block_name!r} says {key}={_shown(block[key])}"
                problems.append(f"{said}, the manifest says {_shown(value)}")
    return problems


# Bounds on what an artifact may claim (far above anything real; larger values are an edited file): anchors
# per feature-map cell (published RetinaFaces have 2) and an anchor's side in pixels. NMS counts are bounded by
# NmsSettings itself, sizes and batches by sizes.py.
MAX_ANCHORS_PER_CELL = 16
MAX_ANCHOR_SIDE = 8192
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TEXT_KEYS = ("tool", "tool_version", "format", "variant", "precision", "input", "source")


@dataclass(frozen=True)
class ArtifactProvenance:
    """What an artifact says it takes and gives, validated; ``entries`` is the whole block as read."""

    anchors: AnchorConfig
    # None: dynamic height and width
    input_size: InputSize | None
    # None: any batch
    batch: int | None
    postprocess: PostprocessSpec
    input_format: str
    entries: dict[str, Any]


def _size(value: Any) -> InputSize | None:
    if value == "dynamic":
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"'input_size' must be [height, width] or \"dynamic\", got {str(value)[:40]!r}")
    return check_size(value[0], value[1], "input_size")


def _batch(value: Any) -> int | None:
    if value == "dynamic":
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"'batch' must be an integer or \"dynamic\", got {str(value)[:40]!r}")
    return check_batch(value)


def _anchors(value: Any) -> AnchorConfig:
    anchors = AnchorConfig.from_mapping(value)
    if anchors.anchors_per_location > MAX_ANCHORS_PER_CELL:
        raise ValueError(f"{anchors.anchors_per_location} anchors per cell (at most {MAX_ANCHORS_PER_CELL})")
    if max(max(sizes) for sizes in anchors.min_sizes) > MAX_ANCHOR_SIDE:
        raise ValueError(f"anchor sides above {MAX_ANCHOR_SIDE} pixels")
    return anchors


def _other_entries(entries: dict[str, Any]) -> None:
    for key in _TEXT_KEYS:
        if key in entries and (not isinstance(entries[key], str) or len(entries[key]) > 256):
            raise ValueError(f"{key!r} must be a short string")
    if "outputs" in entries and not (
        isinstance(entries["outputs"], list) and all(isinstance(o, str) for o in entries["outputs"])
    ):
        raise ValueError("'outputs' must be a list of names")
    for key in ("checkpoint_sha256", "source_sha256", "checkpoint_state_dict_sha256"):
        if entries.get(key) is not None and not (isinstance(entries[key], str) and _SHA256.match(entries[key])):
            raise ValueError(f"{key!r} must be a sha256 hex digest")
    for key in ("synthetic", "mean_embedded"):
        if key in entries and not isinstance(entries[key], bool):
            raise ValueError(f"{key!r} must be true or false")
    mean = entries.get("mean_bgr", [0.0, 0.0, 0.0])
    if not (
        isinstance(mean, list)
        and len(mean) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in mean)
    ):
        raise ValueError("'mean_bgr' must be three finite numbers")


def checked_provenance(path: str | Path, entries: Any) -> ArtifactProvenance:
    """An artifact's provenance block validated like a manifest: types, ranges, and bounds on sizes and counts.

    Raises:
        ProvenanceError: not an object, ``anchors``/``input_size``/``batch`` missing, or any entry malformed
            or out of bounds (the message names the file and the entry).
    """
    if not isinstance(entries, dict):
        raise ProvenanceError(path, f"provenance must be an object, got {type(entries).__name__}")
    missing = {"anchors", "input_size", "batch"} - entries.keys()
    if missing:
        raise ProvenanceError(path, f"no retinaface-export provenance ({', '.join(sorted(missing))} missing)")
    input_format = entries.get("input_format", DEFAULT_INPUT_FORMAT)
    try:
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input format {str(input_format)[:40]!r}")
        if "precision" in entries and entries["precision"] not in PRECISIONS:
            raise ValueError(f"unknown precision {str(entries['precision'])[:40]!r}")
        _other_entries(entries)
        return ArtifactProvenance(
            anchors=_anchors(entries["anchors"]),
            input_size=_size(entries["input_size"]),
            batch=_batch(entries["batch"]),
            postprocess=PostprocessSpec.from_record(entries.get("postprocess")),  # NmsSettings bounds its counts
            input_format=input_format,
            entries=entries,
        )
    except (ValueError, TypeError, UsageError) as exc:
        raise ProvenanceError(path, f"malformed provenance: {exc}") from None
