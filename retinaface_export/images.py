"""Reading images from disk as BGR uint8 arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from retinaface_export.errors import FileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 H×W×3 image.

    Raises:
        FileError: missing, a folder, or not decodable as an image.
    """
    path = Path(path)
    if not path.exists():
        raise FileError(path, "no such file")
    if path.is_dir():
        raise FileError(path, "is a directory, not an image")
    # imdecode on the bytes: no OpenCV warnings on stderr, and any path name works
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FileError(path, "cannot be read as an image")
    return image
