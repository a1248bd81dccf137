"""Shared fixtures: paths into ../shared (skipped with a reason when absent) and real-photo inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_export.preprocess import to_network_input

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
def crowd_photo() -> np.ndarray:
    image = cv2.imread(str(require(CROWD_PHOTO)), cv2.IMREAD_COLOR)
    assert image is not None, f"OpenCV could not read {CROWD_PHOTO}"
    return image


def photo_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A real photo resized to the network size, as float32 1×3×H×W minus the mean."""
    return to_network_input(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
