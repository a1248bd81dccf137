"""Bad checkpoints, each a builder writing one into a folder, with what the error must say.

Shared by the library tests (typed errors) and the CLI tests (message, exit code, nothing written).
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from conftest import BACKBONE_ONLY, REAL_WEIGHTS, require
from retinaface_export import errors
from retinaface_export.synthetic import synthetic_state_dict
from retinaface_export.variants import get_variant


class NotAllowedInCheckpoints:
    """A Python object that safe loading must refuse to unpickle."""


def _mnet() -> dict[str, torch.Tensor]:
    return synthetic_state_dict(get_variant("mobilenet0.25"))


def _save(folder: Path, obj, name: str = "ckpt.pth") -> Path:
    path = folder / name
    torch.save(obj, path)
    return path


def _missing(folder: Path) -> Path:
    return folder / "nope.pth"


def _directory(folder: Path) -> Path:
    (folder / "weights_dir").mkdir()
    return folder / "weights_dir"


def _empty(folder: Path) -> Path:
    (folder / "empty.pth").write_bytes(b"")
    return folder / "empty.pth"


def _truncated_zip(folder: Path) -> Path:
    full = _save(folder, _mnet(), "full.pth")
    data = full.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    return folder / "truncated.pth"


def _truncated_legacy(folder: Path) -> Path:
    data = require(REAL_WEIGHTS).read_bytes()  # the real file is in the legacy (non-zip) format
    (folder / "truncated_legacy.pth").write_bytes(data[: len(data) // 3])
    return folder / "truncated_legacy.pth"


def _text(folder: Path) -> Path:
    (folder / "notes.pth").write_text("these are not weights\n")
    return folder / "notes.pth"


def _python_object(folder: Path) -> Path:
    path = folder / "object.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": NotAllowedInCheckpoints()}, handle)
    return path


class _Payload:
    """Pickles as a call of ``os.getcwd`` (harmless): the shape of a pickle payload."""

    def __reduce__(self):
        return (os.getcwd, ())


def _payload_reduce(folder: Path) -> Path:
    return _save(folder, {"state_dict": _Payload()}, "payload.pth")


def _payload_stack_global(folder: Path) -> Path:
    """A torch.save zip whose data.pkl is a protocol-4 pickle (STACK_GLOBAL) calling ``os.getcwd``."""
    source = _save(folder, _mnet(), "source.pth")
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(folder / "stack_global.pth", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, pickle.dumps(_Payload(), protocol=4) if info.filename.endswith("/data.pkl") else data)
    source.unlink()
    return folder / "stack_global.pth"


def _list_of_tensors(folder: Path) -> Path:
    return _save(folder, [torch.zeros(3)])


def _backbone_only(folder: Path) -> Path:
    return shutil.copy(require(BACKBONE_ONLY), folder / "mobilenetV1X0.25_pretrain.tar")


def _missing_keys(folder: Path) -> Path:
    state = _mnet()
    del state["LandmarkHead.2.conv1x1.weight"]
    return _save(folder, state)


def _unexpected_keys(folder: Path) -> Path:
    state = _mnet()
    state["extra_head.weight"] = torch.zeros(2)
    return _save(folder, state)


def _wrong_shape(folder: Path) -> Path:
    state = _mnet()
    state["ClassHead.0.conv1x1.weight"] = torch.zeros(6, 64, 1, 1)
    return _save(folder, state)


def _nan(folder: Path) -> Path:
    state = _mnet()
    state["fpn.merge1.0.weight"][0, 0, 0, 0] = math.nan
    state["ssh2.conv3X3.1.running_var"][3] = math.inf
    return _save(folder, state)


def _resnet_asked_for(folder: Path) -> Path:
    return _save(folder, _mnet())


@dataclass(frozen=True)
class BadCheckpoint:
    name: str
    build: Callable[[Path], Path]
    error: type[errors.CheckpointError]
    says: str
    extra_args: tuple[str, ...] = ()


BAD_CHECKPOINTS = [
    BadCheckpoint("missing", _missing, errors.CheckpointNotFoundError, "no such file"),
    BadCheckpoint("directory", _directory, errors.CheckpointNotFoundError, "is a directory"),
    BadCheckpoint("empty", _empty, errors.CorruptCheckpointError, "empty file"),
    BadCheckpoint("truncated-zip", _truncated_zip, errors.CorruptCheckpointError, "truncated or corrupt"),
    BadCheckpoint("truncated-legacy", _truncated_legacy, errors.CorruptCheckpointError, "truncated or corrupt"),
    BadCheckpoint("text", _text, errors.CorruptCheckpointError, "not a PyTorch checkpoint"),
    BadCheckpoint("python-object", _python_object, errors.CorruptCheckpointError, "weights_only=True"),
    BadCheckpoint(
        "pickle-payload",
        _payload_reduce,
        errors.CorruptCheckpointError,
        f"holds Python objects ({os.getcwd.__module__}.getcwd)",
    ),
    BadCheckpoint(
        "pickle-payload-stack-global",
        _payload_stack_global,
        errors.CorruptCheckpointError,
        f"holds Python objects ({os.getcwd.__module__}.getcwd)",
    ),
    BadCheckpoint("not-a-dict", _list_of_tensors, errors.CorruptCheckpointError, "not a state dict"),
    BadCheckpoint(
        "backbone-only",
        _backbone_only,
        errors.BackboneOnlyCheckpointError,
        "holds an ImageNet MobileNetV1 backbone only",
    ),
    BadCheckpoint(
        "missing-keys", _missing_keys, errors.StateDictMismatchError, "missing keys LandmarkHead.2.conv1x1.weight"
    ),
    BadCheckpoint(
        "unexpected-keys", _unexpected_keys, errors.StateDictMismatchError, "unexpected keys extra_head.weight"
    ),
    BadCheckpoint(
        "shape-mismatch",
        _wrong_shape,
        errors.StateDictMismatchError,
        "ClassHead.0.conv1x1.weight (6, 64, 1, 1) vs (4, 64, 1, 1)",
    ),
    BadCheckpoint(
        "non-finite",
        _nan,
        errors.NonFiniteWeightsError,
        "NaN or Inf in fpn.merge1.0.weight, ssh2.conv3X3.1.running_var",
    ),
    BadCheckpoint(
        "backbone-mismatch",
        _resnet_asked_for,
        errors.BackboneMismatchError,
        "holds a mobilenet0.25 RetinaFace, but --backbone resnet50",
        ("--backbone", "resnet50"),
    ),
]


def wrap_with_module_prefix(state: dict[str, torch.Tensor]) -> dict:
    """The layout of upstream checkpoints saved from DataParallel: ``{'state_dict': {'module.<key>': ...}}``."""
    return {"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()), "epoch": 100}
