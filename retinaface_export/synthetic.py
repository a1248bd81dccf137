"""A deterministic synthetic RetinaFace: seeded weights and realistic BatchNorm statistics.

It lets the whole pipeline run on a machine with no trained weights, and stands in for Resnet50, whose
upstream weights (``Resnet50_Final.pth``) cannot be fetched here. It detects nothing meaningful.

Determinism across machines: weights come from NumPy's PCG64 generator; BatchNorm statistics are measured
in float64 on one thread over fixed synthetic images and rounded to 10 mantissa bits, so last-bit
differences between CPUs' BLAS kernels do not reach the saved values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from retinaface_export.checkpoint import LoadedCheckpoint
from retinaface_export.hashing import sha256_state_dict
from retinaface_export.preprocess import synthetic_photos, to_network_input
from retinaface_export.variants import Variant

if TYPE_CHECKING:  # torch is imported where it is used: `--help` and light commands never load it
    import torch
    from torch import nn

DEFAULT_SEED = 20240611
# Calibration batch (N, C, H, W) for the BatchNorm statistics: small, fixed, cheap in float64.
_CALIBRATION_SHAPE = (2, 3, 128, 128)
_MANTISSA_BITS = 10
# Box and landmark heads drawn smaller, so regressions have a trained model's range (|x| of a few units).
_REGRESSION_HEAD_GAIN = 0.25
# Added to the background logit and taken from the face logit of every anchor, so that about 1% of anchors
# score above 0.5 on a photo, as with a trained model (3% for mobilenet0.25_Final on the crowd photo).
_BACKGROUND_LOGIT_SHIFT = 2.0


@contextmanager
def _single_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _round_mantissa(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    mantissa, exponent = torch.frexp(tensor)
    scale = 2.0**_MANTISSA_BITS
    return torch.ldexp(torch.round(mantissa * scale) / scale, exponent)


def _calibration_images(seed: int) -> torch.Tensor:
    import torch

    n, _, h, w = _CALIBRATION_SHAPE
    return torch.from_numpy(to_network_input(synthetic_photos(n, h, w, seed)).astype(np.float64))


def _init_weights(model: nn.Module, rng: np.random.Generator) -> None:
    import torch
    from torch import nn

    def draw(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(tuple(shape)) * std)

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
            gain = _REGRESSION_HEAD_GAIN if name.startswith(("BboxHead.", "LandmarkHead.")) else 1.0
            module.weight.copy_(draw(module.weight.shape, gain * math.sqrt(2.0 / fan_in)))
            if module.bias is not None:
                module.bias.copy_(draw(module.bias.shape, 0.1))
            if name.startswith("ClassHead."):  # (background, face) logits per anchor: mostly background
                module.bias.view(-1, 2).add_(torch.tensor([_BACKGROUND_LOGIT_SHIFT, -_BACKGROUND_LOGIT_SHIFT]))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.from_numpy(rng.uniform(0.8, 1.2, module.num_features)))
            module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, module.num_features)))
            if name.endswith(".bn3"):  # last BN of a residual block: keep the sum's variance in check
                module.weight.mul_(0.3)


def synthetic_state_dict(variant: Variant, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """Seeded weights for ``variant`` with BatchNorm running statistics measured on synthetic images."""
    import torch
    from torch import nn

    from retinaface_export.model import build_model

    rng = np.random.default_rng(seed)
    model = build_model(variant).double()
    with torch.no_grad(), _single_thread():
        _init_weights(model, rng)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration passes
        model.train()
        model(_calibration_images(seed))
        model.eval()
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = _round_mantissa(value) if "running_" in key else value
            value = value.float()
        state[key] = value.clone()
    return state


def synthetic_checkpoint(variant: Variant, seed: int = DEFAULT_SEED) -> LoadedCheckpoint:
    """A :class:`LoadedCheckpoint` holding the synthetic model (``synthetic=True`` in its provenance)."""
    from retinaface_export.checkpoint import model_from_state_dict

    state = synthetic_state_dict(variant, seed)
    model = model_from_state_dict(state, variant, path=f"<synthetic {variant.name} seed {seed}>")
    return LoadedCheckpoint(
        model=model,
        variant=variant,
        path=None,
        file_sha256=None,
        state_dict_sha256=sha256_state_dict(state),
        synthetic=True,
    )
