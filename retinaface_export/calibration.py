"""Photo sets for INT8: calibration photos, and validation photos disjoint from them.

Photos are read, checked, augmented when few, and letterboxed like real inputs. :func:`split_photos` makes
the two sets INT8 quantisation with accuracy control needs: a ``--validation`` folder, or without one a
deterministic hold-out of part of the calibration folder (the photos whose content hashes sort first), so
the accuracy of an INT8 model is judged on photos its calibration never saw.
"""

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
from retinaface_export.safety.safe_paths import read_regular_bytes, require_folder
from retinaface_export.sizes import InputSize

# Fewer images than this get every augmentation below (a 7-photo folder gives 42 samples).
AUGMENT_BELOW = 32
# Smallest photo side accepted: the crops below halve a photo, and a side under the network's coarsest
# stride (32) holds nothing a detector sees.
MIN_SIDE = 32
# Part of a calibration folder held out for validation when no validation folder is given (at least one
# photo, and at least one left for calibration).
HOLDOUT_FRACTION = 0.25


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


def _scaled(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def scale(image: np.ndarray) -> np.ndarray:
        import cv2  # here: the commands' --help must not load OpenCV (tests/test_fast_start.py)

        h, w = image.shape[:2]
        size = (max(MIN_SIDE, round(w * factor)), max(MIN_SIDE, round(h * factor)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    return scale


# name -> transform of the views an INT8 model is finally judged on besides its validation views: neither
# calibration nor accuracy control sees them ("stretch" views are resized to the network size, aspect lost).
HELD_OUT_VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "stretch": lambda image: image,
    "stretch-flip": _flip,
    "scale-50%": _scaled(0.5),
    "scale-75%": _scaled(0.75),
}


@dataclass(frozen=True)
class CalibrationSet:
    """Decoded photos (for calibration or validation) and what identifies them (for the manifest)."""

    folder: Path
    files: tuple[Path, ...]
    images: tuple[np.ndarray, ...]
    # Of the names and bytes of all files, in order.
    sha256: str
    augmentations: tuple[str, ...]
    # Of each file's bytes: what makes two sets disjoint whatever the files are called.
    file_sha256: tuple[str, ...] = ()

    def samples(self, size: InputSize) -> list[np.ndarray]:
        """Network inputs (1×3×H×W, mean subtracted) letterboxed to ``size``, augmentations included.

        Ordered view by view (every photo as it is, then every photo flipped, ...): NNCF reads the first
        samples only for some steps (its full bias correction, the first fifth), which then span every photo.
        """
        return [to_network_input(view) for view in self.views(size)]

    def views(self, size: InputSize) -> list[np.ndarray]:
        """The photos as the network sees them (BGR uint8 H×W×3 letterboxed to ``size``), in ``samples`` order."""
        views = []
        for name in self.augmentations:
            for image in self.images:
                view = np.ascontiguousarray(AUGMENTATIONS[name](image))
                box = Letterbox.fit(view.shape[0], view.shape[1], size.height, size.width)
                views.append(box.apply(view))
        return views

    def held_out_views(self, size: InputSize) -> list[np.ndarray]:
        """Views no INT8 step fits on (see :data:`HELD_OUT_VIEWS`).

        The photos and their mirror images stretched to ``size`` (as OMZ-style clients feed them), and the
        photos at half and three quarters of their scale, letterboxed (smaller faces).
        """
        import cv2  # here: the commands' --help must not load OpenCV (tests/test_fast_start.py)

        views = []
        for image in self.images:
            for name, make in HELD_OUT_VIEWS.items():
                view = np.ascontiguousarray(make(image))
                if name.startswith("stretch"):
                    views.append(cv2.resize(view, (size.width, size.height), interpolation=cv2.INTER_LINEAR))
                else:
                    views.append(Letterbox.fit(view.shape[0], view.shape[1], size.height, size.width).apply(view))
        return views

    def record(self) -> dict[str, object]:
        """What the manifest keeps: folder, file names, image and sample counts, content hash, augmentations."""
        return {
            "folder": str(self.folder),
            "files": [path.name for path in self.files],
            "images": len(self.files),
            "samples_per_size": len(self.files) * len(self.augmentations),
            "sha256": self.sha256,
            "augmentations": list(self.augmentations),
        }


@dataclass(frozen=True)
class PhotoSplit:
    """Calibration and validation photos with no photo (by content) in both."""

    calibration: CalibrationSet
    validation: CalibrationSet
    # True: the validation photos were held out of the calibration folder (no validation folder given).
    held_out: bool

    def record(self) -> dict[str, object]:
        """Both sets and how the validation set was chosen (for the manifest and the artifact)."""
        if self.held_out:
            how = (
                f"held out of the calibration folder: {len(self.validation.files)} of "
                f"{len(self.validation.files) + len(self.calibration.files)} photos, those whose content "
                "sha256 sorts first"
            )
        else:
            how = "validation folder"
        return {
            "calibration": self.calibration.record(),
            "validation": self.validation.record() | {"chosen": how, "held_out": self.held_out},
        }


def _image_files(folder: Path, role: str) -> tuple[Path, ...]:
    require_folder(folder, f"{role} folder")
    files = tuple(images_in_folder(folder))
    if not files:
        raise FileError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the {role} folder")
    return files


def _read_photo(path: Path, data: bytes) -> np.ndarray:
    image = decode_image(path, data)
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise FileError(
            path, f"{width}x{height} image is too small to calibrate with (each side needs {MIN_SIDE} px or more)"
        )
    return image


def _read_photos(files: tuple[Path, ...]) -> dict[Path, tuple[bytes, np.ndarray]]:
    """Each file's bytes and image; the first that is not a usable photo (empty, text, too small) is named."""
    photos = {}
    for path in files:
        data = read_regular_bytes(path, "an image")
        photos[path] = (data, _read_photo(path, data))
    return photos


def _photo_set(
    folder: Path,
    files: tuple[Path, ...],
    augment: bool | None,
    photos: dict[Path, tuple[bytes, np.ndarray]] | None = None,
) -> CalibrationSet:
    """``files`` read and hashed; ``augment=None`` augments when there are fewer than AUGMENT_BELOW.

    ``photos`` holds files already read (:func:`_read_photos`); the others are read here.
    """
    photos = photos if photos is not None else _read_photos(files)
    digest = hashlib.sha256()
    images, hashes = [], []
    for path in files:
        data, image = photos[path]
        images.append(image)
        digest.update(path.name.encode() + b"\0" + data)
        hashes.append(hashlib.sha256(data).hexdigest())
    if augment is None:
        augment = len(files) < AUGMENT_BELOW
    augmentations = tuple(AUGMENTATIONS) if augment else ("original",)
    return CalibrationSet(folder.resolve(), files, tuple(images), digest.hexdigest(), augmentations, tuple(hashes))


def load_calibration_set(folder: str | Path) -> CalibrationSet:
    """Read every image in ``folder`` (not recursive).

    Raises:
        FileError: the folder is missing or holds no images; an image cannot be read or is smaller than
            MIN_SIDE pixels on a side (named).
    """
    folder = Path(folder)
    return _photo_set(folder, _image_files(folder, "calibration"), augment=None)


def load_validation_set(folder: str | Path) -> CalibrationSet:
    """Every image in ``folder`` (not recursive), augmented as calibration sets are, to judge detections on.

    Raises:
        FileError: as :func:`load_calibration_set`, naming the folder as the validation folder.
    """
    folder = Path(folder)
    return _photo_set(folder, _image_files(folder, "validation"), augment=None)


def split_photos(calibration: str | Path, validation: str | Path | None = None) -> PhotoSplit:
    """Calibration photos and validation photos that share none (compared by content, not name).

    Without ``validation``, HOLDOUT_FRACTION of the calibration folder's distinct photos (at least one) is
    held out for validation: those whose content sha256 sorts first, so the choice depends on the photos
    only; files with the same content stay together.
    Both sets are augmented (AUGMENTATIONS) when small; augmented views of a validation photo stay in the
    validation set.

    Raises:
        FileError: a folder is missing or holds no images; an image cannot be read or is too small; the
            calibration folder has a single photo and no validation folder is given; a validation photo
            has the content of a calibration photo.
    """
    calibration = Path(calibration)
    files = _image_files(calibration, "calibration")
    if validation is None:
        # every file is read as a photo before any is counted: an empty or text .jpg is named, not counted
        photos = _read_photos(files)
        content = {path: hashlib.sha256(photos[path][0]).hexdigest() for path in files}
        distinct = sorted(set(content.values()))
        if len(distinct) < 2:
            raise FileError(
                calibration,
                "holds one photo: at least two different ones are needed to hold one out for validation "
                "(or give a validation folder)",
            )
        count = min(len(distinct) - 1, max(1, round(len(distinct) * HOLDOUT_FRACTION)))
        # copies of one photo go together: no content is in both sets
        held = {path for path in files if content[path] in distinct[:count]}
        return PhotoSplit(
            calibration=_photo_set(calibration, tuple(p for p in files if p not in held), augment=None, photos=photos),
            validation=_photo_set(calibration, tuple(p for p in files if p in held), augment=None, photos=photos),
            held_out=True,
        )
    validation = Path(validation)
    calibration_set = _photo_set(calibration, files, augment=None)
    validation_set = _photo_set(validation, _image_files(validation, "validation"), augment=None)
    in_calibration = dict(zip(calibration_set.file_sha256, calibration_set.files, strict=True))
    for path, digest in zip(validation_set.files, validation_set.file_sha256, strict=True):
        if digest in in_calibration:
            raise FileError(
                path,
                f"same content as {in_calibration[digest]}: validation photos must not be used for calibration",
            )
    return PhotoSplit(calibration_set, validation_set, held_out=False)
