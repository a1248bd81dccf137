"""The Detector: images in, faces (box, score, five landmarks) out, in original-image pixels."""

from __future__ import annotations

from collections import defaultdict
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


class Detector:
    """RetinaFace post-processing over any backend.

    Fixed-size artifacts get each image letterboxed (aspect kept, padded) and their boxes mapped back;
    eager models and dynamic artifacts run at each image's own resolution, as the reference does.
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
    def from_artifact(cls, path: str | Path, config: DetectionConfig | None = None) -> Detector:
        """An artifact of any format in ``retinaface_export.formats.FORMATS``, run with its own runtime."""
        return cls(artifact_backend(path), config)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one BGR uint8 H×W×3 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each image; images are batched as far as the backend allows."""
        if self.backend.input_size is None:
            return self._detect_native(images)
        return self._detect_letterboxed(images)

    def _decode(self, outputs: list[np.ndarray], index: int, height: int, width: int):
        backend = self.backend
        try:
            return image_faces(outputs, index, backend.postprocess, backend.anchors, height, width, self.config)
        except ValueError as exc:
            raise FileError(backend.source, f"{exc}: the anchors do not belong to this model") from exc

    def _detect_native(self, images: list[np.ndarray]) -> list[list[Face]]:
        results: list[list[Face]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[image.shape].append(index)
        for shape, indices in by_shape.items():
            for chunk in self._chunks(indices):
                outputs = self.backend.run(self.backend.prepare(np.stack([images[i] for i in chunk])))
                for row, index in enumerate(chunk):
                    results[index] = faces_from_arrays(*self._decode(outputs, row, shape[0], shape[1]))
        return results

    def _detect_letterboxed(self, images: list[np.ndarray]) -> list[list[Face]]:
        size = self.backend.input_size
        assert size is not None
        boxes = [Letterbox.fit(img.shape[0], img.shape[1], size.height, size.width) for img in images]
        results: list[list[Face]] = []
        for chunk in self._chunks(list(range(len(images)))):
            canvases = [boxes[i].apply(images[i]) for i in chunk]
            if self.backend.batch is not None:  # pad a short last batch
                canvases += [canvases[-1]] * (self.backend.batch - len(canvases))
            outputs = self.backend.run(self.backend.prepare(np.stack(canvases)))
            for row, index in enumerate(chunk):
                found, scores, points = self._decode(outputs, row, size.height, size.width)
                results.append(faces_from_arrays(boxes[index].to_image(found), scores, boxes[index].to_image(points)))
        return results

    def _chunks(self, indices: list[int]) -> list[list[int]]:
        step = self.backend.batch or len(indices) or 1
        return [indices[i : i + step] for i in range(0, len(indices), step)]
