"""Golden sets: PyTorch eager outputs of one checkpoint on fixed inputs at several sizes.

A set is a folder with ``golden.json`` (checkpoint identity, inputs, versions, the command that made it)
and ``tensors.npz``. To stay small (a few hundred KB per set) it keeps, per input and size:

- the prepared input's sha256 (the input itself is a recipe: a photo referenced by name and sha256 and
  letterboxed to the size, or a seeded synthetic photo), so parity can prove it fed the same pixels;
- a fixed sample of output rows: the highest-scoring anchors, where detections are decided, plus an even
  stride over every pyramid level; and each output's range over all anchors;
- the decoded faces down to score 0.3 (box, score, landmarks, in network-input pixels, float32).

Photos are found again by content: in the ``--images`` folders, the file of the recorded name if its
sha256 matches, else any image there with the recorded sha256 (a renamed copy serves as well).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.contract import OUTPUT_NAMES, OUTPUT_WIDTHS
from retinaface_export.detection.faces import Face, faces_from_arrays
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.postprocess import DetectionConfig, postprocess
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.eager import eager_runner
from retinaface_export.errors import FileError, UsageError
from retinaface_export.images import decode_image, images_in_folder
from retinaface_export.preprocess import synthetic_photos, to_network_input
from retinaface_export.provenance import library_versions
from retinaface_export.safety.atomic import commit_files, staging_dir
from retinaface_export.safety.safe_paths import (
    check_plain_name,
    open_regular,
    read_regular_bytes,
    require_folder,
    resolve_inside,
    shown,
)
from retinaface_export.sizes import InputSize, check_size

GOLDEN_FILE = "golden.json"
TENSORS_FILE = "tensors.npz"
# Rows kept per output: the top-scoring anchors and an even stride over all anchors.
TOP_ROWS = 256
STRIDED_ROWS = 768
# Faces are stored down to this score, so that comparisons can allow a score margin below 0.5.
FACES_DOWN_TO = 0.3
FACE_THRESHOLD = 0.5
# Refused above these sizes: a set is ~1 MB of tensors and a few KB of JSON.
MAX_TENSOR_BYTES = 256 << 20
MAX_META_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# sha256 of images already hashed while looking for a photo, by (path, inode, size, mtime)
_digests: dict[tuple[str, int, int, int], str] = {}
_digests_lock = threading.Lock()


def _file_digest(path: Path) -> str | None:
    """sha256 of an image file's bytes (remembered while the file is unchanged), None if it cannot be read."""
    try:
        info = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    try:
        digest = hashlib.sha256(read_regular_bytes(path, "an image")).hexdigest()
    except FileError:  # a FIFO or unreadable file among the photos: not the one looked for
        return None
    with _digests_lock:
        _digests[key] = digest
    return digest


def find_photo(name: str, sha256: str, image_dirs: list[Path]) -> tuple[Path, bytes]:
    """The photo whose bytes have ``sha256`` in ``image_dirs``, and its bytes.

    The file called ``name`` is tried first in each folder; then every image (by suffix, not recursive) of
    every folder, so that a renamed copy is found too. Only files inside the folders are read.

    Raises:
        FileError: no image there has that sha256 (naming a file of that name whose content differs), or
            one cannot be read.
        OutsideFolderError: the file of that name, or an image of a folder, is a link leading out of it.
    """
    differs: Path | None = None
    for folder in image_dirs:
        path = resolve_inside(Path(folder), name)  # a link out of the folder is refused, not read
        if path.is_file():
            data = read_regular_bytes(path, "an image")
            if hashlib.sha256(data).hexdigest() == sha256:
                return path, data
            differs = differs or path
    for folder in image_dirs:
        if not Path(folder).is_dir():
            continue  # named in the message below
        for path in images_in_folder(Path(folder)):
            if _file_digest(path) == sha256:
                data = read_regular_bytes(path, "an image")
                if hashlib.sha256(data).hexdigest() == sha256:  # unchanged since it was hashed
                    return path, data
    if differs is not None:
        raise FileError(
            differs,
            "is not the photo the golden set was recorded on (sha256 differs), and no other image in the "
            "--images folders has its sha256",
        )
    searched = ", ".join(str(d) for d in image_dirs) or "nowhere"
    raise FileError(
        Path(name), f"golden input photo not found by name or sha256 (searched {searched}); pass --images DIR"
    )


@dataclass(frozen=True)
class GoldenInput:
    """An input recipe: a photo (by file name and sha256) or a seeded synthetic photo."""

    name: str
    photo: str | None = None
    photo_sha256: str | None = None
    seed: int | None = None

    def prepare(self, size: InputSize, image_dirs: list[Path]) -> np.ndarray:
        """The H×W×3 uint8 canvas fed to the network at ``size``.

        Raises:
            FileError: no image in ``image_dirs`` has the photo's sha256 (see :func:`find_photo`).
        """
        if self.photo is None:
            return synthetic_photos(1, size.height, size.width, seed=int(self.seed or 0))[0]
        try:
            check_plain_name(self.photo)  # load_golden checked it; a GoldenInput made in code is checked here
        except ValueError as exc:
            raise FileError(self.name, f"golden input photo {exc}") from None
        return _letterboxed(*find_photo(self.photo, str(self.photo_sha256), image_dirs), size)


def _letterboxed(path: Path, data: bytes, size: InputSize) -> np.ndarray:
    image = decode_image(path, data)
    return Letterbox.fit(image.shape[0], image.shape[1], size.height, size.width).apply(image)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def sample_rows(cls_prob: np.ndarray) -> np.ndarray:
    """Row indices kept for one output set (A anchors): top face scores plus an even stride, sorted."""
    count = len(cls_prob)
    top = np.argsort(-cls_prob[:, 1], kind="stable")[:TOP_ROWS]
    strided = np.linspace(0, count - 1, min(STRIDED_ROWS, count)).round().astype(np.int64)
    return np.unique(np.concatenate([top, strided])).astype(np.int32)


def decode_faces(outputs: list[np.ndarray], anchors: AnchorConfig, size: InputSize, threshold: float) -> list[Face]:
    """Faces (network-input pixels) of one image's outputs (A×4, A×2, A×10) above ``threshold``."""
    priors = prior_boxes(anchors, size.height, size.width)
    found = postprocess(
        *outputs, priors, anchors.variance, (size.width, size.height), DetectionConfig(score_threshold=threshold)
    )
    return faces_from_arrays(*found)


@dataclass(frozen=True)
class GoldenCase:
    """The golden record of one input at one size."""

    input: GoldenInput
    size: InputSize
    input_sha256: str
    rows: np.ndarray
    outputs: tuple[np.ndarray, ...]
    ranges: tuple[float, ...]
    faces: list[Face]


@dataclass(frozen=True)
class GoldenSet:
    """A recorded golden set."""

    folder: Path
    checkpoint: dict[str, Any]
    anchors: AnchorConfig
    cases: list[GoldenCase]
    meta: dict[str, Any]

    @property
    def sizes(self) -> list[InputSize]:
        """The sizes recorded, ascending."""
        return sorted({case.size for case in self.cases})


def _faces_to_array(faces: list[Face]) -> np.ndarray:
    """K×15 float32: box (4), score, landmarks (10)."""
    rows = [[*f.box, f.score, *(v for point in f.landmarks for v in point)] for f in faces]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 15)


def _faces_from_array(rows: np.ndarray) -> list[Face]:
    return faces_from_arrays(rows[:, :4], rows[:, 4], rows[:, 5:])


def record_golden(
    checkpoint: LoadedCheckpoint,
    sizes: tuple[InputSize, ...],
    photos: tuple[Path, ...],
    seeds: tuple[int, ...],
    output: Path,
    command: str,
) -> GoldenSet:
    """Run ``checkpoint`` eagerly on every input at every size and write the set to ``output`` (atomically).

    Raises:
        FileError: a photo cannot be read.
    """
    # the photos named on the command line are read once, here (a named photo may be a link; only what a
    # folder holds is confined to it)
    photo_bytes = {Path(p): read_regular_bytes(p, "an image") for p in photos}
    inputs = [GoldenInput(p.stem, p.name, hashlib.sha256(photo_bytes[p]).hexdigest(), None) for p in photo_bytes]
    sources = dict(zip(inputs, photo_bytes.items(), strict=True))
    inputs += [GoldenInput(f"synthetic-{seed}", None, None, seed) for seed in seeds]
    run = eager_runner(checkpoint.model)
    anchors = checkpoint.variant.anchors
    arrays: dict[str, np.ndarray] = {}
    cases_meta = []
    for size in sizes:
        for spec in inputs:
            canvas = _letterboxed(*sources[spec], size) if spec in sources else spec.prepare(size, [])
            outputs = [out[0] for out in run(to_network_input(canvas))]
            rows = sample_rows(outputs[1])
            key = f"{spec.name}@{size}"
            arrays[f"{key}/rows"] = rows
            arrays[f"{key}/faces"] = _faces_to_array(decode_faces(outputs, anchors, size, FACES_DOWN_TO))
            for name, out in zip(OUTPUT_NAMES, outputs, strict=True):
                arrays[f"{key}/{name}"] = out[rows]
            cases_meta.append(
                {
                    "input": spec.name,
                    "size": size.as_list(),
                    "input_sha256": _sha256(canvas),
                    "ranges": [float(out.max() - out.min()) for out in outputs],
                }
            )
    meta = {
        "schema": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "checkpoint": checkpoint.provenance(),
        "inputs": [spec.__dict__ for spec in inputs],
        "rows": {"top": TOP_ROWS, "strided": STRIDED_ROWS},
        "faces_down_to": FACES_DOWN_TO,
        "versions": library_versions(),
        "cases": cases_meta,
    }
    output = Path(output)
    with staging_dir(output) as staging:
        np.savez_compressed(staging / TENSORS_FILE, **arrays)
        (staging / GOLDEN_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        commit_files(staging, [TENSORS_FILE, GOLDEN_FILE], output)
    return load_golden(output)


def _golden_input(spec: Any) -> GoldenInput:
    """One input recipe of golden.json, checked: a photo is a plain file name, looked up only in --images."""
    if not isinstance(spec, dict) or set(spec) - {"name", "photo", "photo_sha256", "seed"}:
        raise ValueError("an input is not a table of name, photo, photo_sha256, seed")
    name, photo, digest, seed = (spec.get(key) for key in ("name", "photo", "photo_sha256", "seed"))
    if not isinstance(name, str) or not name:
        raise ValueError("an input has no name")
    if photo is not None:
        check_plain_name(photo)
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise ValueError(f"input {shown(name)}: photo_sha256 is not a sha256")
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"input {shown(name)}: needs a photo or an integer seed")
    return GoldenInput(name, photo, digest, seed)


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every array of tensors.npz, read eagerly from one open regular file (no pickles)."""
    with open_regular(path, "a golden tensors file") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise FileError(path, "empty file (0 bytes), not golden tensors")
        with zipfile.ZipFile(handle) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_TENSOR_BYTES:
                raise FileError(path, f"holds more than {MAX_TENSOR_BYTES} bytes of tensors; not a golden set")
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}


def _check_rows(key: str, rows: np.ndarray, anchors: int) -> None:
    """Sampled rows must be integers indexing the outputs at the case's size (not floats, not negative)."""
    if rows.dtype.kind not in "iu":
        raise ValueError(f"{key}/rows must hold integers, got {rows.dtype}")
    if len(rows) and (rows.min() < 0 or rows.max() >= anchors):
        raise ValueError(f"{key}/rows must be from 0 to {anchors - 1} (the anchors at that size)")


def load_golden(folder: str | Path) -> GoldenSet:
    """Read a golden set, validating it as input: plain photo names, sizes within limits, tensors only.

    Raises:
        FileError: not a golden set folder, or its files are malformed (one line, naming the file).
    """
    folder = Path(folder)
    meta_path, tensors_path = folder / GOLDEN_FILE, folder / TENSORS_FILE
    if not meta_path.is_file() or not tensors_path.is_file():
        raise FileError(folder, f"not a golden set (needs {GOLDEN_FILE} and {TENSORS_FILE})")
    try:
        meta = json.loads(read_regular_bytes(meta_path, "a golden set file", max_bytes=MAX_META_BYTES))
        inputs = {spec.name: spec for spec in map(_golden_input, meta["inputs"])}
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise FileError(meta_path, f"malformed golden set ({type(exc).__name__}: {exc})") from None
    try:
        arrays = _read_tensors(tensors_path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise FileError(tensors_path, f"not readable golden tensors ({type(exc).__name__}: {reason})") from None
    try:
        anchors = AnchorConfig.from_mapping(meta["checkpoint"]["anchors"])
        cases = []
        for case in meta["cases"]:
            size = check_size(*case["size"])
            key = f"{case['input']}@{size}"
            outputs = tuple(arrays[f"{key}/{name}"] for name in OUTPUT_NAMES)
            rows, faces = arrays[f"{key}/rows"], arrays[f"{key}/faces"]
            if rows.ndim != 1 or faces.ndim != 2 or faces.shape[1] != 15:
                raise ValueError(f"{key}: rows or faces have the wrong shape")
            _check_rows(key, rows, anchors.num_anchors(size.height, size.width))
            if any(out.shape != (len(rows), w) for out, w in zip(outputs, OUTPUT_WIDTHS, strict=True)):
                raise ValueError(f"{key}: outputs do not have one row per sampled row")
            cases.append(
                GoldenCase(
                    input=inputs[case["input"]],
                    size=size,
                    input_sha256=str(case["input_sha256"]),
                    rows=rows,
                    outputs=outputs,
                    ranges=tuple(float(r) for r in case["ranges"]),
                    faces=_faces_from_array(faces),
                )
            )
    except (KeyError, ValueError, TypeError, UsageError) as exc:
        raise FileError(folder, f"malformed golden set ({type(exc).__name__}: {exc})") from None
    return GoldenSet(folder, meta["checkpoint"], anchors, cases, meta)


def find_golden_sets(root: str | Path) -> list[GoldenSet]:
    """Every golden set at ``root`` (a set itself, or a folder of sets)."""
    root = Path(root)
    if (root / GOLDEN_FILE).is_file():
        return [load_golden(root)]
    require_folder(root, "golden folder")
    return [load_golden(p) for p in sorted(root.iterdir()) if (p / GOLDEN_FILE).is_file()]


def prepared_input(case: GoldenCase, image_dirs: list[Path]) -> np.ndarray:
    """The case's canvas, checked against the sha256 recorded with it.

    Raises:
        FileError: the recipe no longer reproduces the recorded pixels (an OpenCV or NumPy change?).
    """
    canvas = case.input.prepare(case.size, image_dirs)
    if _sha256(canvas) != case.input_sha256:
        raise FileError(
            Path(case.input.photo or case.input.name),
            f"input at {case.size} no longer reproduces the golden pixels (sha256 differs)",
        )
    return canvas
