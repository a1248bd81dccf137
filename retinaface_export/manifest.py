"""``manifest.json``: the checkpoint an export folder came from and one :class:`ArtifactRecord` per artifact.

``retinaface-export`` creates it; ``retinaface-convert`` extends it; ``retinaface-parity``,
``retinaface-bench`` and ``retinaface-detect`` read it. A manifest is input like any other file: it is
validated where it is read (types, limits, file names that stay inside their folder, then the JSON Schema it
ships with, ``manifest.schema.json``, so that the reader accepts nothing the schema rejects), and a malformed
one is one :class:`~retinaface_export.errors.ManifestError` naming the file and the field.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retinaface_export.anchors import AnchorConfig
from retinaface_export.errors import InputFileError, ManifestError, OutsideFolderError, UsageError
from retinaface_export.formats import FORMATS, runtime_libraries
from retinaface_export.hashing import sha256_file
from retinaface_export.json_schema import schema_problem
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.precision import PRECISIONS
from retinaface_export.preprocess import INPUT_FORMATS
from retinaface_export.provenance import TOOL_NAME, library_versions
from retinaface_export.records import Verification
from retinaface_export.safety.safe_paths import folder_problem, read_regular_bytes, resolve_inside

MANIFEST_NAME = "manifest.json"
SCHEMA_NAME = "manifest.schema.json"
SCHEMA_VERSION = 2
# Limits a manifest's numbers must keep (far above anything real; a larger value is an edited file).
MAX_SIDE = 16384
MAX_BATCH = 4096
MAX_MANIFEST_BYTES = 16 * 2**20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A file in an export folder: a plain name, no folder part, not hidden.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,254}$")


def schema_path() -> Path:
    """The JSON Schema of manifests, as shipped with the package."""
    return Path(__file__).with_name(SCHEMA_NAME)


@functools.cache
def _schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


class _Fields:
    """Typed reads of one JSON object, each failure a ManifestError naming the file and the field."""

    def __init__(self, data: Any, manifest: Path, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(manifest, f"{where}: expected an object, got {type(data).__name__}")
        self.data, self.manifest, self.where = data, manifest, where

    def fail(self, key: str, reason: str) -> ManifestError:
        return ManifestError(self.manifest, f"{self.where}: {key!r} {reason}")

    def get(self, key: str, kinds: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        # bool is an int in Python; a manifest's integers are not booleans
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            raise self.fail(key, f"must be {_names(kinds)}, got {type(value).__name__}")
        return value

    def integer(self, key: str, low: int, high: int, optional: bool = False) -> int | None:
        value = self.get(key, int, optional)
        if value is not None and not low <= value <= high:
            raise self.fail(key, f"must be from {low} to {high}, got {value}")
        return value

    def choice(self, key: str, choices: list[str] | tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value[:40]!r}")
        return value

    def sha256(self, key: str) -> str:
        value = self.get(key, str)
        if not _SHA256.match(value):
            raise self.fail(key, "is not a sha256 hex digest")
        return value

    def file_name(self, key: str) -> str:
        value = self.get(key, str)
        if not _FILE_NAME.match(value) or value in (MANIFEST_NAME,):
            raise self.fail(key, f"must be a plain file name inside the folder, got {value[:80]!r}")
        return value

    def size(self, key: str, optional: bool = False) -> tuple[int, int] | None:
        value = self.get(key, list, optional)
        if value is None:
            return None
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(key, "must be [height, width]")
        if not all(0 < v <= MAX_SIDE and v % 32 == 0 for v in value):
            raise self.fail(key, f"sides must be multiples of 32 up to {MAX_SIDE}, got {value}")
        return (value[0], value[1])


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    words = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(words.get(k, k.__name__) for k in _tuple(kinds))


@dataclass(frozen=True)
class FileRef:
    """A file by name and content hash."""

    path: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def parse(cls, data: Any, manifest: Path, where: str) -> FileRef:
        """Validated from JSON."""
        fields = _Fields(data, manifest, where)
        return cls(fields.file_name("path"), fields.sha256("sha256"))


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, shape (ints, or names for dynamic axes), element type, layout."""

    name: str
    shape: tuple[int | str, ...]
    element_type: str = "f32"
    layout: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "shape": list(self.shape), "element_type": self.element_type, "layout": self.layout}

    @classmethod
    def parse(cls, data: Any, manifest: Path, where: str) -> TensorSpec:
        """Validated from JSON."""
        fields = _Fields(data, manifest, where)
        shape = fields.get("shape", list)
        if not 1 <= len(shape) <= 8 or not all(
            (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**31) or (isinstance(d, str) and len(d) < 32)
            for d in shape
        ):
            raise fields.fail("shape", "must be 1 to 8 positive integers or axis names")
        return cls(
            fields.get("name", str)[:128],
            tuple(shape),
            fields.choice("element_type", ("f32", "u8", "i64")),
            fields.get("layout", str),
        )


@dataclass(frozen=True)
class ArtifactRecord:
    """One row of a manifest: an artifact file, what it takes and gives, where it came from, how it was checked."""

    path: str
    format: str
    backend: str
    variant: str
    # [H, W]; None: dynamic batch, height and width
    size: tuple[int, int] | None
    # the fixed batch; None when dynamic
    batch: int | None
    precision: str
    input_format: str
    opset: int | None
    sha256: str
    bytes: int
    # anchor rows at ``size``; None when dynamic
    num_anchors: int | None
    # the sizes it was verified at (its own, or several for a dynamic artifact)
    verified_sizes: tuple[tuple[int, int], ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    companions: tuple[FileRef, ...] = ()
    # the artifact it was converted from (by name in the folder it was read from); None if exported
    source: FileRef | None = None
    # how it was checked against its reference (PyTorch eager, or its source)
    verification: dict[str, Any] = field(default_factory=dict)
    # what the converter reports (onnxsim's op counts, INT8 calibration)
    conversion: dict[str, Any] = field(default_factory=dict)
    # what it computes after the network: {"mode": "none" | "decode" | "nms", and the nms settings}
    postprocess: dict[str, Any] = field(default_factory=lambda: {"mode": "none"})

    @property
    def dynamic(self) -> bool:
        """Dynamic batch, height and width."""
        return self.size is None

    @property
    def size_label(self) -> str:
        """``640x640`` or ``dynamic``."""
        return "dynamic" if self.size is None else f"{self.size[0]}x{self.size[1]}"

    def files(self) -> list[FileRef]:
        """The main file and its companions."""
        return [FileRef(self.path, self.sha256), *self.companions]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (see ``manifest.schema.json``)."""
        return {
            "path": self.path,
            "format": self.format,
            "backend": self.backend,
            "variant": self.variant,
            "size": list(self.size) if self.size else None,
            "dynamic": self.dynamic,
            "batch": self.batch,
            "precision": self.precision,
            "input_format": self.input_format,
            "opset": self.opset,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "num_anchors": self.num_anchors,
            "verified_sizes": [list(s) for s in self.verified_sizes],
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "companions": [c.to_dict() for c in self.companions],
            "source": self.source.to_dict() if self.source else None,
            "verification": self.verification,
            "conversion": self.conversion,
            "postprocess": self.postprocess,
        }

    @property
    def checked(self) -> Verification:
        """The verification record, typed."""
        return Verification.from_record(self.verification)

    @classmethod
    def parse(cls, data: Any, manifest: Path, where: str) -> ArtifactRecord:
        """Validated from JSON.

        Raises:
            ManifestError: a missing field, a wrong type, a value out of its range, a path that leaves the
                folder; the message names the manifest, the artifact and the field.
        """
        fields = _Fields(data, manifest, where)
        path = fields.file_name("path")
        fields.where = f"{where} ({path})"
        fmt = fields.choice("format", tuple(FORMATS))
        size = fields.size("size", optional=True)
        dynamic = fields.get("dynamic", bool)
        if dynamic != (size is None):
            raise fields.fail("dynamic", "disagrees with 'size'")
        batch = fields.integer("batch", 1, MAX_BATCH, optional=True)
        if (batch is None) != dynamic:
            raise fields.fail("batch", "must be null exactly when the artifact is dynamic")
        if not path.endswith(FORMATS[fmt].suffix):
            raise fields.fail("path", f"does not end with {FORMATS[fmt].suffix} ({fmt})")
        verified = fields.get("verified_sizes", list)
        source = fields.get("source", dict, optional=True)
        return cls(
            path=path,
            format=fmt,
            backend=fields.get("backend", str)[:64],
            variant=fields.get("variant", str)[:64],
            size=size,
            batch=batch,
            precision=fields.choice("precision", tuple(PRECISIONS)),
            input_format=fields.choice("input_format", tuple(INPUT_FORMATS)),
            opset=fields.integer("opset", 1, 100, optional=True),
            sha256=fields.sha256("sha256"),
            bytes=fields.integer("bytes", 0, 2**40),
            num_anchors=fields.integer("num_anchors", 1, 2**31, optional=True),
            verified_sizes=tuple(
                _Fields({"size": s}, manifest, f"{fields.where} verified_sizes").size("size") for s in verified[:64]
            ),
            inputs=tuple(
                TensorSpec.parse(t, manifest, f"{fields.where} inputs") for t in fields.get("inputs", list)[:8]
            ),
            outputs=tuple(
                TensorSpec.parse(t, manifest, f"{fields.where} outputs") for t in fields.get("outputs", list)[:8]
            ),
            companions=tuple(
                FileRef.parse(c, manifest, f"{fields.where} companions") for c in fields.get("companions", list)[:8]
            ),
            source=FileRef.parse(source, manifest, f"{fields.where} source") if source is not None else None,
            verification=_verification(fields),
            conversion=fields.get("conversion", dict),
            postprocess=_postprocess(fields),
        )


@dataclass
class Manifest:
    """The checkpoint an export folder came from and the artifacts made of it."""

    checkpoint: dict[str, Any]
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=lambda: library_versions(runtime_libraries()))
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add(self, artifact: ArtifactRecord) -> None:
        """Add an artifact, replacing an earlier entry with the same path."""
        self.artifacts = [a for a in self.artifacts if a.path != artifact.path]
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
            "artifacts": [a.to_dict() for a in sorted(self.artifacts, key=lambda a: a.path)],
        }
        return json.dumps(body, indent=2, allow_nan=False) + "\n"

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """Read and validate ``folder/manifest.json``.

        Raises:
            ManifestError: missing, not JSON, not a manifest of this tool, or any field malformed (named).
        """
        path = Path(folder) / MANIFEST_NAME
        problem = folder_problem(Path(folder), "export folder")
        if problem is not None and problem.startswith("is not a folder"):
            raise ManifestError(folder, problem)
        if not path.is_file():
            raise ManifestError(path, "no manifest: not an export folder (run retinaface-export first)")
        raw = _manifest_bytes(Path(folder))
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestError(path, f"not valid JSON ({exc})") from exc
        top = _Fields(data, path, "manifest")
        if data.get("tool") != TOOL_NAME:
            raise ManifestError(path, f"not a {TOOL_NAME} manifest")
        if data.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                path, f"manifest schema {data.get('schema')!r} is not {SCHEMA_VERSION}: re-run the export"
            )
        checkpoint = _parse_checkpoint(top.get("checkpoint", dict), path)
        versions = top.get("versions", dict)
        if not all(isinstance(v, str) for v in versions.values()):
            raise top.fail("versions", "must map names to version strings")
        rows = top.get("artifacts", list)
        artifacts = [ArtifactRecord.parse(row, path, f"artifact {i + 1}") for i, row in enumerate(rows)]
        names = [f.path for a in artifacts for f in a.files()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ManifestError(path, f"lists {duplicates[0]} more than once")
        problem = schema_problem(data, _schema())
        if problem:  # what the typed reads above let through and the shipped schema does not
            raise ManifestError(path, f"does not follow {SCHEMA_NAME}: {problem}")
        return cls(checkpoint, artifacts, dict(versions), top.get("created", str, optional=True) or "")

    @classmethod
    def read_if_present(cls, folder: str | Path) -> Manifest | None:
        """The folder's manifest, or None when there is none."""
        return cls.read(folder) if (Path(folder) / MANIFEST_NAME).exists() else None


def _manifest_bytes(folder: Path) -> bytes:
    """The manifest's bytes, from a regular file inside ``folder`` only (a link leading out is refused)."""
    try:
        path = resolve_inside(folder, MANIFEST_NAME)
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(path, f"larger than {MAX_MANIFEST_BYTES // 2**20} MiB: not a manifest of this tool")
        return read_regular_bytes(path, "a manifest", max_bytes=MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise ManifestError(folder / MANIFEST_NAME, f"cannot be read ({exc.strerror or exc})") from None
    except (InputFileError, OutsideFolderError) as exc:
        raise ManifestError(exc.path, exc.reason) from None


def _postprocess(fields: _Fields) -> dict[str, Any]:
    try:
        return PostprocessSpec.from_record(fields.get("postprocess", dict)).record()
    except UsageError as exc:
        raise fields.fail("postprocess", f"is not a post-processing record ({exc})") from exc


def _verification(fields: _Fields) -> dict[str, Any]:
    record = fields.get("verification", dict)
    try:
        Verification.from_record(record)
    except (KeyError, ValueError, TypeError) as exc:
        raise fields.fail("verification", f"is not a verification record ({exc})") from exc
    return record


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_checkpoint(data: dict[str, Any], manifest: Path) -> dict[str, Any]:
    fields = _Fields(data, manifest, "checkpoint")
    fields.get("variant", str)
    fields.get("synthetic", bool)
    fields.get("path", str, optional=True)
    if fields.get("sha256", str, optional=True) is not None:
        fields.sha256("sha256")
    fields.sha256("state_dict_sha256")
    try:
        AnchorConfig.from_mapping(fields.get("anchors", dict))
    except (ValueError, TypeError) as exc:
        raise fields.fail("anchors", f"is not an anchor configuration ({exc})") from exc
    return data


def artifact_file(folder: Path, name: str) -> Path:
    """``folder/name``, refused when it is not a regular file inside ``folder`` (a symlink that leaves it).

    Raises:
        ManifestError: missing, not a regular file, or resolving outside ``folder``.
    """
    path = folder / name
    if not path.exists():
        raise ManifestError(path, "listed in the manifest but missing")
    try:
        resolve_inside(folder, name)
    except OutsideFolderError:
        raise ManifestError(path, "resolves outside its export folder (a link?): refused") from None
    if not path.is_file():
        raise ManifestError(path, "not a regular file")
    return path


def check_files(folder: Path, record: ArtifactRecord) -> Path:
    """Check an artifact's files (main and companions) are in ``folder`` and unaltered; the main file's path.

    Raises:
        ManifestError: a file is missing, leaves the folder, or its sha256 differs from the manifest.
    """
    for ref in record.files():
        path = artifact_file(folder, ref.path)
        if sha256_file(path) != ref.sha256:
            raise ManifestError(path, "altered since it was written (sha256 differs from the manifest)")
    return folder / record.path
