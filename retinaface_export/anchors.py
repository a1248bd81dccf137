"""Anchor configuration: a checkpoint's ``min_sizes``, ``steps`` and ``variance``.

Anchors do not change the network graph, but they decide how its outputs decode, so they travel with
every artifact's provenance.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from retinaface_export.errors import AnchorsFileError, InputFileError
from retinaface_export.safety.safe_paths import read_regular_bytes

# Strides of the three feature maps the network predicts on (model/blocks.py's FPN over the backbone's
# stride-8, -16 and -32 outputs): anchors must come one level per stride, in this order.
FEATURE_STRIDES = (8, 16, 32)
# An anchors file is a few lines of TOML.
_MAX_FILE_BYTES = 1 << 20


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return list(value)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must hold positive integers, got {value!r}"[:120])
    return value


def _positive_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must hold finite positive numbers, got {value!r}"[:120])
    return float(value)


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor sizes per feature map, the strides of those maps, and the box-coding variances."""

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variance: tuple[float, float]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AnchorConfig:
        """Build from a TOML/JSON table; raises ValueError naming what is wrong.

        Besides the types, the anchors must fit the network: one ``min_sizes`` list per feature level, the
        levels at :data:`FEATURE_STRIDES`, and finite positive variances.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a table of min_sizes, steps and variance, got {type(data).__name__}")
        missing = {"min_sizes", "steps", "variance"} - data.keys()
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        min_sizes = tuple(
            tuple(_positive_int(s, "min_sizes") for s in _list(sizes, "min_sizes"))
            for sizes in _list(data["min_sizes"], "min_sizes")
        )
        steps = tuple(_positive_int(s, "steps") for s in _list(data["steps"], "steps"))
        variance = tuple(_positive_float(v, "variance") for v in _list(data["variance"], "variance"))
        if len(min_sizes) != len(steps):
            raise ValueError(f"{len(min_sizes)} min_sizes lists for {len(steps)} steps")
        if steps != FEATURE_STRIDES:
            raise ValueError(
                f"steps {list(steps)} do not fit the network: RetinaFace has {len(FEATURE_STRIDES)} feature "
                f"levels at strides {list(FEATURE_STRIDES)}"
            )
        if len(variance) != 2:
            raise ValueError(f"variance needs 2 values, got {len(variance)}")
        if len({len(sizes) for sizes in min_sizes}) != 1 or not min_sizes[0]:
            raise ValueError("every feature map needs the same number of anchors (at least one)")
        return cls(min_sizes, steps, (variance[0], variance[1]))

    @property
    def anchors_per_location(self) -> int:
        """Anchors at each feature-map cell (2 for every published RetinaFace)."""
        return len(self.min_sizes[0])

    def num_anchors(self, height: int, width: int) -> int:
        """Rows of each output for an input of ``height`` × ``width``: Σ ⌈H/s⌉·⌈W/s⌉ × anchors per cell."""
        cells = sum(math.ceil(height / s) * math.ceil(width / s) for s in self.steps)
        return cells * self.anchors_per_location

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON manifests and artifact metadata."""
        data = asdict(self)
        return {key: [list(v) if isinstance(v, tuple) else v for v in value] for key, value in data.items()}


def bundled_anchor_presets() -> list[str]:
    """Names of the anchor files shipped in ``configs/anchors``."""
    folder = resources.files("retinaface_export.configs") / "anchors"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_anchors(name_or_path: str | Path) -> AnchorConfig:
    """Read anchors from a TOML file, or from a bundled preset by name (``small_faces``).

    Raises:
        AnchorsFileError: the file is missing, not TOML, or lacks ``min_sizes``/``steps``/``variance``.
    """
    text_path = str(name_or_path)
    if text_path in bundled_anchor_presets():
        source = resources.files("retinaface_export.configs") / "anchors" / f"{text_path}.toml"
        raw = source.read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        try:
            data = read_regular_bytes(path, "an anchors file", max_bytes=_MAX_FILE_BYTES)
        except InputFileError as exc:
            presets = ", ".join(bundled_anchor_presets())
            reason = "no such anchors file" if exc.reason == "no such file" else exc.reason
            raise AnchorsFileError(path, f"{reason} (bundled presets: {presets})") from None
        raw = data.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(raw)
        return AnchorConfig.from_mapping(data.get("anchors", data))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise AnchorsFileError(text_path, f"not an anchors file: {exc}") from exc
