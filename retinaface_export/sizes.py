"""Input sizes: ``640`` (square) or ``480x640`` (height × width), positive multiples of 32."""

from __future__ import annotations

import re
from dataclasses import dataclass

from retinaface_export.errors import UsageError

# The coarsest feature map has stride 32; other sizes would make FPN levels misalign after upsampling.
SIZE_MULTIPLE = 32
# The sizes the README and CI exercise.
STANDARD_SIZES = (320, 416, 512, 608, 640)
_SIZE_PATTERN = re.compile(r"^(\d+)(?:[xX](\d+))?$")


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


def parse_size(text: str) -> InputSize:
    """Parse ``640`` or ``HxW``.

    Raises:
        UsageError: not a size, not positive, or not a multiple of 32.
    """
    match = _SIZE_PATTERN.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a size: use 640 or HxW such as 480x640")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    for side in (height, width):
        if side <= 0 or side % SIZE_MULTIPLE:
            raise UsageError(f"{text!r}: sides must be positive multiples of {SIZE_MULTIPLE}, got {side}")
    return InputSize(height, width)
