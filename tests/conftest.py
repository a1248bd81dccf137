"""Shared fixtures: paths into ../shared (skipped with a reason when absent) and real-photo inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_export.cli.entry import no_telemetry
from retinaface_export.preprocess import to_network_input

# Tests that import OpenVINO in this process, or run commands in subprocesses, send no telemetry either
# (tests/test_no_network.py checks the commands with these variables removed).
no_telemetry()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
SMALL_ANCHORS_WEIGHTS = SHARED / "weights" / "mobilenet0.25_small_anchors.pth"
BACKBONE_ONLY = SHARED / "weights" / "mobilenetV1X0.25_pretrain.tar"
CROWD_PHOTO = SHARED / "images" / "crowd_selfie.jpg"


def require(path: Path) -> Path:
    """Skip the test, saying which file of ../shared it needs, when that file is absent."""
    if not path.exists():
        pytest.skip(f"needs {path} (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def real_weights() -> Path:
    return require(REAL_WEIGHTS)


@pytest.fixture(scope="session")
def onnx_320(tmp_path_factory, real_weights) -> Path:
    """The trained mobilenet0.25 as ONNX at 320x320, exported once (the Ray tests' artifact)."""
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import InputSize

    out = tmp_path_factory.mktemp("mobilenet-onnx-320")
    options = ExportOptions(sizes=(InputSize(320, 320),), formats=("onnx",))
    export_checkpoint(load_checkpoint(real_weights), options, out)
    return out / "retinaface_mobilenet0.25_320x320.onnx"


@pytest.fixture(scope="session")
def crowd_photo() -> np.ndarray:
    image = cv2.imread(str(require(CROWD_PHOTO)), cv2.IMREAD_COLOR)
    assert image is not None, f"OpenCV could not read {CROWD_PHOTO}"
    return image


def photo_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A real photo resized to the network size, as float32 1×3×H×W minus the mean."""
    return to_network_input(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))


def checkpoint_for(variant: str):
    """mobilenet0.25: the real trained weights from ../shared; resnet50: the synthetic model (no public weights)."""
    from retinaface_export.checkpoint import load_checkpoint
    from retinaface_export.synthetic import synthetic_checkpoint
    from retinaface_export.variants import get_variant

    if variant == "mobilenet0.25":
        return load_checkpoint(require(REAL_WEIGHTS))
    return synthetic_checkpoint(get_variant(variant))


@pytest.fixture(scope="session", params=["mobilenet0.25", "resnet50"])
def standard_export(request, tmp_path_factory):
    """(checkpoint, folder): TorchScript and ONNX of each backbone at every standard size, exported once."""
    from retinaface_export.pipeline.export import ExportOptions, export_checkpoint
    from retinaface_export.sizes import STANDARD_SIZES, InputSize

    checkpoint = checkpoint_for(request.param)
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    export_checkpoint(checkpoint, ExportOptions(sizes=tuple(InputSize(s, s) for s in STANDARD_SIZES)), out)
    return checkpoint, out
