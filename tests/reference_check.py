"""An artifact's faces against the original detect.py's on the same network input (issue 21).

The reference is the functional forward pass of biubug6's network (``reference_forward``) and a
transcription of its detect.py (``reference_pipeline``), run on the photo letterboxed to the artifact's
size; its boxes are mapped back to the photo as ``retinaface-detect`` maps its own. Judged: every reference
face matched by one of the artifact's at IoU ≥ 0.9 and nothing else found (precision = recall = 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import photo_input
from matching import greedy_match
from reference_forward import reference_forward
from reference_pipeline import reference_detections
from retinaface_export.detection.letterbox import Letterbox
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.inference.detector import Detector

ANCHORS = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2]}


def reference_faces(weights: Path, photo: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """detect.py's faces (N×15: box, score, landmarks) on ``photo`` letterboxed to ``size``, in photo pixels."""
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    box = Letterbox.fit(photo.shape[0], photo.shape[1], size, size)
    canvas = box.apply(photo)
    with torch.inference_mode():
        loc, conf, landms = reference_forward(raw, torch.from_numpy(photo_input(canvas, size, size)))
    faces = reference_detections(loc, conf, landms, (size, size), ANCHORS, threshold, 0.4)
    faces[:, :4] = box.to_image(faces[:, :4])
    faces[:, 5:] = box.to_image(faces[:, 5:])
    return faces


def precision_recall(artifact: Path, weights: Path, photo: np.ndarray, size: int, threshold: float = 0.5):
    """(precision, recall, reference faces) of ``retinaface-detect``'s faces with ``artifact`` at IoU ≥ 0.9."""
    expected = reference_faces(weights, photo, size, threshold)
    found = Detector.from_artifact(artifact, config=DetectionConfig(score_threshold=threshold)).detect(photo)
    boxes = np.array([face.box for face in found], np.float32).reshape(-1, 4)
    pairs = greedy_match(boxes, expected[:, :4], min_iou=0.9)
    return len(pairs) / max(len(boxes), 1), len(pairs) / max(len(expected), 1), len(expected)
