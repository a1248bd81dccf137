"""The one checkpoint loader: a file in the biubug6/Pytorch_Retinaface layout to a ready RetinaFace.

Like timm's ``clean_state_dict`` + ``checkpoint_filter_fn``: ``torch.load(weights_only=True)`` with no
fallback, unwrap ``{'state_dict': ...}``, strip ``module.``, infer the variant from keys and shapes,
refuse non-finite weights, then ``load_state_dict(strict=True)``. Every failure is a typed
:class:`~retinaface_export.errors.CheckpointError` whose message names the file and the reason.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinaface_export.anchors import AnchorConfig
from retinaface_export.errors import (
    BackboneMismatchError,
    BackboneOnlyCheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NonFiniteWeightsError,
    StateDictMismatchError,
)
from retinaface_export.hashing import sha256_file, sha256_state_dict
from retinaface_export.model import RetinaFace, build_model
from retinaface_export.variants import Variant, get_variant, list_variants

# Keys a BatchNorm may lack in checkpoints saved by old PyTorch; filled with zeros (no effect in eval).
_OPTIONAL_SUFFIX = ".num_batches_tracked"
# How many key names an error message lists before "..."
_NAMES_SHOWN = 4
# Top-level prefixes of a RetinaFace state dict (after `module.` is stripped).
_DETECTOR_PREFIXES = ("body.", "fpn.", "ssh1.", "ssh2.", "ssh3.", "ClassHead.", "BboxHead.", "LandmarkHead.")
# Phrases of torch.load's RuntimeErrors for a file cut short (zip archives and the legacy format).
_TRUNCATION_MARKERS = ("zip archive", "central directory", "file not found", "unexpected EOF", "corrupted")
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


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file")
    if path.is_dir():
        raise CheckpointNotFoundError(path, "is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notices about the file's origin
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in first or "weights_only" in str(exc):
            reason = "holds Python objects that safe loading (weights_only=True) refuses; re-save its state_dict"
        else:
            reason = f"not a PyTorch checkpoint ({first})"
        raise CorruptCheckpointError(path, reason) from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CorruptCheckpointError(path, "truncated or corrupt checkpoint (unexpected end of data)") from exc
    except RuntimeError as exc:
        text = str(exc)
        if any(marker in text for marker in _TRUNCATION_MARKERS):
            raise CorruptCheckpointError(path, "truncated or corrupt checkpoint (data ends early)") from exc
        raise CorruptCheckpointError(path, f"not a PyTorch checkpoint ({text.splitlines()[0]})") from exc
    except Exception as exc:  # torch.load parses untrusted bytes: garbage fails in any type (IndexError, ...)
        raise CorruptCheckpointError(path, f"not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _unwrap(path: Path, obj: Any) -> dict[str, torch.Tensor]:
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


def _expected_keys(variant: Variant) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = build_model(variant)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


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


def _refuse_non_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeightsError(path, f"NaN or Inf in {_names(bad)}")


def model_from_state_dict(
    state_dict: dict[str, torch.Tensor], variant: Variant, path: Path | str = "<state dict>"
) -> RetinaFace:
    """Build ``variant`` and load ``state_dict`` into it with ``strict=True`` (after the same checks)."""
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
    state_dict = _unwrap(path, _read(path))
    _refuse_backbone_only(path, state_dict)
    variant = _infer_variant(path, state_dict)
    _check_against(path, state_dict, variant)
    if requested is not None and requested.name != variant.name:
        raise BackboneMismatchError(
            path, f"holds a {variant.name} RetinaFace, but --backbone {requested.name} was asked for"
        )
    if anchors is not None:
        variant = variant.with_anchors(anchors)
    model = model_from_state_dict(state_dict, variant, path)
    return LoadedCheckpoint(
        model=model,
        variant=variant,
        path=path.resolve(),
        file_sha256=sha256_file(path),
        state_dict_sha256=sha256_state_dict(state_dict),
    )
