"""Input sizes: ``640`` (square) or ``480x640`` (height × width), positive multiples of 32, within limits.

The limits keep a typo (``--size 99968``, ``--batch 100000``) from becoming a many-GiB allocation. Each
can be raised for a run through an environment variable, which the refusal names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from retinaface_export.errors import UsageError

# The coarsest feature map has stride 32; other sizes would make FPN levels misalign after upsampling.
SIZE_MULTIPLE = 32
# The sizes the README and CI exercise.
STANDARD_SIZES = (320, 416, 512, 608, 640)
# Largest network input side: 2048 covers 1080p and 2K frames; Resnet50 at 2048² needs ~3 GiB to export.
MAX_SIDE = 2048
MAX_SIDE_ENV = "RETINAFACE_EXPORT_MAX_SIDE"
# Largest batch of a fixed-size model: 64 × 3 × 640² float32 inputs are 300 MiB before any activation.
MAX_BATCH = 64
MAX_BATCH_ENV = "RETINAFACE_EXPORT_MAX_BATCH"
# At most 9 digits a side: int() of a 5,000-digit string fails in its own way.
_SIZE_PATTERN = re.compile(r"^(\d{1,9})(?:[xX](\d{1,9}))?$")


def env_limit(name: str, default: int) -> int:
    """A positive integer limit from the environment variable ``name``, or ``default`` when it is unset.

    Raises:
        UsageError: the variable is set to something other than a positive integer.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1 or len(text) > 18:
        raise UsageError(f"{name}={text[:40]!r}: must be a positive integer")
    return int(text)


@dataclass(frozen=True, order=True)
class InputSize:
    """A network input size in pixels."""

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    def as_list(self) -> list[int]:
        """``[H, W]``, as manifests record it."""
        return [self.height, self.width]


def check_size(height: object, width: object, label: str | None = None) -> InputSize:
    """``InputSize(height, width)`` if both sides are integers, positive multiples of 32, within the limit.

    For sizes read from files (manifests, golden sets) as well as typed ones. ``label`` names the value in
    messages (default ``HxW``).

    Raises:
        UsageError: not integers, not positive multiples of 32, or a side above the limit.
    """
    label = label or f"{height}x{width}"
    limit = env_limit(MAX_SIDE_ENV, MAX_SIDE)
    for side in (height, width):
        if not isinstance(side, int) or isinstance(side, bool):
            raise UsageError(f"{label!r}: sides must be integers, got {side!r}")
        if side <= 0 or side % SIZE_MULTIPLE:
            raise UsageError(f"{label!r}: sides must be positive multiples of {SIZE_MULTIPLE}, got {side}")
        if side > limit:
            raise UsageError(
                f"{label!r}: side {side} is above the largest allowed side, {limit} pixels "
                f"(set {MAX_SIDE_ENV}=N to allow larger sizes)"
            )
    return InputSize(height, width)  # type: ignore[arg-type]  # checked above


def parse_size(text: str) -> InputSize:
    """Parse ``640`` or ``HxW``.

    Raises:
        UsageError: not a size, not positive, not a multiple of 32, or above the largest side
            (``RETINAFACE_EXPORT_MAX_SIDE``, default 2048).
    """
    match = _SIZE_PATTERN.match(text.strip())
    if not match:
        raise UsageError(f"{text[:40]!r} is not a size: use 640 or HxW such as 480x640")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    return check_size(height, width, text.strip())


def check_batch(batch: int) -> int:
    """``batch`` if it is at least 1 and at most the largest batch.

    Raises:
        UsageError: below 1, or above ``RETINAFACE_EXPORT_MAX_BATCH`` (default 64).
    """
    limit = env_limit(MAX_BATCH_ENV, MAX_BATCH)
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if batch > limit:
        raise UsageError(
            f"--batch {batch} is above the largest allowed batch, {limit} (set {MAX_BATCH_ENV}=N to allow more)"
        )
    return batch
