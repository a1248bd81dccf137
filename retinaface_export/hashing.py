"""Content digests: of files (provenance, manifests) and of state dicts (checkpoint identity)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of a state dict's names, dtypes, shapes and values, independent of how it was saved.

    Identifies a checkpoint whose file bytes differ (``module.`` prefixes, legacy vs zip format) or that
    was never a file (the synthetic model).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
