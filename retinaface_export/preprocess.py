"""Images to network input: BGR uint8 H×W×3 to float32 N×3×H×W with the mean subtracted."""

from __future__ import annotations

import numpy as np

from retinaface_export.contract import MEAN_BGR


def to_network_input(images: np.ndarray) -> np.ndarray:
    """BGR images (H×W×3 or N×H×W×3, any numeric dtype) to contiguous float32 N×3×H×W minus the mean."""
    batch = images[None] if images.ndim == 3 else images
    n, h, w, channels = batch.shape
    data = np.empty((n, channels, h, w), dtype=np.float32)
    # one channel plane at a time straight into NCHW: ~8x faster than astype + subtract + transpose
    for channel, mean in enumerate(MEAN_BGR):
        np.subtract(batch[..., channel], np.float32(mean), out=data[:, channel], dtype=np.float32)
    return data


def synthetic_photos(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic photo-like BGR uint8 images (N×H×W×3): blocky regions, gradients, mild noise.

    Used where a real photo is not at hand (export-time verification, synthetic-model calibration).
    """
    rng = np.random.default_rng(seed)
    block = 16
    coarse = rng.uniform(0, 255, size=(batch, -(-height // block), -(-width // block), 3))
    images = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :height, :width]
    ramp = np.linspace(-40, 40, width)[None, None, :, None]
    images = images + ramp + rng.normal(0, 10, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def to_raw_nchw(images: np.ndarray) -> np.ndarray:
    """BGR images to float32 N×3×H×W pixels, mean not subtracted (models that subtract it themselves)."""
    batch = images[None] if images.ndim == 3 else images
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def to_u8_nhwc(images: np.ndarray) -> np.ndarray:
    """BGR images as contiguous uint8 N×H×W×3 (models that take images as they are decoded)."""
    batch = images[None] if images.ndim == 3 else images
    return np.ascontiguousarray(batch, dtype=np.uint8)


# What an artifact's input takes, by the name its provenance gives as "input_format".
INPUT_FORMATS = {
    "f32-nchw-minus-mean": to_network_input,
    "f32-nchw": to_raw_nchw,
    "u8-nhwc": to_u8_nhwc,
}
DEFAULT_INPUT_FORMAT = "f32-nchw-minus-mean"
