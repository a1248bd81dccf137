"""The Detector: images in, faces (box, score, five landmarks) out, in original-image pixels."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.checkpoint import load_checkpoint
from retinaface_export.detection.faces import Face, faces_from_arrays
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.modes import image_faces
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.errors import FileError
from retinaface_export.inference.backends import Backend, artifact_backend, eager_backend


@dataclass(frozen=True)
class PreparedImage:
    """One image as the network takes it (a batch of one), with what maps its faces back to the image."""

    network_input: np.ndarray
    height: int
    width: int
    # None: the network runs at the image's own resolution
    letterbox: Letterbox | None


class Detector:
    """RetinaFace post-processing over any backend.

    Fixed-size artifacts get each image letterboxed (aspect kept, padded), or stretched where the artifact tells
    its clients so (OpenVINO IRs: ``model_info`` ``resize_type standard``, what OMZ's wrappers do), and their
    boxes mapped back; eager models and dynamic artifacts run at each image's own resolution, as the reference
    does.
    """

    def __init__(self, backend: Backend, config: DetectionConfig | None = None) -> None:
        self.backend = backend
        self.config = config or DetectionConfig()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        backbone: str | None = None,
        anchors: AnchorConfig | None = None,
        config: DetectionConfig | None = None,
    ) -> Detector:
        """PyTorch eager on a checkpoint (see :func:`~retinaface_export.checkpoint.load_checkpoint`)."""
        return cls(eager_backend(load_checkpoint(path, backbone=backbone, anchors=anchors)), config)

    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        config: DetectionConfig | None = None,
        threads: int | None = None,
        optimize: bool = False,
    ) -> Detector:
        """An artifact of any format in ``retinaface_export.formats.FORMATS``, run with its own runtime.

        ``threads`` limits the runtime's own threads (None: the runtime's default); ``optimize`` lets the
        runtime optimise the graph as deployments run it (False: the graph as written, as it was verified).
        """
        return cls(artifact_backend(path, threads=threads, optimize=optimize), config)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one BGR uint8 H×W×3 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each image; images are batched as far as the backend allows."""
        return self.detect_prepared([self.prepare(image) for image in images])

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """An image made ready for the network (letterboxed to a fixed size, the input format applied).

        Safe to call from several threads at once: decoding and letterboxing can overlap inference.
        """
        size = self.backend.input_size
        height, width = image.shape[:2]
        if size is None:
            return PreparedImage(self.backend.prepare(image[None]), height, width, None)
        fit = Letterbox.stretch if self.backend.resize == "stretch" else Letterbox.fit
        box = fit(height, width, size.height, size.width)
        return PreparedImage(self.backend.prepare(box.apply(image)[None]), height, width, box)

    def detect_prepared(self, images: list[PreparedImage]) -> list[list[Face]]:
        """Faces in each prepared image: same-shape inputs go through the network together, as the backend allows.

        A fixed-size artifact's inputs all have its shape; a short last batch of a fixed-batch artifact is
        padded with copies of its last image.
        """
        results: list[list[Face]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, item in enumerate(images):
            by_shape[item.network_input.shape].append(index)
        for indices in by_shape.values():
            for chunk in self._chunks(indices):
                inputs = [images[i].network_input for i in chunk]
                if self.backend.batch is not None:  # pad a short last batch
                    inputs += [inputs[-1]] * (self.backend.batch - len(inputs))
                outputs = self.backend.run(np.concatenate(inputs) if len(inputs) > 1 else inputs[0])
                for row, index in enumerate(chunk):
                    results[index] = self._faces(outputs, row, images[index])
        return results

    def _faces(self, outputs: list[np.ndarray], row: int, item: PreparedImage) -> list[Face]:
        if item.letterbox is None:
            return faces_from_arrays(*self._decode(outputs, row, item.height, item.width))
        box = item.letterbox
        found, scores, points = self._decode(outputs, row, box.height, box.width)
        return faces_from_arrays(box.to_image(found), scores, box.to_image(points))

    def _decode(self, outputs: list[np.ndarray], index: int, height: int, width: int):
        backend = self.backend
        try:
            return image_faces(outputs, index, backend.postprocess, backend.anchors, height, width, self.config)
        except ValueError as exc:
            raise FileError(backend.source, f"{exc}: the anchors do not belong to this model") from exc

    def _chunks(self, indices: list[int]) -> list[list[int]]:
        step = self.backend.batch or len(indices) or 1
        return [indices[i : i + step] for i in range(0, len(indices), step)]
