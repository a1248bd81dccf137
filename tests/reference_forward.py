"""An independent, functional RetinaFace forward pass driven by a state dict alone: the test oracle.

Written from the biubug6/Pytorch_Retinaface architecture in a different shape from the package's
modules (no nn.Module, no configs): strides and block layouts are spelled out here, and the FPN/SSH
LeakyReLU slope follows biubug6's rule (0.1 when the FPN width is <= 64), read from the weights' shapes.
A wiring mistake in the package (a slope, a stride, an upsampling order, a head's reshape) shows up as
a difference between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MOBILENET_STRIDES = {"stage1": [2, 1, 2, 1, 2, 1], "stage2": [2, 1, 1, 1, 1, 1], "stage3": [2, 1]}
RESNET_LAYERS = {"layer1": (3, 1), "layer2": (4, 2), "layer3": (6, 2), "layer4": (3, 2)}


def _bn(sd, prefix, x):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _conv(sd, prefix, x, stride=1, groups=1):
    weight = sd[f"{prefix}.weight"]
    return F.conv2d(x, weight, sd.get(f"{prefix}.bias"), stride, weight.shape[-1] // 2, 1, groups)


def _conv_bn(sd, prefix, x, stride=1, slope=None, groups=1):
    """Conv at `prefix.0`, BN at `prefix.1`, then LeakyReLU(slope) unless slope is None."""
    y = _bn(sd, f"{prefix}.1", _conv(sd, f"{prefix}.0", x, stride, groups))
    return y if slope is None else F.leaky_relu(y, slope)


def _mobilenet(sd, x):
    features = []
    for stage, strides in MOBILENET_STRIDES.items():
        for i, stride in enumerate(strides):
            p = f"body.{stage}.{i}"
            if stage == "stage1" and i == 0:
                x = _conv_bn(sd, p, x, stride, 0.1)
            else:
                x = F.leaky_relu(_bn(sd, f"{p}.1", _conv(sd, f"{p}.0", x, stride, groups=x.shape[1])), 0.1)
                x = F.leaky_relu(_bn(sd, f"{p}.4", _conv(sd, f"{p}.3", x)), 0.1)
        features.append(x)
    return features


def _resnet50(sd, x):
    x = F.relu(_bn(sd, "body.bn1", _conv(sd, "body.conv1", x, 2)))
    x = F.max_pool2d(x, 3, 2, 1)
    features = []
    for layer, (blocks, stride) in RESNET_LAYERS.items():
        for b in range(blocks):
            p = f"body.{layer}.{b}"
            s = stride if b == 0 else 1
            out = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x)))
            out = F.relu(_bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", out, s)))
            out = _bn(sd, f"{p}.bn3", _conv(sd, f"{p}.conv3", out))
            shortcut = _bn(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", x, s)) if b == 0 else x
            x = F.relu(out + shortcut)
        if layer != "layer1":
            features.append(x)
    return features


def _ssh(sd, p, x, slope):
    a = _conv_bn(sd, f"{p}.conv3X3", x)
    b1 = _conv_bn(sd, f"{p}.conv5X5_1", x, slope=slope)
    b = _conv_bn(sd, f"{p}.conv5X5_2", b1)
    c = _conv_bn(sd, f"{p}.conv7x7_3", _conv_bn(sd, f"{p}.conv7X7_2", b1, slope=slope))
    return F.relu(torch.cat([a, b, c], 1))


def _head(sd, name, level, x, width):
    y = _conv(sd, f"{name}.{level}.conv1x1", x).permute(0, 2, 3, 1)
    return y.reshape(y.shape[0], -1, width)


def reference_forward(state_dict: dict[str, torch.Tensor], data: torch.Tensor):
    """(bbox N×A×4, softmaxed class N×A×2, landmarks N×A×10) for a RetinaFace state dict."""
    sd = {k.removeprefix("module."): v.float() for k, v in state_dict.items()}
    c3, c4, c5 = _mobilenet(sd, data) if "body.stage1.0.0.weight" in sd else _resnet50(sd, data)
    slope = 0.1 if sd["fpn.output1.0.weight"].shape[0] <= 64 else 0.0
    o1 = _conv_bn(sd, "fpn.output1", c3, slope=slope)
    o2 = _conv_bn(sd, "fpn.output2", c4, slope=slope)
    o3 = _conv_bn(sd, "fpn.output3", c5, slope=slope)
    o2 = _conv_bn(sd, "fpn.merge2", o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"), slope=slope)
    o1 = _conv_bn(sd, "fpn.merge1", o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"), slope=slope)
    feats = [_ssh(sd, f"ssh{i + 1}", f, slope) for i, f in enumerate([o1, o2, o3])]
    bbox = torch.cat([_head(sd, "BboxHead", i, f, 4) for i, f in enumerate(feats)], 1)
    cls = torch.cat([_head(sd, "ClassHead", i, f, 2) for i, f in enumerate(feats)], 1)
    landmarks = torch.cat([_head(sd, "LandmarkHead", i, f, 10) for i, f in enumerate(feats)], 1)
    return bbox, F.softmax(cls, -1), landmarks
