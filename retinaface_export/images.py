"""Reading images from disk as BGR uint8 arrays, with errors that name the file.

Only regular files are read (a FIFO named ``x.jpg`` is refused, not waited on), and an image's size is
read from its header (``imagesize``, no decoding) before OpenCV decodes it, so a 20000×20000 photo is
refused before it costs 1.2 GB to decode and more to run. A read that fails (EIO) names the file. The
images of a folder are those inside it: a symbolic link among them that leads out of it is refused.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import imagesize
import numpy as np

from retinaface_export.errors import FileError, ImageTooLargeError, InputFileError
from retinaface_export.safety.safe_paths import open_regular, read_error, resolve_inside
from retinaface_export.sizes import env_limit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Largest image, in pixels: 50 MP holds every phone and DSLR photo; a 20000×20000 (400 MP) one is refused.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_PIXELS_ENV = "RETINAFACE_EXPORT_MAX_IMAGE_PIXELS"


def image_size_from_header(path: Path, data: bytes | BinaryIO) -> tuple[int, int]:
    """``(height, width)`` from an encoded image's header (bytes or an open file), without decoding it.

    Raises:
        FileError: the header is not one imagesize knows (JPEG, PNG, BMP, WebP, TIFF, GIF, PNM, ...).
        ImageTooLargeError: more pixels than ``RETINAFACE_EXPORT_MAX_IMAGE_PIXELS`` (default 50 MP).
    """
    width, height = imagesize.get(io.BytesIO(data) if isinstance(data, bytes) else data)
    if width <= 0 or height <= 0:
        raise FileError(path, "cannot be read as an image")
    limit = env_limit(MAX_IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS)
    if width * height > limit:
        raise ImageTooLargeError(
            path,
            f"{width}x{height} image ({width * height / 1e6:.1f} MP) is above the limit of {limit / 1e6:g} MP "
            f"({limit} pixels); set {MAX_IMAGE_PIXELS_ENV}=N to allow larger images",
        )
    return height, width


def decode_image(path: str | Path, data: bytes) -> np.ndarray:
    """Decode an image file's bytes to BGR uint8 H×W×3, after checking its header (see :func:`read_image`).

    Raises:
        FileError: empty, not an image, or not decodable.
        ImageTooLargeError: more pixels than the limit.
    """
    path = Path(path)
    if not data:
        raise FileError(path, "empty file (0 bytes), not an image")
    image_size_from_header(path, data)
    import cv2  # here, not at the top: OpenCV costs ~0.1 s to import

    # imdecode on the bytes: no OpenCV warnings on stderr, and any path name works
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FileError(path, "cannot be read as an image")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 H×W×3 image from a regular file.

    Raises:
        FileError: missing, a folder, not a regular file, empty, or not decodable as an image.
        ImageTooLargeError: the header declares more pixels than ``RETINAFACE_EXPORT_MAX_IMAGE_PIXELS``.
    """
    with open_regular(path, "an image") as handle:
        try:
            if os.fstat(handle.fileno()).st_size:
                image_size_from_header(Path(path), handle)  # before reading a file that may be huge
                handle.seek(0)
            data = handle.read()
        except OSError as exc:
            raise read_error(path, exc) from None
    return decode_image(path, data)


def images_in_folder(folder: Path) -> list[Path]:
    """The image files (by suffix, not recursive) directly in ``folder``, sorted by name.

    Raises:
        InputFileError: the folder cannot be listed.
        OutsideFolderError: an image name there is a symbolic link leading outside ``folder``.
    """
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise InputFileError(folder, f"cannot be listed ({exc.strerror or type(exc).__name__})") from None
    return [path for path in (resolve_inside(folder, name) for name in names) if path.is_file()]
