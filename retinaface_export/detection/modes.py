"""What each post-processing mode outputs, computed in numpy from raw outputs, and faces back out of it.

The reference for an artifact with post-processing inside (``decode``, ``nms``) is its raw outputs (PyTorch
eager's, or its source's) put through the reference's numpy post-processing (:mod:`.postprocess`); the
Detector reads faces out of any mode's outputs the same way.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.detection.postprocess import (
    DetectionConfig,
    decode_boxes,
    decode_landmarks,
    postprocess,
    postprocess_decoded,
)
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.errors import UsageError
from retinaface_export.postprocess.settings import (
    PostprocessMode,
    PostprocessSpec,
    covers,
    pack_detections,
    split_detections,
)

Faces = tuple[np.ndarray, np.ndarray, np.ndarray]


def nms_config(spec: PostprocessSpec) -> DetectionConfig:
    """The DetectionConfig an ``nms`` artifact's settings stand for."""
    s = spec.settings
    return DetectionConfig(s.score_threshold, s.nms_iou, s.top_k, s.max_detections)


def _scale(height: int, width: int) -> np.ndarray:
    return np.array([width, height, width, height], dtype=np.float32)


def mode_outputs(raw: list[np.ndarray], anchors: AnchorConfig, height: int, width: int, spec: PostprocessSpec):
    """Raw outputs (N×A×4, N×A×2, N×A×10) to what an artifact of ``spec`` at ``height`` × ``width`` outputs."""
    if spec.raw:
        return raw
    loc, conf, landmarks = raw
    priors = prior_boxes(anchors, height, width)
    if spec.mode is PostprocessMode.DECODE:
        scale = _scale(height, width)
        boxes = np.stack([decode_boxes(row, priors, anchors.variance) * scale for row in loc])
        points = np.stack(
            [decode_landmarks(row, priors, anchors.variance) * np.tile(scale[:2], 5) for row in landmarks]
        )
        return [boxes, conf[..., 1], points]
    config = nms_config(spec)
    per_image = [
        postprocess(loc[i], conf[i], landmarks[i], priors, anchors.variance, (width, height), config)
        for i in range(len(loc))
    ]
    return pack_detections(per_image, spec.settings.max_detections)


def image_faces(
    outputs: list[np.ndarray],
    index: int,
    spec: PostprocessSpec,
    anchors: AnchorConfig,
    height: int,
    width: int,
    config: DetectionConfig,
) -> Faces:
    """Image ``index``'s faces (pixel boxes, scores, pixel landmarks) from a ``spec`` artifact's outputs.

    Raises:
        UsageError: an ``nms`` artifact asked for settings it cannot give (a lower threshold, another IoU).
        ValueError: output rows that do not fit the anchors (the caller names the artifact).
    """
    if spec.detections:
        s = spec.settings
        if not covers(s, config.score_threshold, config.nms_threshold, config.top_k, config.keep_top_k):
            raise UsageError(
                f"the artifact applies NMS inside (threshold {s.score_threshold}, IoU {s.nms_iou}, top-k {s.top_k}, "
                f"{s.max_detections} kept): it can give a threshold at or above {s.score_threshold} with the same "
                f"IoU and counts, not threshold {config.score_threshold}, IoU {config.nms_threshold}"
            )
        return split_detections(outputs[0][index : index + 1], outputs[1][index : index + 1], config.score_threshold)[0]
    if spec.mode is PostprocessMode.DECODE:
        boxes, scores, points = (out[index] for out in outputs)
        return postprocess_decoded(boxes, scores, points, config)
    loc, conf, landmarks = (out[index] for out in outputs)
    priors = prior_boxes(anchors, height, width)
    if len(priors) != len(loc):
        raise ValueError(f"{len(loc)} output rows but {len(priors)} anchors at {height}x{width}")
    return postprocess(loc, conf, landmarks, priors, anchors.variance, (width, height), config)
