"""Detection over any number of images as a stream: decoding overlaps inference, memory stays flat.

Images are read, decoded and made ready for the network (letterboxed, the input format applied) in a pool of
threads while the runtimes work on the batches before (OpenCV and the runtimes release the GIL). Several
workers, each with a runtime of its own, run batches side by side: a small detector gains more from that than
from more threads inside one runtime. At most a bounded number of images is in flight, so memory does not grow
with the number of images. Results come out in input order, one per image, and nothing is kept once yielded.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
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


# an image read and prepared: its path, the decoded image (kept for drawing only) and the network's input
_Loaded = tuple[Path, np.ndarray | None, PreparedImage]


def _load(detector: Detector, path: Path, keep_image: bool) -> tuple[np.ndarray | None, PreparedImage] | FileError:
    try:
        image = read_image(path)
    except FileError as exc:
        return exc
    return (image if keep_image else None), detector.prepare(image)


# Workers the local engine runs by default: one per CPU, at most this many (each holds its own runtime session
# and its activations: memory grows with them).
MAX_DEFAULT_WORKERS = 4
# The most local workers a command may ask for (each loads the model), unless the environment allows more.
MAX_WORKERS = 64
MAX_WORKERS_ENV = "RETINAFACE_EXPORT_MAX_WORKERS"


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(side_by_side: bool = True) -> int:
    """Runtimes the local engine runs side by side by default: one per CPU, at most ``MAX_DEFAULT_WORKERS``.

    Small detectors scale better across runtimes than inside one: measured on 2 cores (AMD EPYC, AVX-512),
    mobilenet0.25 at 640 ran 23 ms on one ONNX Runtime thread and 19.5 ms on two, so two one-thread runtimes
    side by side ran 1.7x the images per second of one image after another on two threads. A runtime whose
    runs from several threads take turns (``side_by_side`` False: it holds the GIL) gets one worker.
    """
    return min(available_cpus(), MAX_DEFAULT_WORKERS) if side_by_side else 1


def runtime_threads(workers: int = 1) -> int:
    """The threads each of ``workers`` runtimes gets by default: the CPUs available shared out among them."""
    return max(1, available_cpus() // workers)


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
    detectors: Sequence[Detector],
    paths: Iterable[Path],
    batch_size: int = 1,
    decode_threads: int = 2,
    keep_images: bool = False,
) -> Iterator[ImageResult]:
    """Faces in each image of ``paths``, one result per image, in input order, as each batch completes.

    Args:
        detectors: one per worker, each with a runtime of its own (a runtime session is not shared between
            threads); each batch goes to whichever is free, so as many batches run side by side.
        paths: image files, consumed lazily.
        batch_size: images per network run (see :func:`batch_size_for`); same-shape inputs are batched.
        decode_threads: threads reading, decoding and letterboxing the images ahead of the runtimes.
        keep_images: attach each decoded image to its result (for drawing; costs memory per result only).

    Unreadable images give a result with ``error`` set, and the stream goes on. At most
    ``max(2·batch, batch + 2·decode_threads)`` images are being decoded and two batches per worker are running
    or waiting for one: memory is bounded whatever the number of images.
    """
    if not detectors:
        raise ValueError("detect_stream needs at least one detector")
    free: SimpleQueue[Detector] = SimpleQueue()
    for detector in detectors:
        free.put(detector)

    def run(items: list[PreparedImage]) -> list[list[Face]]:  # in a worker thread, on whichever runtime is free
        detector = free.get()
        try:
            return detector.detect_prepared(items)
        finally:
            free.put(detector)

    ahead = max(2 * batch_size, batch_size + 2 * decode_threads)  # images being decoded: the bound on memory
    decoding: deque[tuple[Path, Future]] = deque()
    running: deque[tuple[list[_Loaded], Future | None, list[ImageResult]]] = deque()  # in input order
    source = iter(paths)
    decode = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
    workers = ThreadPoolExecutor(max_workers=len(detectors), thread_name_prefix="runtime")
    with decode, workers:
        try:
            exhausted = False
            while True:
                while len(running) < 2 * len(detectors):
                    while not exhausted and len(decoding) < ahead:
                        path = next(source, None)
                        if path is None:
                            exhausted = True
                        else:
                            decoding.append((path, decode.submit(_load, detectors[0], path, keep_images)))
                    if not decoding:
                        break
                    batch, failed = _gather(decoding, batch_size)
                    future = workers.submit(run, [item for _, _, item in batch]) if batch else None
                    running.append((batch, future, failed))
                if not running:
                    return
                batch, future, failed = running.popleft()
                if future is not None:
                    for (path, image, item), faces in zip(batch, future.result(), strict=True):
                        yield ImageResult(str(path), item.height, item.width, tuple(faces), image=image)
                yield from failed
        finally:
            for _, pending in decoding:
                pending.cancel()
            for _, pending, _ in running:
                if pending is not None:
                    pending.cancel()


def _gather(decoding: deque[tuple[Path, Future]], batch_size: int) -> tuple[list[_Loaded], list[ImageResult]]:
    """The next batch of decoded images, in input order, and the failures that end it.

    A failure ends the batch gathered so far, so results keep the input order: the batch's images, then it.
    """
    batch: list[_Loaded] = []
    failed: list[ImageResult] = []
    while decoding and len(batch) < batch_size:
        path, future = decoding.popleft()
        loaded = future.result()
        if isinstance(loaded, FileError):
            failed.append(ImageResult(str(path), error=loaded.reason))
            break
        batch.append((path, *loaded))
    return batch, failed
