"""The one checkpoint loader: a file in the biubug6/Pytorch_Retinaface layout to a ready RetinaFace.

Like timm's ``clean_state_dict`` + ``checkpoint_filter_fn``: ``torch.load(weights_only=True)`` with no
fallback, unwrap ``{'state_dict': ...}``, strip ``module.``, infer the variant from keys and shapes,
refuse non-finite weights, then ``load_state_dict(strict=True)``. Every failure is a typed
:class:`~retinaface_export.errors.CheckpointError` whose message names the file and the reason.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from retinaface_export.anchors import AnchorConfig
from retinaface_export.errors import (
    BackboneMismatchError,
    BackboneOnlyCheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InputFileError,
    NonFiniteWeightsError,
    StateDictMismatchError,
    UsageError,
)
from retinaface_export.hashing import sha256_state_dict
from retinaface_export.safety.safe_paths import open_regular, read_error
from retinaface_export.variants import Variant, get_variant, list_variants

if TYPE_CHECKING:  # torch and the model are imported where they are used: `--help` never loads torch
    import torch

    from retinaface_export.model import RetinaFace

# Keys a BatchNorm may lack in checkpoints saved by old PyTorch; filled with zeros (no effect in eval).
_OPTIONAL_SUFFIX = ".num_batches_tracked"
# How many key names an error message lists before "..."
_NAMES_SHOWN = 4
# Top-level prefixes of a RetinaFace state dict (after `module.` is stripped).
_DETECTOR_PREFIXES = ("body.", "fpn.", "ssh1.", "ssh2.", "ssh3.", "ClassHead.", "BboxHead.", "LandmarkHead.")
# Phrases of torch.load's RuntimeErrors for a file cut short (zip archives and the legacy format).
_TRUNCATION_MARKERS = ("zip archive", "central directory", "file not found", "unexpected EOF", "corrupted")
# torch's words when it advises weights_only=False: never shown to users.
_ADVICE_MARKERS = ("weights_only", "trusted source", "torch.serialization", "add_safe_globals", "Please")
# torch.load's refusal of a class or function while unpickling with weights_only=True.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+)")
# What torch.save's own pickles name (tensor rebuilders, storages, OrderedDict): anything else is a payload.
_TORCH_SAVE_GLOBALS = re.compile(r"^(torch\.[\w.]+|collections\.OrderedDict)$")
_MAX_PICKLE_BYTES = 64 << 20
# How torch.save files start: a zip archive, or (legacy format) a pickled magic number.
_ZIP_MAGIC = b"PK\x03\x04"
# torch.serialization.MAGIC_NUMBER, spelled out so that sniffing a file needs no torch (a test compares them)
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC = pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)[2:-1]  # LONG1 opcode and value
_HEAD_BYTES = 512
# Signatures of files users hand over by mistake, for the message.
_OTHER_FORMATS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x7fELF", "an executable"),
)
# Floating dtypes a checkpoint's float tensors may have: loading converts them to float32 exactly enough.
_FLOAT_DTYPES = ("float16", "float32", "float64")
# Keys that mark a classification backbone saved on its own: MobileNetV1 stages / torchvision ResNet.
_BACKBONE_ONLY_MARKERS = {
    "stage1.0.0.weight": "MobileNetV1",
    "conv1.weight": "ResNet",
    "layer1.0.conv1.weight": "ResNet",
}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A RetinaFace with its weights and where they came from."""

    model: RetinaFace
    variant: Variant
    path: Path | None
    file_sha256: str | None
    state_dict_sha256: str
    synthetic: bool = False

    def provenance(self) -> dict[str, Any]:
        """What the manifest and every artifact record about the weights."""
        return {
            "path": str(self.path) if self.path else None,
            "sha256": self.file_sha256,
            "state_dict_sha256": self.state_dict_sha256,
            "variant": self.variant.name,
            "synthetic": self.synthetic,
            "anchors": self.variant.anchors.to_dict(),
        }


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_NAMES_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _NAMES_SHOWN else "")


def _sniff(head: bytes) -> str:
    """What a file that torch.save did not write looks like, for the message."""
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised data"


def _pickle_globals(data: bytes) -> list[str] | None:
    """The classes and functions a plain pickle names (read, never run), or None if it does not parse."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # pickletools raises several types on data that is not a pickle
        return None
    return found


def _foreign_globals(handle: BinaryIO) -> list[str]:
    """Classes and functions other than torch.save's that the checkpoint's pickle names (read, never run).

    For the message when torch refuses a pickle without naming what it holds (a ``STACK_GLOBAL`` payload).
    """
    try:
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            if len(infos) != 1 or infos[0].file_size > _MAX_PICKLE_BYTES:
                return []
            data = archive.read(infos[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []
    names = _pickle_globals(data) or []
    return sorted({name for name in names if not _TORCH_SAVE_GLOBALS.match(name)})


def _torch_reason(exc: BaseException) -> str:
    """Torch's first line, unless it is torch's advice (``weights_only=False``) rather than a reason."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not first or any(word in first for word in _ADVICE_MARKERS):
        return type(exc).__name__
    return first[:200]


def _load_torch_file(path: Path, handle: BinaryIO) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notices about the file's origin
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _UNSUPPORTED_GLOBAL.search(str(exc))
        foreign = [refused.group(1) or refused.group(2)] if refused else _foreign_globals(handle)
        if foreign:
            raise CorruptCheckpointError(
                path,
                f"holds Python objects ({_names(foreign)}) that safe loading (weights_only=True) refuses; "
                "re-save its state_dict with torch.save(model.state_dict(), path)",
            ) from None
        raise CorruptCheckpointError(
            path, "corrupt checkpoint (its pickle data is not what torch.save writes)"
        ) from None
    except (EOFError, zipfile.BadZipFile):
        raise CorruptCheckpointError(path, "truncated or corrupt checkpoint (unexpected end of data)") from None
    except RuntimeError as exc:
        if "TorchScript archive" in str(exc):
            raise CorruptCheckpointError(
                path, "is a TorchScript archive, not a checkpoint (an exported artifact goes with --model)"
            ) from None
        if any(marker in str(exc) for marker in _TRUNCATION_MARKERS):
            raise CorruptCheckpointError(path, "truncated or corrupt checkpoint (data ends early)") from None
        raise CorruptCheckpointError(path, f"not a PyTorch checkpoint ({_torch_reason(exc)})") from None
    except Exception as exc:  # torch.load parses untrusted bytes: garbage fails in any type (IndexError, ...)
        raise CorruptCheckpointError(path, f"corrupt checkpoint ({_torch_reason(exc)})") from None


def _read(path: Path) -> tuple[Any, str]:
    """The unpickled checkpoint (weights only) and the file's sha256, from one open regular file."""
    try:
        handle = open_regular(path, "a checkpoint file")
    except InputFileError as exc:
        raise CheckpointNotFoundError(path, exc.reason) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise CorruptCheckpointError(path, "empty file (0 bytes)")
        head = handle.read(_HEAD_BYTES)
        is_zip = head.startswith(_ZIP_MAGIC)
        is_legacy = head[:1] == b"\x80" and head[2 : 2 + len(_LEGACY_MAGIC)] == _LEGACY_MAGIC
        is_tar = head[257:262] == b"ustar"  # torch.save's oldest format
        if not (is_zip or is_legacy or is_tar):
            if head[:1] == b"\x80":
                handle.seek(0)
                names = _pickle_globals(handle.read())
                if names:
                    raise CorruptCheckpointError(
                        path,
                        f"a plain Python pickle holding Python objects ({_names(sorted(set(names)))}) that safe "
                        "loading (weights_only=True) refuses; re-save its state_dict with torch.save",
                    )
                if names is not None:
                    raise CorruptCheckpointError(path, "a plain Python pickle, not a torch.save checkpoint")
            raise CorruptCheckpointError(path, f"not a PyTorch checkpoint (it holds {_sniff(head)})")
        handle.seek(0)
        digest = hashlib.file_digest(handle, "sha256").hexdigest()  # type: ignore[arg-type]
        handle.seek(0)
        return _load_torch_file(path, handle), digest


def _unwrap(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CorruptCheckpointError(path, f"not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise CorruptCheckpointError(path, f"not a state dict of tensors (entries {_names(others)} are not tensors)")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _refuse_backbone_only(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    if any(key.startswith(_DETECTOR_PREFIXES) for key in state_dict):
        return
    for marker, arch in _BACKBONE_ONLY_MARKERS.items():
        if marker in state_dict:
            raise BackboneOnlyCheckpointError(
                path,
                f"holds an ImageNet {arch} backbone only, not a RetinaFace detector "
                "(no fpn/ssh/head weights); pass a trained RetinaFace checkpoint",
            )
    raise StateDictMismatchError(path, f"not a RetinaFace checkpoint (keys such as {_names(sorted(state_dict))})")


def _expected_tensors(variant: Variant) -> dict[str, torch.Tensor]:
    """The variant's state dict on the meta device: names, shapes and dtypes, no memory."""
    import torch

    from retinaface_export.model import build_model

    with torch.device("meta"):
        model = build_model(variant)
    return dict(model.state_dict())


def _expected_keys(variant: Variant) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in _expected_tensors(variant).items()}


def _required(keys: set[str]) -> set[str]:
    return {k for k in keys if not k.endswith(_OPTIONAL_SUFFIX)}


def _infer_variant(path: Path, state_dict: dict[str, torch.Tensor]) -> Variant:
    """The registered variant whose keys and shapes match exactly; else the closest one's differences."""
    found = _required(set(state_dict))
    best: tuple[int, Variant] | None = None
    for name in list_variants():
        variant = get_variant(name)
        expected = _expected_keys(variant)
        if _required(set(expected)) == found and all(state_dict[k].shape == expected[k] for k in found):
            return variant
        overlap = len(_required(set(expected)) & found)
        if best is None or overlap > best[0]:
            best = (overlap, variant)
    assert best is not None  # the registry is never empty
    return best[1]


def _check_against(path: Path, state_dict: dict[str, torch.Tensor], variant: Variant) -> None:
    import torch

    expected = _expected_keys(variant)
    missing = sorted(_required(set(expected)) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise StateDictMismatchError(path, f"does not fit {variant.name}: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k]
    ]
    if wrong:
        raise StateDictMismatchError(path, f"shape mismatch for {variant.name}: {_names(wrong)}")
    dtypes = {name: tensor.dtype for name, tensor in _expected_tensors(variant).items()}
    float_dtypes = tuple(getattr(torch, name) for name in _FLOAT_DTYPES)
    bad = [
        f"{k} is {str(state_dict[k].dtype).removeprefix('torch.')}"
        for k in expected
        if k in state_dict and dtypes[k].is_floating_point and state_dict[k].dtype not in float_dtypes
    ]
    if bad:
        raise StateDictMismatchError(
            path, f"weights must be float32 (or float16/float64), but {_names(bad)}; re-save it in floating point"
        )


def _refuse_non_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    import torch

    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeightsError(path, f"NaN or Inf in {_names(bad)}")


def model_from_state_dict(
    state_dict: dict[str, torch.Tensor], variant: Variant, path: Path | str = "<state dict>"
) -> RetinaFace:
    """Build ``variant`` and load ``state_dict`` into it with ``strict=True`` (after the same checks)."""
    import torch

    from retinaface_export.model import build_model

    path = Path(path)
    _check_against(path, state_dict, variant)
    _refuse_non_finite(path, state_dict)
    model = build_model(variant)
    full = dict(state_dict)
    for key, value in model.state_dict().items():
        if key.endswith(_OPTIONAL_SUFFIX) and key not in full:
            full[key] = torch.zeros_like(value)
    model.load_state_dict(full, strict=True)
    return model.eval()


def load_checkpoint(
    path: str | Path, backbone: str | None = None, anchors: AnchorConfig | None = None
) -> LoadedCheckpoint:
    """Load a RetinaFace checkpoint (biubug6 layout) into a model, strictly.

    Args:
        path: the ``.pth`` file: a plain state dict, or a dict with a ``state_dict`` entry; keys may carry
            DataParallel's ``module.`` prefix (as upstream ``Resnet50_Final.pth`` does).
        backbone: the variant the caller expects; an error when the checkpoint holds another one.
        anchors: anchors the checkpoint was trained with, when they differ from the variant's defaults.

    Returns:
        The model in eval mode, its variant (with ``anchors`` applied) and the file's sha256.

    Raises:
        CheckpointError: a subclass naming the file and the reason.
        UnknownVariantError: ``backbone`` is not registered.
    """
    path = Path(path)
    requested = get_variant(backbone) if backbone else None
    try:
        raw, file_sha256 = _read(path)
    except OSError as exc:  # a read that fails (EIO) once the file is open
        raise CorruptCheckpointError(path, read_error(path, exc).reason) from None
    state_dict = _unwrap(path, raw)
    _refuse_backbone_only(path, state_dict)
    variant = _infer_variant(path, state_dict)
    _check_against(path, state_dict, variant)
    if requested is not None and requested.name != variant.name:
        raise BackboneMismatchError(
            path, f"holds a {variant.name} RetinaFace, but --backbone {requested.name} was asked for"
        )
    if anchors is not None:
        if anchors.anchors_per_location != variant.anchors.anchors_per_location:
            raise UsageError(
                f"--anchors give {anchors.anchors_per_location} anchors per feature-map cell, but the heads of "
                f"{path} predict {variant.anchors.anchors_per_location}"
            )
        variant = variant.with_anchors(anchors)
    model = model_from_state_dict(state_dict, variant, path)
    return LoadedCheckpoint(
        model=model,
        variant=variant,
        path=path.resolve(),
        file_sha256=file_sha256,
        state_dict_sha256=sha256_state_dict(state_dict),
    )
