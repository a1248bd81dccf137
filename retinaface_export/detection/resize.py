"""Resize an image to a fixed network size, and map results back.

Fixed-size artifacts take the whole image stretched to the network size (OpenCV bilinear, no padding): the
``standard`` resize of Open Model Zoo's ``RetinaFacePyTorch`` wrapper and of the OpenVINO Model API, whose
post-processing maps boxes back with the two stretch ratios and undoes no padding, and the ``resize 640``
of OMZ's accuracy-checker configuration for ``retinaface-resnet50-pytorch``. A client configured from the
IR's ``rt_info/model_info`` (``resize_type standard``) therefore feeds the network the pixels we feed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Resize:
    """An ``image_height`` × ``image_width`` image stretched to a ``height`` × ``width`` network input."""

    image_height: int
    image_width: int
    height: int
    width: int

    @classmethod
    def fit(cls, image_height: int, image_width: int, height: int, width: int) -> Resize:
        """The resize of an image of that size to a ``height`` × ``width`` input."""
        return cls(image_height, image_width, height, width)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image resized (bilinear) to the network size, as ``cv2.resize`` in OMZ's ``standard`` resize."""
        import cv2  # here, not at the top: OpenCV costs ~0.1 s to import and most commands never resize

        return cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)

    def to_image(self, coords: np.ndarray) -> np.ndarray:
        """Input pixel coordinates laid out as x, y, x, y, ... along the last axis, to image pixels."""
        ratios = np.array([self.image_width / self.width, self.image_height / self.height], dtype=np.float32)
        return coords * np.tile(ratios, coords.shape[-1] // 2)
