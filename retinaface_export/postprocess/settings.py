"""Post-processing inside an artifact: the modes, the NMS settings, the output names, and reading them back.

``none`` keeps the raw Open Model Zoo outputs. ``decode`` outputs ``boxes`` (N×A×4, x1 y1 x2 y2),
``scores`` (N×A, face probability) and ``landmarks`` (N×A×10, five x, y) in input-tensor pixels. ``nms``
also applies the score threshold, top-k, NMS (biubug6 ``py_cpu_nms``, ``+1`` pixel convention) and
keep-top-k per image, and outputs ``detections`` (N×K×15: x1 y1 x2 y2 score, then five landmark x, y),
zero after ``num_detections`` (N, int64) rows, best first. The graph builders are in
``postprocess_onnx`` and ``postprocess_torchscript``; this module imports neither ONNX nor torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from retinaface_export.errors import UsageError


class PostprocessMode(StrEnum):
    """What an artifact computes after the network (its values are the manifest's and the CLI's words)."""

    NONE = "none"
    DECODE = "decode"
    NMS = "nms"


POSTPROCESS_MODES = tuple(mode.value for mode in PostprocessMode)
DECODE_OUTPUTS = ("boxes", "scores", "landmarks")
NMS_OUTPUTS = ("detections", "num_detections")
# Columns of a ``detections`` row: box (4), score (1), five landmark points (10).
DETECTION_WIDTH = 15


# Bounds of the counts: the nms graph allocates top_k candidates and N × max_detections × 15 outputs; a 2048²
# input has 172,032 anchors, and a typo (--max-detections 10**12) was a MemoryError or an OverflowError.
MAX_TOP_K = 200_000
MAX_DETECTIONS = 10_000


@dataclass(frozen=True)
class NmsSettings:
    """Thresholds of the ``nms`` mode; the defaults are the reference's WIDER FACE evaluation settings.

    Attributes:
        score_threshold: faces need a probability strictly above it.
        nms_iou: a face is suppressed by a better one when their IoU (``+1`` convention) is above it.
        top_k: candidates kept, best first, before NMS.
        max_detections: faces kept after NMS (K, the ``detections`` rows per image).
    """

    score_threshold: float = 0.02
    nms_iou: float = 0.4
    top_k: int = 5000
    max_detections: int = 750

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise UsageError(f"--score-threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 <= self.nms_iou <= 1.0:  # ONNX Runtime refuses an IoU threshold outside [0, 1]
            raise UsageError(f"--nms-iou must be in [0, 1], got {self.nms_iou}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise UsageError(f"--top-k must be from 1 to {MAX_TOP_K}, got {self.top_k}")
        if not 1 <= self.max_detections <= MAX_DETECTIONS:
            raise UsageError(f"--max-detections must be from 1 to {MAX_DETECTIONS}, got {self.max_detections}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, for provenance and manifests."""
        return asdict(self)


def check_mode(mode: str) -> str:
    """``mode`` itself when it is one of :data:`POSTPROCESS_MODES`.

    Raises:
        UsageError: an unknown mode, naming the valid ones.
    """
    if mode not in POSTPROCESS_MODES:
        raise UsageError(f"unknown post-processing {mode!r}; valid: {', '.join(POSTPROCESS_MODES)}")
    return mode


def covers(settings: NmsSettings, score_threshold: float, nms_iou: float, top_k: int, max_detections: int) -> bool:
    """Whether an ``nms`` artifact made with ``settings`` gives what these settings ask, by cutting its rows.

    NMS keeps faces best first and only a better face suppresses, so the faces of a lower-threshold
    artifact that score above a higher threshold are exactly that threshold's faces (top-k and
    keep-top-k cut both best first), as long as the IoU, top-k and keep-top-k are the same.
    """
    return (
        score_threshold >= settings.score_threshold
        and nms_iou == settings.nms_iou
        and top_k == settings.top_k
        and max_detections == settings.max_detections
    )


def split_detections(
    detections: np.ndarray, num_detections: np.ndarray, min_score: float | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """An ``nms`` artifact's outputs to per-image ``(boxes K×4, scores K, landmarks K×10)``, best first.

    The arrays are in input-tensor pixels, as ``detection.postprocess.postprocess`` returns them, so the
    Detector maps them to the image (letterbox) the same way. ``min_score`` keeps the faces scoring above
    it (a threshold above the artifact's own; see :func:`covers`).
    """
    if detections.ndim != 3 or detections.shape[2] != DETECTION_WIDTH:
        raise ValueError(f"detections must be N×K×{DETECTION_WIDTH}, got {detections.shape}")
    if num_detections.shape != detections.shape[:1]:
        raise ValueError(f"num_detections must have shape ({detections.shape[0]},), got {num_detections.shape}")
    per_image = []
    for rows, count in zip(detections, num_detections, strict=True):
        kept = rows[: int(count)]
        if min_score is not None:
            kept = kept[kept[:, 4] > np.float32(min_score)]
        per_image.append((kept[:, :4], kept[:, 4], kept[:, 5:]))
    return per_image


@dataclass(frozen=True)
class PostprocessSpec:
    """What an artifact computes after the network: ``none`` (raw outputs), ``decode`` or ``nms``."""

    mode: PostprocessMode = PostprocessMode.NONE
    settings: NmsSettings = field(default_factory=NmsSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", PostprocessMode(check_mode(self.mode)))

    @property
    def raw(self) -> bool:
        """The Open Model Zoo outputs as the network makes them, nothing after it."""
        return self.mode is PostprocessMode.NONE

    @property
    def detections(self) -> bool:
        """Outputs are detection rows after NMS (judged face by face, not tensor by tensor)."""
        return self.mode is PostprocessMode.NMS

    @property
    def outputs(self) -> tuple[str, ...]:
        """The artifact's output names, in order."""
        from retinaface_export.contract import OUTPUT_NAMES

        return {"none": OUTPUT_NAMES, "decode": DECODE_OUTPUTS, "nms": NMS_OUTPUTS}[self.mode]

    @property
    def tag(self) -> str:
        """File-name tag: ``""``, ``"_decode"`` or ``"_nms"``."""
        return "" if self.raw else f"_{self.mode}"

    def record(self) -> dict[str, Any]:
        """Manifest and provenance form: the mode, and the settings of ``nms``."""
        return {"mode": self.mode.value} | (self.settings.to_dict() if self.detections else {})

    @classmethod
    def from_record(cls, data: Any) -> PostprocessSpec:
        """Back from :meth:`record` (``None``: raw outputs).

        Raises:
            UsageError: an unknown mode or settings out of range.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UsageError(f"post-processing must be an object, got {type(data).__name__}")
        fields = {k: data[k] for k in ("score_threshold", "nms_iou", "top_k", "max_detections") if k in data}
        try:
            settings = NmsSettings(**fields)
        except TypeError as exc:
            raise UsageError(f"malformed post-processing settings ({exc})") from exc
        return cls(str(data.get("mode", "none")), settings)


def pack_detections(per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int) -> list[np.ndarray]:
    """Per-image ``(boxes, scores, landmarks)`` to ``detections`` (N×rows×15, zero-padded) and ``num_detections``."""
    detections = np.zeros((len(per_image), rows, DETECTION_WIDTH), np.float32)
    counts = np.zeros(len(per_image), np.int64)
    for index, (boxes, scores, points) in enumerate(per_image):
        count = min(len(scores), rows)
        detections[index, :count] = np.concatenate([boxes, scores[:, None], points], axis=1)[:count]
        counts[index] = count
    return [detections, counts]
