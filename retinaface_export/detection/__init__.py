"""Faces out of images: priors, decode, NMS, letterboxing, and a Detector over every backend."""

from retinaface_export.detection.detector import Detector, Face
from retinaface_export.detection.postprocess import DetectionConfig

__all__ = ["DetectionConfig", "Detector", "Face"]
