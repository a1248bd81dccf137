"""Strict detection F1 of a model's outputs against a reference model's, for quantisation control.

Both output sets (raw, decoded, or detections, as the artifact's post-processing says) are read with the
same post-processing (anchors, score threshold, NMS) and their faces
matched one to one at IoU >= ``min_iou`` (:func:`~retinaface_export.detection.compare.compare_faces`).
"Strict": both sides are cut at the same threshold, with no score margin, so a face scored 0.51 by one
model and 0.49 by the other counts as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from retinaface_export.anchors import AnchorConfig
from retinaface_export.detection.compare import compare_faces
from retinaface_export.detection.faces import Face, faces_from_arrays
from retinaface_export.detection.modes import image_faces, nms_config
from retinaface_export.detection.postprocess import DetectionConfig
from retinaface_export.postprocess.settings import PostprocessSpec
from retinaface_export.sizes import InputSize

# Outputs of one run, in the model's order (raw: bbox, cls, landmarks, each N×A×k).
Outputs = Sequence[np.ndarray]


@dataclass(frozen=True)
class DetectionF1:
    """Strict F1 of candidate faces against reference faces, pooled over all samples (micro average)."""

    anchors: AnchorConfig
    size: InputSize
    threshold: float = 0.5
    min_iou: float = 0.5
    # what the model computes after the network (its outputs are read accordingly)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)

    @property
    def name(self) -> str:
        """How the manifest names this metric."""
        return f"strict detection F1 against FP32 (score > {self.threshold:g}, IoU >= {self.min_iou:g})"

    def faces(self, outputs: Outputs) -> list[list[Face]]:
        """Faces of each batch row of one run, in network-input pixels."""
        spec = self.postprocess
        base = nms_config(spec) if spec.detections else DetectionConfig()
        config = replace(base, score_threshold=self.threshold)
        height, width = self.size.height, self.size.width
        return [
            faces_from_arrays(*image_faces(list(outputs), i, spec, self.anchors, height, width, config))
            for i in range(len(outputs[0]))
        ]

    def __call__(self, reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> tuple[float, list[float]]:
        """F1 over all samples and each sample's own F1 (1.0 where neither side finds a face).

        Args:
            reference: the reference model's outputs, one entry per sample.
            candidate: the candidate's outputs on the same samples, in the same order.
        """
        if len(reference) != len(candidate):
            raise ValueError(f"{len(reference)} reference runs but {len(candidate)} candidate runs")
        matched = total = 0
        per_sample = []
        for ref_run, cand_run in zip(reference, candidate, strict=True):
            run_matched = run_total = 0
            for ref_faces, cand_faces in zip(self.faces(ref_run), self.faces(cand_run), strict=True):
                agreement = compare_faces(ref_faces, cand_faces, self.min_iou)
                run_matched += agreement.matched
                run_total += agreement.reference_faces + agreement.candidate_faces
            matched += run_matched
            total += run_total
            per_sample.append(1.0 if run_total == 0 else 2 * run_matched / run_total)
        return (1.0 if total == 0 else 2 * matched / total), per_sample


def strict_f1(anchors: AnchorConfig, size: InputSize, postprocess: PostprocessSpec) -> DetectionF1:
    """Strict detection F1 of outputs at ``size`` read as ``postprocess`` writes them.

    Both sides are cut at 0.5, or at an ``nms`` model's own threshold when that is higher.
    """
    threshold = 0.5
    if postprocess.detections:
        threshold = max(threshold, postprocess.settings.score_threshold)
    return DetectionF1(anchors, size, threshold=threshold, postprocess=postprocess)
