"""Fit an image into a fixed network size keeping its aspect ratio, and map results back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinaface_export.contract import MEAN_BGR


@dataclass(frozen=True)
class Letterbox:
    """An image resized to ``resized_width`` × ``resized_height`` at the top-left of a fixed canvas."""

    image_height: int
    image_width: int
    resized_height: int
    resized_width: int
    height: int
    width: int

    @classmethod
    def fit(cls, image_height: int, image_width: int, height: int, width: int) -> Letterbox:
        """The largest aspect-preserving resize that fits a ``height`` × ``width`` canvas."""
        scale = min(height / image_height, width / image_width)
        resized_h = max(1, min(height, round(image_height * scale)))
        resized_w = max(1, min(width, round(image_width * scale)))
        return cls(image_height, image_width, resized_h, resized_w, height, width)

    @classmethod
    def stretch(cls, image_height: int, image_width: int, height: int, width: int) -> Letterbox:
        """The whole image resized to the canvas, aspect not kept (OMZ's ``standard`` resize): no padding."""
        return cls(image_height, image_width, height, width, height, width)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image resized (bilinear) and padded with the mean colour, which the network sees as zero."""
        import cv2  # here, not at the top: OpenCV costs ~0.1 s to import and most commands never resize

        size = (self.resized_width, self.resized_height)
        resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        bottom, right = self.height - self.resized_height, self.width - self.resized_width
        return cv2.copyMakeBorder(resized, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=MEAN_BGR)

    def to_image(self, coords: np.ndarray) -> np.ndarray:
        """Canvas pixel coordinates laid out as x, y, x, y, ... along the last axis, to image pixels."""
        ratios = np.array(
            [self.image_width / self.resized_width, self.image_height / self.resized_height], dtype=np.float32
        )
        return coords * np.tile(ratios, coords.shape[-1] // 2)
