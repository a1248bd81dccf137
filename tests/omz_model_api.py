"""Open Model Zoo's ``RetinaFacePyTorch`` model wrapper, transcribed for the tests (never part of the package).

Transcribed, trimmed to what ``tests/test_omz_client.py`` needs, from the OpenVINO Model API
(github.com/openvinotoolkit/model_api, ``model_api/python/model_api``, commit 16818b02f3e92a426b436cf20b1d462884e75855,
the last before ``RetinaFacePyTorch`` was removed as an obsolete OMZ wrapper). It is the same wrapper as Open Model
Zoo's ``demos/common/python/model_zoo/model_api/models/retinaface.py``; the Model API is the one that configures it
from the IR's ``rt_info/model_info`` (``Model._load_config``). Apache License 2.0, Copyright (C) 2020-2024 Intel
Corporation.

What is kept, verbatim in behaviour:

- ``Model._load_config``: every wrapper parameter read from ``rt_info/model_info/<name>`` and parsed by its type's
  ``from_str`` (``types.py``); a missing entry keeps the wrapper's default (``ImageModel``, ``DetectionModel`` and
  ``RetinaFacePyTorch.parameters``: ``resize_type standard``, ``confidence_threshold 0.5``, ``pad_value 0``).
- ``ImageModel`` pre-processing. The Model API embeds it into the graph (``embed_preprocessing``: resize, then
  ``mean``/``scale``); its OpenCV twins in ``adapters/utils.py`` (``RESIZE_TYPES``: ``resize_image_ocv``,
  ``resize_image_with_aspect_ocv``, ``resize_image_letterbox_ocv``) are what OMZ's demos run, and what this file
  runs, followed by ``InputTransform`` and the HWC → NCHW change of layout.
- ``RetinaFacePyTorch.postprocess`` with ``RetinaFacePyTorchPostprocessor`` (priors, decode, threshold, ``nms``
  at 0.5 without the +1, the division by ``resized_shape / original_shape``) and ``clip_detections``. The
  Model API's ``preprocess`` reports ``resized_shape`` as the network size whatever the resize, so boxes are
  mapped back with the stretch ratios only.

Left out: adapters, async pipelines, landmarks (the faces are compared by box), labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product
from typing import Any

import cv2
import numpy as np

# --- types.py: how a model_info string becomes a parameter value -------------------------------------------------


def list_from_str(value: str) -> list:
    try:
        floats = [float(i) for i in value.split()]
        try:
            ints = [int(i) for i in value.split()]
        except ValueError:
            return floats
        return ints if floats == ints else floats
    except ValueError:
        return value.split()


def bool_from_str(value: str) -> bool:
    return value == "YES" or value == "True"


# name -> (from_str, default): ImageModel + DetectionModel parameters with RetinaFacePyTorch's defaults
PARAMETERS: dict[str, tuple[Any, Any]] = {
    "embedded_processing": (bool_from_str, False),
    "mean_values": (list_from_str, []),
    "scale_values": (list_from_str, []),
    "reverse_input_channels": (bool_from_str, False),
    "resize_type": (str, "standard"),
    "pad_value": (int, 0),
    "confidence_threshold": (float, 0.5),
    "labels": (list_from_str, ["Face"]),
}


def load_config(model_info: dict[str, str]) -> dict[str, Any]:
    """``Model._load_config`` with no user configuration: ``rt_info/model_info`` alone."""
    config = {name: default for name, (_, default) in PARAMETERS.items()}
    for name, (from_str, _) in PARAMETERS.items():
        if name in model_info:
            config[name] = from_str(model_info[name])
    return config


# --- adapters/utils.py: resizes and InputTransform ----------------------------------------------------------------


def resize_image_ocv(image, size, keep_aspect_ratio=False, is_pad=False, pad_value=0, interpolation=cv2.INTER_LINEAR):
    if keep_aspect_ratio:
        h, w = image.shape[:2]
        scale = min(size[1] / h, size[0] / w)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
        if is_pad:
            nh, nw = image.shape[:2]
            ph, pw = max(0, size[1] - nh), max(0, size[0] - nw)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="constant", constant_values=pad_value)
        return image
    return cv2.resize(image, size, interpolation=interpolation)


def resize_image_with_aspect_ocv(image, size, interpolation=cv2.INTER_LINEAR, pad_value=0):
    return resize_image_ocv(image, size, keep_aspect_ratio=True, is_pad=True, pad_value=pad_value)


def resize_image_letterbox_ocv(image, size, interpolation=cv2.INTER_LINEAR, pad_value=0):
    ih, iw = image.shape[0:2]
    w, h = size
    scale = min(w / iw, h / ih)
    nw = round(iw * scale)
    nh = round(ih * scale)
    image = cv2.resize(image, (nw, nh), interpolation=interpolation)
    dx = (w - nw) // 2
    dy = (h - nh) // 2
    return np.pad(image, ((dy, h - nh - dy), (dx, w - nw - dx), (0, 0)), mode="constant", constant_values=pad_value)


RESIZE_TYPES = {
    "standard": lambda image, size, pad_value: resize_image_ocv(image, size),
    "fit_to_window": lambda image, size, pad_value: resize_image_with_aspect_ocv(image, size, pad_value=pad_value),
    "fit_to_window_letterbox": lambda image, size, pad_value: resize_image_letterbox_ocv(
        image, size, pad_value=pad_value
    ),
}


class InputTransform:
    def __init__(self, reverse_input_channels=False, mean_values=None, scale_values=None):
        self.reverse_input_channels = reverse_input_channels
        self.is_trivial = not (reverse_input_channels or mean_values or scale_values)
        self.means = np.array(mean_values, dtype=np.float32) if mean_values else np.array([0.0, 0.0, 0.0])
        self.std_scales = np.array(scale_values, dtype=np.float32) if scale_values else np.array([1.0, 1.0, 1.0])

    def __call__(self, inputs):
        if self.is_trivial:
            return inputs
        if self.reverse_input_channels:
            inputs = cv2.cvtColor(inputs, cv2.COLOR_BGR2RGB)
        return (inputs - self.means) / self.std_scales


# --- models/utils.py: nms, Detection, clip_detections -------------------------------------------------------------


@dataclass
class Detection:
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    score: float


def nms(x1, y1, x2, y2, scores, thresh, include_boundaries=False, keep_top_k=0):
    b = 1 if include_boundaries else 0
    areas = (x2 - x1 + b) * (y2 - y1 + b)
    order = scores.argsort()[::-1]
    if keep_top_k:
        order = order[:keep_top_k]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + b)
        h = np.maximum(0.0, yy2 - yy1 + b)
        intersection = w * h
        union_areas = areas[i] + areas[order[1:]] - intersection
        overlap = np.divide(
            intersection, union_areas, out=np.zeros_like(intersection, dtype=float), where=union_areas != 0
        )
        order = order[np.where(overlap <= thresh)[0] + 1]
    return keep


def clip_detections(detections, size):
    for detection in detections:
        detection.xmin = min(max(round(detection.xmin), 0), size[1])
        detection.ymin = min(max(round(detection.ymin), 0), size[0])
        detection.xmax = min(max(round(detection.xmax), 0), size[1])
        detection.ymax = min(max(round(detection.ymax), 0), size[0])
    return detections


# --- models/retinaface.py: RetinaFacePyTorchPostprocessor (boxes only) --------------------------------------------


class RetinaFacePyTorchPostprocessor:
    def __init__(self, process_landmarks=True):
        self._process_landmarks = process_landmarks
        self.nms_threshold = 0.5 if process_landmarks else 0.3
        self.variance = [0.1, 0.2]

    def process_output(self, raw_output, scale_x, scale_y, face_prob_threshold, image_size):
        bboxes_output = next(raw_output[name][0] for name in raw_output if re.search(".bbox.", name))
        scores_output = next(raw_output[name][0] for name in raw_output if re.search(".cls.", name))
        prior_data = self.generate_prior_data(image_size)
        proposals = self._get_proposals(bboxes_output, prior_data, image_size)
        scores = scores_output[:, 1]
        filter_idx = np.where(scores > face_prob_threshold)[0]
        proposals = proposals[filter_idx]
        scores = scores[filter_idx]
        if np.size(scores) > 0:
            x_mins, y_mins, x_maxs, y_maxs = proposals.T
            keep = nms(
                x_mins,
                y_mins,
                x_maxs,
                y_maxs,
                scores,
                self.nms_threshold,
                include_boundaries=not self._process_landmarks,
            )
            proposals = proposals[keep]
            scores = scores[keep]
        result = []
        if np.size(scores) != 0:
            scores = np.reshape(scores, -1)
            x_mins, y_mins, x_maxs, y_maxs = np.array(proposals).T
            x_mins /= scale_x
            x_maxs /= scale_x
            y_mins /= scale_y
            y_maxs /= scale_y
            for x_min, y_min, x_max, y_max, score in zip(x_mins, y_mins, x_maxs, y_maxs, scores, strict=False):
                result.append(Detection(x_min, y_min, x_max, y_max, score))
        return result

    @staticmethod
    def generate_prior_data(image_size):
        global_min_sizes = [[16, 32], [64, 128], [256, 512]]
        steps = [8, 16, 32]
        anchors = []
        feature_maps = [[int(np.rint(image_size[0] / step)), int(np.rint(image_size[1] / step))] for step in steps]
        for idx, feature_map in enumerate(feature_maps):
            min_sizes = global_min_sizes[idx]
            for i, j in product(range(feature_map[0]), range(feature_map[1])):
                for min_size in min_sizes:
                    s_kx = min_size / image_size[1]
                    s_ky = min_size / image_size[0]
                    dense_cx = [x * steps[idx] / image_size[1] for x in [j + 0.5]]
                    dense_cy = [y * steps[idx] / image_size[0] for y in [i + 0.5]]
                    for cy, cx in product(dense_cy, dense_cx):
                        anchors += [cx, cy, s_kx, s_ky]
        return np.array(anchors).reshape((-1, 4))

    def _get_proposals(self, raw_boxes, priors, image_size):
        proposals = self.decode_boxes(raw_boxes, priors, self.variance)
        proposals[:, ::2] = proposals[:, ::2] * image_size[1]
        proposals[:, 1::2] = proposals[:, 1::2] * image_size[0]
        return proposals

    @staticmethod
    def decode_boxes(raw_boxes, priors, variance):
        boxes = np.concatenate(
            (
                priors[:, :2] + raw_boxes[:, :2] * variance[0] * priors[:, 2:],
                priors[:, 2:] * np.exp(raw_boxes[:, 2:] * variance[1]),
            ),
            1,
        )
        boxes[:, :2] -= boxes[:, 2:] / 2
        boxes[:, 2:] += boxes[:, :2]
        return boxes


# --- the wrapper: ImageModel.preprocess + RetinaFacePyTorch.postprocess --------------------------------------------


class RetinaFacePyTorch:
    """``RetinaFacePyTorch`` configured from ``model_info`` alone, over any ``infer(inputs) -> {name: array}``."""

    def __init__(self, model_info: dict[str, str], input_name: str, input_shape: tuple[int, ...], nchw: bool, infer):
        if model_info.get("model_type", "").lower() != "retinaface-pytorch":  # Model.create_model picks by this
            raise ValueError(f"model_type {model_info.get('model_type')!r} does not select RetinaFacePyTorch")
        self.config = load_config(model_info)
        self.input_name, self.nchw, self.infer = input_name, nchw, infer
        if nchw:
            _, self.c, self.h, self.w = input_shape
        else:
            _, self.h, self.w, self.c = input_shape
        self.resize = RESIZE_TYPES[self.config["resize_type"]]
        self.input_transform = InputTransform(
            self.config["reverse_input_channels"], self.config["mean_values"], self.config["scale_values"]
        )
        self.postprocessor = RetinaFacePyTorchPostprocessor(process_landmarks=True)

    def preprocess(self, image: np.ndarray):
        meta = {"original_shape": image.shape}
        resized = self.resize(image, (self.w, self.h), self.config["pad_value"])
        meta["resized_shape"] = (self.w, self.h, self.c)  # Model API's ImageModel.preprocess
        data = self.input_transform(resized)
        data = data.transpose((2, 0, 1))[None] if self.nchw else data[None]
        return {self.input_name: data}, meta

    def postprocess(self, outputs, meta):
        scale_x = meta["resized_shape"][1] / meta["original_shape"][1]
        scale_y = meta["resized_shape"][0] / meta["original_shape"][0]
        detections = self.postprocessor.process_output(
            outputs, scale_x, scale_y, self.config["confidence_threshold"], meta["resized_shape"][:2]
        )
        return clip_detections(detections, meta["original_shape"])

    def __call__(self, image: np.ndarray) -> list[Detection]:
        inputs, meta = self.preprocess(image)
        return self.postprocess(self.infer(inputs), meta)
