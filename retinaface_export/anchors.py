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

from retinaface_export.errors import AnchorsFileError


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor sizes per feature map, the strides of those maps, and the box-coding variances."""

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variance: tuple[float, float]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AnchorConfig:
        """Build from a TOML/JSON table; raises ValueError naming what is wrong."""
        missing = {"min_sizes", "steps", "variance"} - data.keys()
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        min_sizes = tuple(tuple(int(s) for s in sizes) for sizes in data["min_sizes"])
        steps = tuple(int(s) for s in data["steps"])
        variance = tuple(float(v) for v in data["variance"])
        if len(min_sizes) != len(steps):
            raise ValueError(f"{len(min_sizes)} min_sizes lists for {len(steps)} steps")
        if len(variance) != 2:
            raise ValueError(f"variance needs 2 values, got {len(variance)}")
        if any(s <= 0 for s in steps) or any(m <= 0 for sizes in min_sizes for m in sizes):
            raise ValueError("steps and min_sizes must be positive")
        if len({len(sizes) for sizes in min_sizes}) != 1:
            raise ValueError("every feature map needs the same number of anchors")
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
        if not path.is_file():
            presets = ", ".join(bundled_anchor_presets())
            raise AnchorsFileError(path, f"no such anchors file (bundled presets: {presets})")
        raw = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(raw)
        return AnchorConfig.from_mapping(data.get("anchors", data))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        raise AnchorsFileError(text_path, f"not an anchors file: {exc}") from exc
