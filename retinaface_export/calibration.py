"""Calibration images for INT8 quantisation: read, augmented when few, letterboxed like real inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.errors import FileError
from retinaface_export.images import IMAGE_SUFFIXES, decode_image, images_in_folder
from retinaface_export.preprocess import to_network_input
from retinaface_export.safe_paths import read_regular_bytes
from retinaface_export.sizes import InputSize

# Fewer images than this get every augmentation below (a 7-photo folder gives 42 samples).
AUGMENT_BELOW = 32
# Smallest image side: the half-size crops below must keep a few pixels (a 1×1 image would crop to nothing).
MIN_SIDE = 32


def _crop(top: float, left: float, bottom: float, right: float) -> Callable[[np.ndarray], np.ndarray]:
    def crop(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return image[round(h * top) : round(h * bottom), round(w * left) : round(w * right)]

    return crop


def _flip(image: np.ndarray) -> np.ndarray:
    return image[:, ::-1]


# name -> transform; crops zoom in so that small faces reach the sizes larger anchors see.
AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda image: image,
    "flip": _flip,
    "centre-60%": _crop(0.2, 0.2, 0.8, 0.8),
    "centre-60%-flip": lambda image: _flip(_crop(0.2, 0.2, 0.8, 0.8)(image)),
    "top-left-50%": _crop(0.0, 0.0, 0.5, 0.5),
    "bottom-right-50%": _crop(0.5, 0.5, 1.0, 1.0),
}


@dataclass(frozen=True)
class CalibrationSet:
    """Decoded calibration images and what identifies them (for the manifest)."""

    folder: Path
    files: tuple[Path, ...]
    images: tuple[np.ndarray, ...]
    sha256: str
    augmentations: tuple[str, ...]

    def samples(self, size: InputSize) -> list[np.ndarray]:
        """Network inputs (1×3×H×W, mean subtracted) letterboxed to ``size``, augmentations included."""
        samples = []
        for image in self.images:
            for name in self.augmentations:
                view = np.ascontiguousarray(AUGMENTATIONS[name](image))
                box = Letterbox.fit(view.shape[0], view.shape[1], size.height, size.width)
                samples.append(to_network_input(box.apply(view)))
        return samples

    def record(self) -> dict[str, object]:
        """What the manifest keeps: folder, image count, content hash, augmentations."""
        return {
            "folder": str(self.folder),
            "images": len(self.files),
            "sha256": self.sha256,
            "augmentations": list(self.augmentations),
        }


def load_calibration_set(folder: str | Path) -> CalibrationSet:
    """Read every image in ``folder`` (not recursive).

    Raises:
        FileError: the folder is missing or holds no images; an image cannot be read, is not a regular
            file, or is smaller than ``MIN_SIDE`` on a side (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileError(folder, "calibration folder does not exist")
    files = tuple(images_in_folder(folder))
    if not files:
        raise FileError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration folder")
    digest = hashlib.sha256()
    images = []
    for path in files:
        data = read_regular_bytes(path, "an image")
        image = decode_image(path, data)
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise FileError(
                path, f"{width}x{height} image is too small to calibrate with (each side needs {MIN_SIDE} px or more)"
            )
        images.append(image)
        digest.update(path.name.encode() + b"\0" + data)
    augmentations = tuple(AUGMENTATIONS) if len(files) < AUGMENT_BELOW else ("original",)
    return CalibrationSet(folder.resolve(), files, tuple(images), digest.hexdigest(), augmentations)
