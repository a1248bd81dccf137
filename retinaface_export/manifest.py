"""``manifest.json``: the list of artifacts in an export folder, shared by every command.

``retinaface-export`` creates it; ``retinaface-convert``, ``retinaface-parity`` and ``retinaface-bench``
read and extend it. It is written last and atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retinaface_export.atomic import atomic_write_bytes
from retinaface_export.errors import ManifestError
from retinaface_export.provenance import TOOL_NAME, library_versions

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass
class Manifest:
    """The checkpoint an export folder came from and the artifacts made of it."""

    checkpoint: dict[str, Any]
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add(self, artifact: dict[str, Any]) -> None:
        """Add an artifact, replacing an earlier entry with the same path."""
        self.artifacts = [a for a in self.artifacts if a["path"] != artifact["path"]]
        self.artifacts.append(artifact)

    def same_checkpoint(self, checkpoint: dict[str, Any]) -> bool:
        """Whether ``checkpoint`` holds the same weights and anchors as this manifest's."""
        keys = ("state_dict_sha256", "variant", "anchors")
        return all(self.checkpoint.get(k) == checkpoint.get(k) for k in keys)

    def to_json(self) -> str:
        """The file's text."""
        body = {
            "schema": SCHEMA_VERSION,
            "tool": TOOL_NAME,
            "created": self.created,
            "checkpoint": self.checkpoint,
            "versions": self.versions,
            "artifacts": sorted(self.artifacts, key=lambda a: a["path"]),
        }
        return json.dumps(body, indent=2) + "\n"

    def write(self, folder: Path) -> Path:
        """Write ``folder/manifest.json`` atomically; returns its path."""
        path = folder / MANIFEST_NAME
        atomic_write_bytes(path, self.to_json().encode())
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read ``folder/manifest.json``.

        Raises:
            ManifestError: missing, not JSON, or not a manifest of this tool.
        """
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(path, "no manifest: not an export folder (run retinaface-export first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("tool") != TOOL_NAME or "artifacts" not in data:
            raise ManifestError(path, f"not a {TOOL_NAME} manifest")
        if data.get("schema") != SCHEMA_VERSION:
            raise ManifestError(path, f"manifest schema {data.get('schema')} is not {SCHEMA_VERSION}")
        return cls(
            checkpoint=data["checkpoint"],
            artifacts=list(data["artifacts"]),
            versions=data.get("versions", {}),
            created=data.get("created", ""),
        )

    @classmethod
    def read_if_present(cls, folder: Path) -> Manifest | None:
        """The folder's manifest, or None when there is none."""
        return cls.read(folder) if (Path(folder) / MANIFEST_NAME).exists() else None
