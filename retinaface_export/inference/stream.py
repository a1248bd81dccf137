"""Detection over any number of images as a stream: decoding overlaps inference, memory stays flat.

Images are read, decoded and made ready for the network (letterboxed, the input format applied) in a pool of
threads while the runtime works on the batch before (OpenCV and the runtimes release the GIL); at most a
bounded number of images is in flight, so memory does not grow with the number of images. Results come
out in input order, one per image, and nothing is kept once it is yielded.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinaface_export.detection.faces import Face
from retinaface_export.errors import FileError, InputFileError
from retinaface_export.images import IMAGE_SUFFIXES, read_image
from retinaface_export.inference.detector import Detector, PreparedImage
from retinaface_export.safety.safe_paths import resolve_inside


@dataclass(frozen=True)
class ImageResult:
    """What one image gave: its faces, or the reason it could not be read."""

    path: str
    height: int | None = None
    width: int | None = None
    faces: tuple[Face, ...] = ()
    # FileError's reason when the image could not be read (then no size and no faces)
    error: str | None = None
    # the decoded image, only when the caller asked to keep it (drawing)
    image: np.ndarray | None = None

    def record(self) -> dict[str, Any]:
        """The JSON line: ``{"image", "width", "height", "faces"}``, or ``{"image", "error"}``."""
        if self.error is not None:
            return {"image": self.path, "error": self.error}
        faces = [face.to_dict() for face in self.faces]
        return {"image": self.path, "width": self.width, "height": self.height, "faces": faces}


def iter_images(arguments: Iterable[Path], empty: list[Path] | None = None) -> Iterator[Path]:
    """The images named: files as given, a folder's image files (by suffix, not recursive) as found.

    Folders are read lazily, in the order the file system lists them, so a folder of millions of images
    costs no more memory than one of ten. Folders without images are appended to ``empty``. As with
    :func:`~retinaface_export.images.images_in_folder`, a folder's images are those inside it.

    Raises:
        InputFileError: a folder cannot be listed.
        OutsideFolderError: an image name in a folder is a symbolic link leading outside it.
    """
    for argument in arguments:
        if not argument.is_dir():
            yield argument
            continue
        found = False
        try:
            with os.scandir(argument) as entries:
                for entry in entries:
                    if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                        continue
                    path = resolve_inside(argument, entry.name) if entry.is_symlink() else argument / entry.name
                    if entry.is_file():
                        found = True
                        yield path
        except OSError as exc:
            raise InputFileError(argument, f"cannot be listed ({exc.strerror or type(exc).__name__})") from None
        if not found and empty is not None:
            empty.append(argument)


def _load(detector: Detector, path: Path, keep_image: bool) -> tuple[np.ndarray | None, PreparedImage] | FileError:
    try:
        image = read_image(path)
    except FileError as exc:
        return exc
    return (image if keep_image else None), detector.prepare(image)


def runtime_threads() -> int:
    """The runtime threads that leave one CPU of this process's for decoding: the CPUs available less one.

    A runtime left to its default takes every core and, with the decoding threads beside it, oversubscribes
    them (ONNX Runtime's spinning workers then cost more than they bring: measured on 2 busy cores, one
    runtime thread with decoding beside it ran 2x the images per second of the default).
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, available - 1)


def batch_size_for(detector: Detector, requested: int | None) -> int:
    """The batch the stream gathers: the artifact's fixed batch, else ``requested`` (1 when None).

    Raises:
        UsageError: ``requested`` differs from the fixed batch the artifact was exported with.
    """
    from retinaface_export.errors import UsageError

    fixed = detector.backend.batch
    if fixed is None:
        return requested or 1
    if requested is not None and requested != fixed:
        raise UsageError(
            f"--batch-size {requested}: {detector.backend.source} takes batches of exactly {fixed} "
            f"(exported with --batch {fixed}); use --batch-size {fixed}, or an artifact exported with --dynamic "
            "or --batch N"
        )
    return fixed


def detect_stream(
    detector: Detector,
    paths: Iterable[Path],
    batch_size: int = 1,
    decode_threads: int = 2,
    keep_images: bool = False,
) -> Iterator[ImageResult]:
    """Faces in each image of ``paths``, one result per image, in input order, as each batch completes.

    Args:
        detector: the model; its runtime runs in the calling thread.
        paths: image files, consumed lazily.
        batch_size: images per network run (see :func:`batch_size_for`); same-shape inputs are batched.
        decode_threads: threads reading, decoding and letterboxing the images ahead of the runtime.
        keep_images: attach each decoded image to its result (for drawing; costs memory per result only).

    Unreadable images give a result with ``error`` set, and the stream goes on.
    """
    ahead = max(2 * batch_size, batch_size + 2 * decode_threads)  # images in flight: the bound on memory
    pending: deque[tuple[Path, Future]] = deque()
    source = iter(paths)
    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode") as pool:
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead:
                    path = next(source, None)
                    if path is None:
                        exhausted = True
                    else:
                        pending.append((path, pool.submit(_load, detector, path, keep_images)))
                if not pending:
                    return
                batch: list[tuple[Path, np.ndarray | None, PreparedImage]] = []
                failed: list[ImageResult] = []
                while pending and len(batch) < batch_size:
                    path, future = pending.popleft()
                    loaded = future.result()
                    if isinstance(loaded, FileError):
                        failed.append(ImageResult(str(path), error=loaded.reason))
                    else:
                        batch.append((path, *loaded))
                    if failed:  # keep the input order: a failure ends the batch gathered so far
                        break
                if batch:
                    found = detector.detect_prepared([item for _, _, item in batch])
                    for (path, image, item), faces in zip(batch, found, strict=True):
                        yield ImageResult(str(path), item.height, item.width, tuple(faces), image=image)
                yield from failed
        finally:
            for _, future in pending:
                future.cancel()
