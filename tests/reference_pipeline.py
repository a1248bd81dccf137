"""A direct, slow transcription of biubug6's detect.py post-processing: the test oracle.

Loops for priors (``PriorBox.forward``), torch for decode (``box_utils.decode``/``decode_landm``), the
reference NMS (``py_cpu_nms``), thresholds and top-k exactly in detect.py's order. It shares no code with
the package; with ``reference_forward`` it is the reference pipeline end to end.
"""

from __future__ import annotations

from itertools import product
from math import ceil

import numpy as np
import torch


def reference_priors(min_sizes, steps, image_size):
    anchors = []
    feature_maps = [[ceil(image_size[0] / step), ceil(image_size[1] / step)] for step in steps]
    for k, f in enumerate(feature_maps):
        for i, j in product(range(f[0]), range(f[1])):
            for min_size in min_sizes[k]:
                s_kx = min_size / image_size[1]
                s_ky = min_size / image_size[0]
                cx = (j + 0.5) * steps[k] / image_size[1]
                cy = (i + 0.5) * steps[k] / image_size[0]
                anchors += [cx, cy, s_kx, s_ky]
    return torch.Tensor(anchors).view(-1, 4)


def reference_decode(loc, priors, variances):
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1]),
        ),
        1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def reference_decode_landm(pre, priors, variances):
    return torch.cat([priors[:, :2] + pre[:, 2 * i : 2 * i + 2] * variances[0] * priors[:, 2:] for i in range(5)], 1)


def reference_nms(dets, thresh):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


def reference_detections(
    loc, conf, landms, image_hw, anchors, confidence_threshold, nms_threshold, top_k=5000, keep_top_k=750
):
    """detect.py from the forward pass on (resize = 1): N×15 rows of x1 y1 x2 y2 score + 10 landmark values."""
    im_height, im_width = image_hw
    scale = torch.Tensor([im_width, im_height, im_width, im_height])
    priors = reference_priors(anchors["min_sizes"], anchors["steps"], (im_height, im_width))
    boxes = (reference_decode(loc.squeeze(0), priors, anchors["variance"]) * scale).numpy()
    scores = conf.squeeze(0).numpy()[:, 1]
    landms = reference_decode_landm(landms.squeeze(0), priors, anchors["variance"])
    landms = (landms * torch.Tensor([im_width, im_height] * 5)).numpy()
    inds = np.where(scores > confidence_threshold)[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1][:top_k]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = reference_nms(dets, nms_threshold)
    dets, landms = dets[keep, :], landms[keep]
    return np.concatenate((dets[:keep_top_k], landms[:keep_top_k]), axis=1)
