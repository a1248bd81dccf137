"""Backbones in plain torch, with the state-dict keys of biubug6's MobileNetV1 and torchvision's resnet50.

torchvision has no CPU build here, so its ResNet-50 is rewritten with the same attribute names.

Only the layers RetinaFace uses are built (no classifier): biubug6 drops them too, through torchvision's
``IntermediateLayerGetter``, whose job :class:`FeatureExtractor` does here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from retinaface_export.model.blocks import conv_bn, conv_dw


class FeatureExtractor(nn.Module):
    """Runs named children in order and returns the outputs of ``return_layers``, in that order."""

    def __init__(self, layers: OrderedDict[str, nn.Module], return_layers: tuple[str, ...]) -> None:
        super().__init__()
        missing = [name for name in return_layers if name not in layers]
        if missing:
            raise ValueError(f"backbone has no layers {missing}; it has {list(layers)}")
        last = max(list(layers).index(name) for name in return_layers)
        for name, module in list(layers.items())[: last + 1]:
            self.add_module(name, module)
        self.return_layers = tuple(return_layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for name, module in self.named_children():
            x = module(x)
            if name in self.return_layers:
                features.append(x)
        return features


def mobilenet_v1_025() -> OrderedDict[str, nn.Module]:
    """MobileNetV1 at width 0.25 (biubug6 ``models/net.py``: 8 → 256 channels, LeakyReLU 0.1)."""
    return OrderedDict(
        stage1=nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        ),
        stage2=nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)]),
        stage3=nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1)),
    )


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3×3 conv), same attribute names."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _resnet_stage(in_ch: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_ch, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet50() -> OrderedDict[str, nn.Module]:
    """Torchvision ``resnet50`` without ``avgpool``/``fc``: conv1, bn1, relu, maxpool, layer1-4."""
    return OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, 1),
        layer1=_resnet_stage(64, 64, 3, 1),
        layer2=_resnet_stage(256, 128, 4, 2),
        layer3=_resnet_stage(512, 256, 6, 2),
        layer4=_resnet_stage(1024, 512, 3, 2),
    )


BACKBONES: dict[str, Callable[[], OrderedDict[str, nn.Module]]] = {
    "mobilenet_v1_0.25": mobilenet_v1_025,
    "resnet50": resnet50,
}
