"""TorchScript RetinaFace with decode or decode + NMS inside (the ``postprocess_onnx`` outputs, in torch).

The network stays the trace ``converters/torchscript`` makes; the post-processing around it is scripted,
because thresholding, NMS and the per-image loop depend on the data and a trace would freeze one path.

NMS is written here in torch: torchvision, whose ``ops.nms`` is the usual choice, has no CPU build on
these machines (the model code avoids it for the same reason), and it has no ``+1`` pixel convention, so
it would need the ``x2 + 1`` trick with its extra float32 rounding anyway. This one evaluates
``py_cpu_nms``'s float32 expressions (``+1`` areas and overlaps, suppression at IoU > threshold) and
keeps exactly its greedy result, vectorised: candidates are taken in blocks (``greedy_nms``) by
descending score; a block first loses the boxes that faces kept in earlier blocks suppress, then its own
greedy pass is solved as the fixed point of "kept = alive and not suppressed by a kept better box" over
the block's IoU matrix (each round fixes at least the next undecided box, so it ends, and the greedy
result is the only fixed point). It stops once ``max_detections`` faces are kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retinaface_export.anchors import AnchorConfig
from retinaface_export.detection.priors import prior_boxes
from retinaface_export.postprocess.settings import DETECTION_WIDTH, NmsSettings, PostprocessMode, check_mode
from retinaface_export.sizes import InputSize


def torch_priors(height: int, width: int, steps: list[int], min_sizes: list[list[int]]) -> Tensor:
    """Priors A×4 ``(cx, cy, w, h)`` for an input size: ``detection.priors.prior_boxes`` in torch.

    Computed in float64 and rounded to float32 like the numpy version, so the two are equal.
    """
    levels: list[Tensor] = []
    for level in range(len(steps)):
        step = steps[level]
        rows = (height + step - 1) // step
        cols = (width + step - 1) // step
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        sizes = torch.tensor(min_sizes[level], dtype=torch.float64)
        count = sizes.numel()
        parts = [
            cx.view(1, cols, 1).expand(rows, cols, count),
            cy.view(rows, 1, 1).expand(rows, cols, count),
            (sizes / width).view(1, 1, count).expand(rows, cols, count),
            (sizes / height).view(1, 1, count).expand(rows, cols, count),
        ]
        levels.append(torch.stack(parts, dim=-1).reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)


def _pairwise_iou(boxes: Tensor, areas: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``py_cpu_nms``'s IoU (``+1`` convention, float32) between the boxes ``rows`` and ``cols``."""
    a, b = boxes[rows].unsqueeze(1), boxes[cols].unsqueeze(0)
    w = torch.clamp(torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1, min=0.0)
    h = torch.clamp(torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1, min=0.0)
    inter = w * h
    return inter / (areas[rows].unsqueeze(1) + areas[cols].unsqueeze(0) - inter)


def greedy_nms(boxes: Tensor, threshold: float, limit: int, block_size: int = 256) -> Tensor:
    """Indices kept by ``py_cpu_nms`` on ``boxes`` (K×4 pixels) already sorted best first, at most ``limit``.

    ``block_size`` candidates are decided at a time: a 256² IoU matrix is 256 KB, and chains of boxes
    that suppress each other in turn (each costs one fixed-point round) are short within a block.
    """
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    kept = torch.zeros(0, dtype=torch.long)
    count = boxes.size(0)
    start = 0
    while start < count and kept.numel() < limit:
        block = torch.arange(start, min(start + block_size, count))
        alive = torch.logical_not((_pairwise_iou(boxes, areas, kept, block) > threshold).any(0))
        suppresses = torch.triu(_pairwise_iou(boxes, areas, block, block) > threshold, diagonal=1)
        keep = alive
        while True:
            updated = alive & torch.logical_not((suppresses & keep.unsqueeze(1)).any(0))
            if torch.equal(updated, keep):
                break
            keep = updated
        kept = torch.cat([kept, block[keep]])
        start += block_size
    return kept[:limit]


def decode_rows(
    loc: Tensor, pre: Tensor, priors: Tensor, scale_xy: Tensor, variance0: float, variance1: float
) -> tuple[Tensor, Tensor]:
    """Regressions (…×4, …×10) with their priors (…×4) to pixel boxes and landmarks (``detection.postprocess``)."""
    prior_xy, prior_wh = priors[..., :2], priors[..., 2:]
    centres = prior_xy + loc[..., :2] * variance0 * prior_wh
    sizes = prior_wh * torch.exp(loc[..., 2:] * variance1)
    top_left = centres - sizes / 2
    boxes = torch.cat([top_left, top_left + sizes], dim=-1) * scale_xy.repeat(2)
    offsets = pre.unflatten(-1, [5, 2]) * variance0 * prior_wh.unsqueeze(-2)
    landmarks = ((prior_xy.unsqueeze(-2) + offsets) * scale_xy).flatten(-2)
    return boxes, landmarks


class _Priors(nn.Module):
    """Priors for the input's size: a stored constant at a fixed size, else computed per call."""

    def __init__(self, anchors: AnchorConfig, size: InputSize | None) -> None:
        super().__init__()
        self.steps = list(anchors.steps)
        self.min_sizes = [list(sizes) for sizes in anchors.min_sizes]
        self.height = size.height if size else 0
        self.width = size.width if size else 0
        fixed = torch.from_numpy(prior_boxes(anchors, size.height, size.width).copy()) if size else None
        self.register_buffer("fixed", fixed)

    def forward(self, height: int, width: int) -> Tensor:
        fixed = self.fixed
        if fixed is None:
            return torch_priors(height, width, self.steps, self.min_sizes)
        if height != self.height or width != self.width:
            raise RuntimeError(f"this model takes {self.height}x{self.width} inputs, got {height}x{width}")
        return fixed


class DecodedRetinaFace(nn.Module):
    """``data`` → ``boxes`` N×A×4, ``scores`` N×A, ``landmarks`` N×A×10 (input pixels)."""

    def __init__(self, network: nn.Module, anchors: AnchorConfig, size: InputSize | None) -> None:
        super().__init__()
        self.network = network
        self.priors = _Priors(anchors, size)
        self.variance0, self.variance1 = float(anchors.variance[0]), float(anchors.variance[1])

    def forward(self, data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        loc, conf, pre = self.network(data)
        height, width = data.size(2), data.size(3)
        scale = torch.tensor([float(width), float(height)], dtype=torch.float32)
        priors = self.priors(height, width)
        boxes, landmarks = decode_rows(loc, pre, priors, scale, self.variance0, self.variance1)
        return boxes, conf[..., 1], landmarks


class NmsRetinaFace(nn.Module):
    """``data`` → ``detections`` N×K×15 (zero-padded), ``num_detections`` N (int64); see ``postprocess_settings``.

    Per image, as ``detection.postprocess``: threshold, top-k, decode of those candidates only, NMS, keep-top-k.
    """

    def __init__(self, network: nn.Module, anchors: AnchorConfig, settings: NmsSettings, size: InputSize | None):
        super().__init__()
        self.network = network
        self.priors = _Priors(anchors, size)
        self.variance0, self.variance1 = float(anchors.variance[0]), float(anchors.variance[1])
        self.score_threshold = float(settings.score_threshold)
        self.nms_iou = float(settings.nms_iou)
        self.top_k = int(settings.top_k)
        self.max_detections = int(settings.max_detections)
        self.row_width = DETECTION_WIDTH

    def forward(self, data: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf, pre = self.network(data)
        height, width = data.size(2), data.size(3)
        scale = torch.tensor([float(width), float(height)], dtype=torch.float32)
        priors = self.priors(height, width)
        batch = data.size(0)
        detections = torch.zeros(batch, self.max_detections, self.row_width, dtype=torch.float32)
        counts = torch.zeros(batch, dtype=torch.long)
        for image in range(batch):
            scores = conf[image, :, 1]
            candidates = torch.nonzero(scores > self.score_threshold).squeeze(1)
            order = torch.argsort(scores[candidates], descending=True, stable=True)[: self.top_k]
            candidates = candidates[order]
            boxes, landmarks = decode_rows(
                loc[image][candidates],
                pre[image][candidates],
                priors[candidates],
                scale,
                self.variance0,
                self.variance1,
            )
            keep = greedy_nms(boxes, self.nms_iou, self.max_detections)
            rows = torch.cat([boxes[keep], scores[candidates][keep].unsqueeze(1), landmarks[keep]], dim=1)
            detections[image, : keep.numel()] = rows
            counts[image] = keep.numel()
        return detections, counts


def script_with_postprocess(
    network: torch.jit.ScriptModule,
    anchors: AnchorConfig,
    mode: str,
    settings: NmsSettings | None = None,
    size: InputSize | None = None,
) -> torch.jit.ScriptModule:
    """The traced network with ``mode``'s post-processing around it, scripted (``none``: the trace itself).

    Args:
        network: ``torch.jit.trace`` of the RetinaFace (as ``converters/torchscript`` makes it).
        anchors: the checkpoint's anchors.
        mode: ``none``, ``decode`` or ``nms``.
        settings: thresholds of ``nms`` (default :class:`NmsSettings`).
        size: the fixed input size (priors stored as a constant, other sizes refused); None: priors from
            each input's size.

    Raises:
        UsageError: an unknown mode.
    """
    check_mode(mode)
    if mode == PostprocessMode.NONE:
        return network
    if mode == PostprocessMode.DECODE:
        wrapper: nn.Module = DecodedRetinaFace(network, anchors, size)
    else:
        wrapper = NmsRetinaFace(network, anchors, settings or NmsSettings(), size)
    return torch.jit.script(wrapper.eval())
