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


def reference_weights(variant: str, folder: Path, real_weights: Path) -> Path:
    """The state dict file the reference loads: the trained mobilenet0.25, or the synthetic one saved in ``folder``."""
    if variant == "mobilenet0.25":
        return real_weights
    from retinaface_export.synthetic import synthetic_state_dict
    from retinaface_export.variants import get_variant

    path = folder / f"{variant}_synthetic.pth"
    torch.save(synthetic_state_dict(get_variant(variant)), path)
    return path


def precision_recall(
    artifact: Path,
    weights: Path,
    photo: np.ndarray,
    size: int,
    threshold: float = 0.5,
    dynamic: bool = False,
    expected: np.ndarray | None = None,
):
    """(precision, recall, reference faces) of ``retinaface-detect``'s faces with ``artifact`` at IoU ≥ 0.9.

    A ``dynamic`` artifact runs at the image's own size: it is given the photo letterboxed to ``size``.
    ``expected``: the reference faces when already computed for this input (:func:`reference_faces`).
    """
    if dynamic:
        photo = Letterbox.fit(photo.shape[0], photo.shape[1], size, size).apply(photo)
    if expected is None:
        expected = reference_faces(weights, photo, size, threshold)
    found = Detector.from_artifact(artifact, config=DetectionConfig(score_threshold=threshold)).detect(photo)
    boxes = np.array([face.box for face in found], np.float32).reshape(-1, 4)
    pairs = greedy_match(boxes, expected[:, :4], min_iou=0.9)
    return len(pairs) / max(len(boxes), 1), len(pairs) / max(len(expected), 1), len(expected)


# Issue 21's rule for the faces: FP32 finds exactly the original's (P = R = 1), FP16 P, R ≥ 0.98.
LEAST = {"fp32": 1.0, "fp16": 0.98}


def original_faces_missed(folder: Path, rows, weights: Path, photo: np.ndarray, size: int) -> list[str]:
    """The manifest ``rows`` whose faces at ``size`` (threshold 0.5) miss :data:`LEAST`, one line each.

    The reference runs once per input (the photo, or the photo letterboxed to ``size`` for dynamic rows).
    """
    canvas = Letterbox.fit(photo.shape[0], photo.shape[1], size, size).apply(photo)
    references = {}
    misses = []
    for row in rows:
        dynamic = row.size is None
        if dynamic not in references:
            references[dynamic] = reference_faces(weights, canvas if dynamic else photo, size, 0.5)
        precision, recall, faces = precision_recall(
            folder / row.path, weights, photo, size, dynamic=dynamic, expected=references[dynamic]
        )
        if faces == 0 or min(precision, recall) < LEAST[row.precision]:
            misses.append(f"{row.path}: P {precision:.3f} R {recall:.3f} of {faces} faces at {size}")
    return misses
