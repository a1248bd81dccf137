"""What the tools trust in a TorchScript file, checked before torch opens it.

The security policy (docs/security.md states it whole):

- **Weights are data, never code.** Checkpoints load with ``torch.load(weights_only=True)`` only.
- **TorchScript is code**: ``torch.jit.load`` compiles and runs the Python-like code stored in the archive
  (``forward``, and ``__setstate__`` while unpickling), so an archive from anywhere could run anything.
  A ``.torchscript.pt`` file is therefore opened only if :func:`check_torchscript_archive` finds that its
  code is exactly the code this version of retinaface-export writes: every class in the archive's
  ``code/`` files must be, character for character, a class of a fresh trace of the same RetinaFace
  variant made here with the installed torch (and the archive must have all of them, no more). torch
  numbers classes per process (``___torch_mangle_N``: the numbers depend on what the process scripted
  before), so classes are named by their rank in a walk of the archive instead, numbers included in what
  is compared: the archive passes only if it is a consistent renaming of the reference, never when code or
  objects were swapped between two numbered classes; ``data.pkl`` (the module tree) and ``constants.pkl``
  must equal the reference's opcode for opcode under that renaming; temporaries (``_N``) are renumbered per
  class. Its pickles may name only the classes and functions that trace's pickles name, with GLOBAL opcodes
  only (no ``STACK_GLOBAL``/``INST``/``OBJ``); and it may hold nothing but tensor storages, the entries of
  that trace and ``extra/provenance.json`` (at most 1 MiB; the post-processing it claims chooses the
  reference only after :func:`~retinaface_export.provenance.checked_provenance` bounded every size and
  count). The zip must be plain (one top folder, no ``..`` names, no two names equal but for case, nothing
  before or after it) so that Python's zip reader and torch's see the same files. The check reads the
  archive with ``zipfile`` and ``pickletools``, which execute nothing.
  Consequences: a TorchScript file written with another torch or tool version is refused (re-export it,
  or use its ONNX or OpenVINO sibling); the weights inside are not judged here (the manifest's sha256 and
  parity do that). What stays trusted is torch's own zip and pickle readers, as for any checkpoint.
- ONNX files are checked by ``retinaface_export.converters.onnx.trust``.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from retinaface_export.anchors import AnchorConfig
from retinaface_export.converters.torchscript.archive import archive_bytes, trace
from retinaface_export.errors import ProvenanceError, UntrustedArtifactError
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.provenance import checked_provenance
from retinaface_export.safety.safe_paths import open_regular, shown
from retinaface_export.sizes import InputSize
from retinaface_export.variants import get_variant, list_variants

# torch numbers re-defined classes per process (``conv/___torch_mangle_7.py``, ``conv.___torch_mangle_7.Conv2d``):
# the numbers depend on how many classes the process scripted before, not on the model. They are not erased:
# every class is renamed to its rank in a deterministic walk of the archive (first in data.pkl, then in the code
# of classes already ranked), the same walk for the archive and the reference, so the two compare equal only
# when one is a consistent renaming of the other (which cannot change what runs). Code swapped between two
# numbered classes, or objects of data.pkl moved to another class, then differ.
_MANGLE_IN_NAME = re.compile(r"/___torch_mangle_\d+(?=\.py)")
_MANGLE_IN_TEXT = re.compile(r"\.___torch_mangle_\d+")
# A dotted name in TorchScript code that may name a class of the archive.
_QUALIFIED = re.compile(rb"__torch__(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_CLASS_LINE = re.compile(rb"class ([A-Za-z_][A-Za-z0-9_]*)\b")
# torch's code printer numbers temporaries (``_0``, ``_1``) per file, and puts a process's first, unnumbered
# classes of a module in one file but numbered ones in a file each: code is compared class by class with
# temporaries renumbered in order of appearance (a consistent renaming, which cannot change what runs).
_TEMPORARY = re.compile(rb"\b_(\d+)\b")
# Pickles whose whole opcode stream (classes renamed as the code is) must equal the reference's: the module
# tree (which object of which class sits where). traced_inputs.pkl holds the example input's shape: not compared.
_COMPARED_PICKLES = ("data.pkl", "constants.pkl")
# Entries holding raw tensor bytes (parameters, buffers, the traced example input): data, not code.
_STORAGE = re.compile(r"(?:data|traced_inputs)/\d+")
# Entries an artifact may hold that a trace made here does not: the exporter's provenance.
_OUR_EXTRA = frozenset({"extra/provenance.json"})
# Pickle opcodes that build objects from names other than GLOBAL's: the exporter's pickles use none.
_FORBIDDEN_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})
# Limits on what the check reads: a RetinaFace archive has ~600 entries and < 1 MB of code and pickles.
MAX_ENTRIES = 20_000
MAX_CODE_BYTES = 64 << 20
MAX_PROVENANCE_BYTES = 1 << 20
MAX_PICKLE_BYTES = 1 << 20
# References kept per process: each distinct claimed post-processing makes one (a few MB); older ones go first.
MAX_REFERENCES = 8
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
# The reference trace's input: its size does not change the code (the trace records sizes with Tensor.size).
_REFERENCE_INPUT = (1, 3, 64, 64)


@dataclass(frozen=True)
class _ArchiveCode:
    """What in a TorchScript archive can run or name code, every class renamed to its rank (see above)."""

    code: Counter[tuple[bytes, bytes]]  # (class or block, canonical text) of every class or top-level block
    where: dict[bytes, str]  # the code/... file each class or block of ``code`` was read from
    pickles: dict[str, tuple[tuple[str, Any], ...]]  # the compared pickles' opcodes and arguments
    names: frozenset[str]  # every entry but tensor storages, relative to the archive's top folder
    globals: frozenset[str]  # every "module name" a GLOBAL opcode of any pickle names, but the archive's classes
    provenance: bytes | None


def _refuse(path: Path, reason: str) -> UntrustedArtifactError:
    return UntrustedArtifactError(path, f"{reason}; refused before loading (TorchScript archives are code)")


def _pickle_ops(path: Path, name: str, data: bytes) -> list[tuple[str, Any]]:
    """``(opcode, argument)`` of every opcode of a pickle, refused if it builds objects other than by GLOBAL."""
    ops = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _FORBIDDEN_OPCODES:
                raise _refuse(path, f"{name} builds objects with {opcode.name}, which retinaface-export never writes")
            ops.append((opcode.name, arg))
    except UntrustedArtifactError:
        raise
    except Exception:  # pickletools raises several types on data that is not a pickle
        raise _refuse(path, f"{name} is not a valid pickle") from None
    return ops


def _blocks(content: bytes) -> list[bytes]:
    """A code file's top-level blocks (classes, functions), as written."""
    blocks: list[list[bytes]] = []
    for line in content.splitlines():
        if (line and not line[:1].isspace()) or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    return [b"\n".join(block) for block in blocks]


def _module(relative: str) -> bytes:
    """``code/__torch__/a/b.py`` → ``__torch__.a.b``: the module a code file defines."""
    return relative.removeprefix("code/").removesuffix(".py").replace("/", ".").encode()


class _Ranks:
    """Every class of an archive named by its rank in a walk that does not depend on torch's numbering."""

    def __init__(self, defined: dict[bytes, bytes], data_pkl: list[tuple[str, Any]]) -> None:
        self.defined = defined  # qualified class name -> its block
        self.canonical: dict[bytes, bytes] = {}
        for op, arg in data_pkl:  # classes in the order the module tree pickles their objects
            if op == "GLOBAL" and str(arg).startswith("__torch__."):
                self._rank(str(arg).replace(" ", ".").encode())
        ranked = 0
        while True:  # then the classes the code of ranked classes names, in order; then any left, by name
            while ranked < len(self.canonical):
                name = list(self.canonical)[ranked]
                for match in _QUALIFIED.finditer(self.defined.get(name, b"")):
                    found = self._longest_defined(match.group(0))
                    if found:
                        self._rank(found)
                ranked += 1
            left = sorted(set(self.defined) - set(self.canonical))
            if not left:
                break
            self._rank(left[0])

    def _rank(self, name: bytes) -> None:
        if name not in self.canonical:
            erased = _MANGLE_IN_TEXT.sub("", name.decode()).encode()
            self.canonical[name] = b"%s~%d" % (erased, len(self.canonical))

    def _longest_defined(self, dotted: bytes) -> bytes | None:
        parts = dotted.split(b".")
        for end in range(len(parts), 1, -1):
            name = b".".join(parts[:end])
            if name in self.defined or name in self.canonical:
                return name
        return None

    def rename(self, text: bytes) -> bytes:
        """``text`` with every ranked class named by its rank (other names kept as written, numbers included)."""

        def replace(match: re.Match[bytes]) -> bytes:
            dotted = match.group(0)
            found = self._longest_defined(dotted)
            return dotted if found is None else self.canonical[found] + dotted[len(found) :]

        return _QUALIFIED.sub(replace, text)

    def global_name(self, arg: Any) -> str:
        """A GLOBAL opcode's ``module name``, renamed when it names a ranked class."""
        text = str(arg)
        name = text.replace(" ", ".").encode()
        return self.canonical[name].decode() if name in self.canonical else text


def _renumbered(block: bytes) -> bytes:
    numbers: dict[bytes, bytes] = {}

    def renumber(match: re.Match[bytes]) -> bytes:
        return numbers.setdefault(match.group(1), b"_%d" % len(numbers))

    return _TEMPORARY.sub(renumber, block)


def _plain_zip(path: Path, data: bytes) -> zipfile.ZipFile:
    """The archive, if it is a zip with nothing before or after it, unique names and one top folder."""
    if not data.startswith(b"PK\x03\x04"):
        raise _refuse(path, "not a TorchScript archive (not a zip file)")
    if data[-_EOCD_SIZE : -_EOCD_SIZE + 4] != _EOCD:
        raise _refuse(path, "zip archive with a comment or data after its end")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _refuse(path, "not a TorchScript archive (a damaged zip file)") from None
    if len(infos) > MAX_ENTRIES:
        raise _refuse(path, f"{len(infos)} entries; a RetinaFace archive has about 600")
    names = [info.filename for info in infos]
    if len({name.lower() for name in names}) != len(names):  # torch's zip reader looks names up ignoring case
        raise _refuse(path, "zip archive with duplicate entry names")
    top = names[0].split("/", 1)[0] if names else ""
    for name in names:
        parts = PurePosixPath(name).parts
        if not name.startswith(f"{top}/") or "\\" in name or ".." in parts or name.startswith("/"):
            raise _refuse(path, f"entry {shown(name)} is outside the archive's one top folder")
    return archive


def _archive_code(path: Path, data: bytes) -> _ArchiveCode:
    archive = _plain_zip(path, data)
    names, read = set(), 0
    pickles: dict[str, list[tuple[str, Any]]] = {}
    code_files: dict[str, bytes] = {}
    provenance = None
    with archive:
        for info in archive.infolist():
            relative = info.filename.split("/", 1)[1]
            if _STORAGE.fullmatch(relative):
                continue
            names.add(_MANGLE_IN_NAME.sub("", relative))
            wanted = relative.startswith("code/") or relative.endswith(("pkl", ".json"))
            if not wanted:
                continue
            read += info.file_size
            if read > MAX_CODE_BYTES:
                raise _refuse(path, f"more than {MAX_CODE_BYTES} bytes of code and pickles")
            try:
                content = archive.read(info)  # also checks the local header names the same file
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                raise _refuse(path, f"entry {shown(relative)} cannot be read (a damaged zip file)") from None
            if relative.endswith("pkl"):
                if len(content) > MAX_PICKLE_BYTES:  # its opcodes are kept: bounded (data.pkl is ~50 kB)
                    raise _refuse(path, f"{relative} larger than {MAX_PICKLE_BYTES} bytes")
                ops = _pickle_ops(path, relative, content)
                pickles[relative] = ops if relative in _COMPARED_PICKLES else [o for o in ops if o[0] == "GLOBAL"]
            elif relative.startswith("code/"):
                code_files[relative] = content
            if relative == "extra/provenance.json":
                if len(content) > MAX_PROVENANCE_BYTES:
                    raise _refuse(path, f"provenance.json larger than {MAX_PROVENANCE_BYTES} bytes")
                provenance = content
    blocks = [(relative, block) for relative, content in code_files.items() for block in _blocks(content)]
    defined: dict[bytes, bytes] = {}
    for relative, block in blocks:
        declared = _CLASS_LINE.match(block)
        if declared:
            defined.setdefault(_module(relative) + b"." + declared.group(1), block)
    ranks = _Ranks(defined, pickles.get("data.pkl", []))
    code: Counter[tuple[bytes, bytes]] = Counter()
    where: dict[bytes, str] = {}
    for relative, block in blocks:
        declared = _CLASS_LINE.match(block)
        key = (
            ranks.canonical[_module(relative) + b"." + declared.group(1)]
            if declared
            else _MANGLE_IN_NAME.sub("", relative).encode()
        )
        code[key, _renumbered(ranks.rename(block))] += 1
        where.setdefault(key, relative)
    renamed = {
        name: tuple((op, ranks.global_name(arg) if op == "GLOBAL" else arg) for op, arg in ops)
        for name, ops in pickles.items()
    }
    # the classes of the archive are judged by their code and data.pkl; these are the other names pickles use
    found_globals = {arg for ops in renamed.values() for op, arg in ops if op == "GLOBAL"} - {
        name.decode() for name in ranks.canonical.values()
    }
    compared = {name: renamed.get(name, ()) for name in _COMPARED_PICKLES}
    return _ArchiveCode(code, where, compared, frozenset(names), frozenset(found_globals), provenance)


def _traced_archive(variant_name: str, post: str) -> bytes:
    """The bytes our exporter writes for a fresh trace of ``variant_name`` (random weights: code only).

    ``post`` is "" for raw outputs, or the JSON of ``[postprocess record, input size, anchors]`` an archive
    claims: the scripted post-processing our exporter wraps around the trace for those (its code is then
    compared; its numbers are data). The one place that knows how the exporter makes TorchScript; keep it
    in step with the format module.
    """
    import torch

    from retinaface_export.model import build_model

    variant = get_variant(variant_name)
    spec, size, anchors = PostprocessSpec(), None, variant.anchors
    if post:
        record, claimed_size, claimed_anchors = json.loads(post)
        spec, anchors = PostprocessSpec.from_record(record), AnchorConfig.from_mapping(claimed_anchors)
        size = InputSize(*claimed_size) if isinstance(claimed_size, list) else None
    with torch.device("cpu"):
        model = build_model(variant).eval()
    return archive_bytes(trace(model, torch.zeros(_REFERENCE_INPUT)), anchors, spec, size, {})


_REFERENCE_LOCK = threading.Lock()
_REFERENCES: dict[tuple[str, str], _ArchiveCode] = {}


def _reference(variant_name: str, post: str = "") -> _ArchiveCode:
    """The code of a fresh trace of ``variant_name``, made once per process (threads wait for it)."""
    with _REFERENCE_LOCK:
        if (variant_name, post) not in _REFERENCES:
            archive = _traced_archive(variant_name, post)
            while len(_REFERENCES) >= MAX_REFERENCES:
                del _REFERENCES[next(iter(_REFERENCES))]
            _REFERENCES[variant_name, post] = _archive_code(Path(f"<{variant_name}>"), archive)
        return _REFERENCES[variant_name, post]


def _post_hint(path: Path, provenance: bytes | None) -> str:
    """The post-processing an archive claims, as a reference key ("" for raw outputs or anything malformed).

    Untrusted like the variant: it only chooses which of our own exporter's outputs the code is compared with,
    and it is validated with every size and count bounded (:func:`checked_provenance`) before a reference is
    built from it. A malformed claim is compared with raw-output archives, which such code will not match.
    """
    try:
        claimed = checked_provenance(path, json.loads(provenance or b"{}"))
    except (ValueError, RecursionError, ProvenanceError):
        return ""
    if claimed.postprocess.raw:
        return ""
    size = claimed.input_size.as_list() if claimed.input_size else "dynamic"
    return json.dumps([claimed.postprocess.record(), size, claimed.anchors.to_dict()], sort_keys=True)


def _variant_hint(provenance: bytes | None) -> str | None:
    """The variant the archive claims (untrusted: only the order in which references are tried)."""
    try:
        claimed = json.loads(provenance or b"{}").get("variant")
    except (ValueError, AttributeError, RecursionError):
        return None
    return claimed if isinstance(claimed, str) else None


def _differences(found: _ArchiveCode, reference: _ArchiveCode) -> str | None:
    """Why ``found`` is not the reference's code, or None when it is."""
    foreign = sorted(found.globals - reference.globals)
    if foreign:
        return f"its pickles name {shown(foreign[0])}, which retinaface-export archives never do"
    extra_code = found.code - reference.code
    if extra_code:
        key = sorted(extra_code)[0][0]
        return f"{shown(found.where[key])} is not code retinaface-export writes"
    missing = reference.code - found.code
    if missing:
        return f"{shown(reference.where[sorted(missing)[0][0]])} is missing"
    unknown = sorted(found.names - reference.names - _OUR_EXTRA)
    if unknown:
        return f"entry {shown(unknown[0])} is not in archives retinaface-export writes"
    for name in _COMPARED_PICKLES:
        if found.pickles[name] != reference.pickles[name]:
            return f"{name} does not hold the module tree retinaface-export writes (objects moved between classes)"
    return None


def checked_torchscript_bytes(path: str | Path) -> bytes:
    """The bytes of a TorchScript artifact, read once and checked (see :func:`check_torchscript_archive`).

    Load these bytes (``torch.jit.load(io.BytesIO(data))``) rather than the path: what is loaded is then
    what was checked.

    Raises:
        UntrustedArtifactError: the archive's code or content is not what retinaface-export writes.
        InputFileError: not a readable regular file.
    """
    path = Path(path)
    with open_regular(path, "a TorchScript file") as handle:
        data = handle.read()
    found = _archive_code(path, data)
    hint = _variant_hint(found.provenance)
    candidates = ([hint] if hint in list_variants() else []) + [v for v in list_variants() if v != hint]
    post = _post_hint(path, found.provenance)
    first_reason = None
    for variant in candidates:
        reason = _differences(found, _reference(variant, post))
        if reason is None:
            return data
        first_reason = first_reason or f"{reason} (compared with {variant})"
    import torch

    raise _refuse(
        path,
        f"its code is not what retinaface-export writes with torch {torch.__version__}: {first_reason}; "
        "re-export it, or use its ONNX or OpenVINO artifact",
    )


def check_torchscript_archive(path: str | Path) -> None:
    """Refuse a TorchScript archive unless its code is exactly what retinaface-export writes.

    Call it before ``torch.jit.load`` on any ``.torchscript.pt`` (for provenance as well as for running).
    The first call per variant traces a reference model (a few seconds); later calls reuse it.

    Raises:
        UntrustedArtifactError: code files that differ from a fresh trace of the same variant, pickles
            naming other classes or functions, unexpected entries, or a zip that is not plain.
        InputFileError: missing, a folder, a FIFO or device, a symlink loop.
    """
    checked_torchscript_bytes(path)
