"""Faces drawn onto a copy of the image: boxes, scores, the five landmarks."""

from __future__ import annotations

import numpy as np

from retinaface_export.detection.faces import Face

BOX_COLOR = (0, 0, 255)
# Faces smaller than this (pixels high) get no score label: in crowds the labels would hide the faces.
MIN_LABELLED_HEIGHT = 40
# Eyes, nose, mouth corners (colours as biubug6 detect.py draws them).
LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_faces(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of ``image`` with ``faces`` drawn on it."""
    import cv2

    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 600))
    for face in faces:
        x1, y1, x2, y2 = (round(v) for v in face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, thickness)
        if y2 - y1 >= MIN_LABELLED_HEIGHT:
            cv2.putText(
                canvas,
                f"{face.score:.2f}",
                (x1, max(0, y1 - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * thickness,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        for (x, y), color in zip(face.landmarks, LANDMARK_COLORS, strict=True):
            cv2.circle(canvas, (round(x), round(y)), thickness + 1, color, -1)
    return canvas
