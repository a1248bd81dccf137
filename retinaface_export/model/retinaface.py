"""RetinaFace (biubug6/Pytorch_Retinaface ``models/retinaface.py``), inference graph only.

The forward pass always returns ``(bbox_pred, softmaxed class probabilities, landmark_pred)``: the
contract of the exported artifacts. There is no ``phase`` switch that changes the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retinaface_export.contract import OUTPUT_WIDTHS
from retinaface_export.model.backbones import BACKBONES, FeatureExtractor
from retinaface_export.model.blocks import FPN, SSH, Head
from retinaface_export.variants import Variant

NUM_LEVELS = 3


class RetinaFace(nn.Module):
    """RetinaFace for one :class:`~retinaface_export.variants.Variant`.

    Input: N×3×H×W BGR with the mean 104/117/123 subtracted. Outputs, with A anchors:
    ``face_rpn_bbox_pred`` N×A×4, ``face_rpn_cls_prob`` N×A×2 (softmax), ``face_rpn_landmark_pred`` N×A×10.
    """

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant_name = variant.name
        self.body = FeatureExtractor(BACKBONES[variant.backbone](), variant.return_layers)
        out_ch, leaky = variant.out_channels, variant.fpn_leaky_slope
        self.fpn = FPN(variant.fpn_in_channels, out_ch, leaky)
        self.ssh1 = SSH(out_ch, out_ch, leaky)
        self.ssh2 = SSH(out_ch, out_ch, leaky)
        self.ssh3 = SSH(out_ch, out_ch, leaky)
        per_cell = variant.anchors.anchors_per_location
        box_w, cls_w, landmark_w = OUTPUT_WIDTHS
        self.ClassHead = nn.ModuleList(Head(out_ch, per_cell, cls_w) for _ in range(NUM_LEVELS))
        self.BboxHead = nn.ModuleList(Head(out_ch, per_cell, box_w) for _ in range(NUM_LEVELS))
        self.LandmarkHead = nn.ModuleList(Head(out_ch, per_cell, landmark_w) for _ in range(NUM_LEVELS))

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(self.body(data))
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        bbox = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return bbox, F.softmax(logits, dim=-1), landmarks


def build_model(variant: Variant) -> RetinaFace:
    """An uninitialised RetinaFace for ``variant``, in eval mode."""
    return RetinaFace(variant).eval()
