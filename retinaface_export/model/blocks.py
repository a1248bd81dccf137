"""Conv + BatchNorm (+ LeakyReLU) blocks, FPN and SSH of RetinaFace.

Module nesting and attribute names follow biubug6/Pytorch_Retinaface ``models/net.py`` exactly, because
they are the checkpoint's state-dict keys (``fpn.output1.0.weight``, ``ssh1.conv5X5_1.1.running_var``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(in_ch: int, out_ch: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3×3 conv, BatchNorm, LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv, BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch))


def conv_bn_1x1(in_ch: int, out_ch: int, leaky: float = 0.0) -> nn.Sequential:
    """1×1 conv, BatchNorm, LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(in_ch: int, out_ch: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block of MobileNetV1: 3×3 depthwise and 1×1 pointwise, each with BN + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class SSH(nn.Module):
    """Single Stage Headless context module: 3×3, 5×5 and 7×7 receptive fields, concatenated, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, leaky: float) -> None:
        super().__init__()
        if out_ch % 4:
            raise ValueError(f"SSH output channels must be a multiple of 4, got {out_ch}")
        self.conv3X3 = conv_bn_no_relu(in_ch, out_ch // 2)
        self.conv5X5_1 = conv_bn(in_ch, out_ch // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_ch // 4, out_ch // 4)
        self.conv7X7_2 = conv_bn(out_ch // 4, out_ch // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_ch // 4, out_ch // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3 = self.conv3X3(x)
        shared5 = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(shared5)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared5))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class FPN(nn.Module):
    """Top-down feature pyramid over three backbone maps (strides 8, 16, 32)."""

    def __init__(self, in_channels: tuple[int, ...], out_ch: int, leaky: float) -> None:
        super().__init__()
        self.output1 = conv_bn_1x1(in_channels[0], out_ch, leaky=leaky)
        self.output2 = conv_bn_1x1(in_channels[1], out_ch, leaky=leaky)
        self.output3 = conv_bn_1x1(in_channels[2], out_ch, leaky=leaky)
        self.merge1 = conv_bn(out_ch, out_ch, leaky=leaky)
        self.merge2 = conv_bn(out_ch, out_ch, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        output1 = self.output1(features[0])
        output2 = self.output2(features[1])
        output3 = self.output3(features[2])
        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class Head(nn.Module):
    """1×1 conv predicting ``width`` values per anchor, flattened to N × (H·W·anchors) × width."""

    def __init__(self, in_ch: int, anchors_per_location: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(in_ch, anchors_per_location * width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.width)
