"""A transcription of the Open Model Zoo accuracy checker's pieces that score retinaface-resnet50-pytorch.

The oracle for ``retinaface_export.omz_protocol`` (never imported by the package). Transcribed, loop for
loop, from openvinotoolkit/open_model_zoo ``tools/accuracy_checker/accuracy_checker``:

- ``annotation_converters/wider.py`` (WiderFormatConverter.convert) and ``utils.read_txt``,
  ``utils.convert_bboxes_xywh_to_x1y1x2y2``;
- ``postprocessor/cast_to_int.py`` (round_policy ``nearest``: ``np.rint``), ``postprocessor/clip_boxes.py``,
  ``postprocessor/filter.py`` (FilterByHeightRange, FilterEmpty; ``utils.in_interval``,
  ``utils.convert_to_range``; filtered annotation boxes go to ``metadata['difficult_boxes']``);
- ``metrics/overlap.py`` (IOU), ``metrics/detection.py`` (``bbox_match``, ``_prepare_annotation_boxes``,
  ``_prepare_prediction_boxes``, ``per_class_detection_statistics``, ``average_precision``, DetectionMAP's
  ``evaluate`` with ``finalize_metric_result``);

with ``models/public/retinaface-resnet50-pytorch/accuracy-check.yml``'s settings: cast_to_int, clip_boxes
size 1024 on annotations, filter on annotations (height_range "64, 1024", is_empty True), map with
ignore_difficult True, include_boundaries False, allow_multiple_matches_per_ignored False, distinct_conf
False; label map {0: background, 1: face}. Representations are reduced to the fields these use.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class Detection:
    """DetectionAnnotation / DetectionPrediction: labels, scores, box edges, metadata."""

    def __init__(self, identifier, labels, x_mins, y_mins, x_maxs, y_maxs, scores=None):
        self.identifier = identifier
        self.labels = np.array(labels)
        self.scores = np.array(scores) if scores is not None else None
        self.x_mins, self.y_mins = np.array(x_mins), np.array(y_mins)
        self.x_maxs, self.y_maxs = np.array(x_maxs), np.array(y_maxs)
        self.metadata = {}

    @property
    def boxes(self):
        return [self.x_mins, self.y_mins, self.x_maxs, self.y_maxs]


def wider_gt_text(truth) -> str:
    """``wider_face_val_bbx_gt.txt`` for ground truth loaded from the .mat files: name, count, rows.

    The official file lists an image without faces as count 0 and one row of zeros (the .mat holds one
    0 0 0 0 box for it); the six attribute columns are not used by the converter and written as 0.
    """
    lines = []
    for (event, name), boxes in zip(truth.images, truth.boxes, strict=True):
        lines.append(f"{event}/{name}.jpg")
        if len(boxes) == 1 and not boxes.any():
            lines += ["0", "0 0 0 0 0 0 0 0 0 0 "]
            continue
        lines.append(str(len(boxes)))
        lines += [" ".join(str(int(v)) for v in box) + " 0 0 0 0 0 0 " for box in boxes]
    return "\n".join(lines) + "\n"


def read_txt(content, sep="\n"):
    content = content.split(sep)
    content = list(filter(lambda string: not (not string or string.isspace()), content))
    return list(map(str.strip, content))


def convert_bboxes_xywh_to_x1y1x2y2(x_coord, y_coord, width, height):
    return x_coord, y_coord, x_coord + width, y_coord + height


def convert_wider(text, label_start=1):
    image_annotations = read_txt(text)
    image_ids = [image_id for image_id, line in enumerate(image_annotations) if ".jpg" in line]
    annotations = []
    for image_id in image_ids:
        identifier = image_annotations[image_id]
        bbox_count = image_annotations[image_id + 1]
        bbox_lines = image_annotations[image_id + 2 : image_id + 2 + int(bbox_count)]
        x_mins, y_mins, x_maxs, y_maxs = [], [], [], []
        for bbox in bbox_lines:
            x_min, y_min, x_max, y_max = convert_bboxes_xywh_to_x1y1x2y2(*(map(float, (bbox.split(" ")[0:4]))))
            x_mins.append(x_min)
            y_mins.append(y_min)
            x_maxs.append(x_max)
            y_maxs.append(y_max)
        annotations.append(Detection(identifier, [label_start] * len(x_mins), x_mins, y_mins, x_maxs, y_maxs))
    return annotations


def cast_to_int(entries):
    for entry in entries:
        entry.x_mins = np.rint(entry.x_mins)
        entry.x_maxs = np.rint(entry.x_maxs)
        entry.y_mins = np.rint(entry.y_mins)
        entry.y_maxs = np.rint(entry.y_maxs)


def clip_boxes(entries, size=1024):
    for entry in entries:
        entry.x_mins = entry.x_mins.clip(0, size)
        entry.x_maxs = entry.x_maxs.clip(0, size)
        entry.y_mins = entry.y_mins.clip(0, size)
        entry.y_maxs = entry.y_maxs.clip(0, size)


def string_to_tuple(string, casting_type=float):
    processed = string.replace(" ", "").replace("(", "").replace(")", "").split(",")
    processed = filter(lambda x: x, processed)
    return tuple(map(casting_type, processed)) if casting_type else tuple(processed)


def convert_to_range(entry):
    entry_range = entry
    if isinstance(entry, str):
        entry_range = string_to_tuple(entry_range)
    elif not isinstance(entry_range, tuple) and not isinstance(entry_range, list):
        entry_range = [entry_range]
    return entry_range


def in_interval(value, interval):
    minimum = interval[0]
    maximum = interval[1] if len(interval) >= 2 else None
    if not maximum:
        return minimum <= value
    return minimum <= value < maximum


def height_range_filter(entry, filter_arg):
    height_range_ = convert_to_range(filter_arg)
    filtered = []
    for index, (y_min, y_max) in enumerate(zip(entry.y_mins, entry.y_maxs, strict=True)):
        height = y_max - y_min
        if not in_interval(height, height_range_):
            filtered.append(index)
    return filtered


def is_empty_filter(entry, filter_arg):
    return np.where(np.bitwise_or(entry.x_maxs - entry.x_mins <= 0, entry.y_maxs - entry.y_mins <= 0))[0]


def filter_annotations(entries, filters=(("height_range", "64, 1024"), ("is_empty", True))):
    functors = {"height_range": height_range_filter, "is_empty": is_empty_filter}
    for name, argument in filters:
        for entry in entries:
            ignored = entry.metadata.setdefault("difficult_boxes", [])
            ignored.extend(functors[name](entry, argument))


def iou(prediction_box, annotation_boxes, boundary=0):
    px_min, py_min, px_max, py_max = prediction_box
    ax_mins, ay_mins, ax_maxs, ay_maxs = annotation_boxes
    x_mins = np.maximum(ax_mins, px_min)
    y_mins = np.maximum(ay_mins, py_min)
    x_maxs = np.minimum(ax_maxs, px_max)
    y_maxs = np.minimum(ay_maxs, py_max)
    intersections = x_mins, y_mins, np.maximum(x_mins, x_maxs), np.maximum(y_mins, y_maxs)

    def area(box):
        x0, y0, x1, y1 = box
        return (x1 - x0 + boundary) * (y1 - y0 + boundary)

    intersections_area = area(intersections)
    unions = area(prediction_box) + area(annotation_boxes) - intersections_area
    return np.divide(intersections_area, unions, out=np.zeros_like(intersections_area, dtype=float), where=unions != 0)


def _prepare_annotation_boxes(annotation, ignore_difficult, label):
    used_boxes = {}
    difficult_boxes = {}
    num_ground_truth = 0
    for ground_truth in annotation:
        idx_for_label = ground_truth.labels == label
        filtered_label = ground_truth.labels[idx_for_label]
        used_ = np.zeros_like(filtered_label)
        used_boxes[ground_truth.identifier] = used_
        num_ground_truth += used_.shape[0]
        difficult_box_mask = np.full_like(ground_truth.labels, False)
        difficult_box_indices = ground_truth.metadata.get("difficult_boxes", [])
        if ignore_difficult:
            difficult_box_mask[difficult_box_indices] = True
        difficult_box_mask = difficult_box_mask[idx_for_label]
        difficult_boxes[ground_truth.identifier] = difficult_box_mask
        if ignore_difficult:  # noqa: SIM102 (as the checker has it)
            if np.size(difficult_box_mask) > 0:
                num_ground_truth -= np.sum(difficult_box_mask)
    return used_boxes, num_ground_truth, difficult_boxes


def _prepare_prediction_boxes(label, predictions, ignore_difficult):
    prediction_images = []
    prediction_boxes = []
    difficult_boxes = []
    all_label_indices = []
    index_counter = 0
    for i, prediction in enumerate(predictions):
        idx = prediction.labels == label
        label_indices = [det + index_counter for det, lab in enumerate(prediction.labels) if lab == label]
        all_label_indices.extend(label_indices)
        index_counter += len(prediction.labels)
        prediction_images.append(np.full(prediction.labels[idx].shape, i))
        prediction_boxes.append(
            np.c_[
                prediction.scores[idx],
                prediction.x_mins[idx],
                prediction.y_mins[idx],
                prediction.x_maxs[idx],
                prediction.y_maxs[idx],
            ]
        )
        difficult_box_mask = np.full_like(prediction.labels, False)
        difficult_box_indices = prediction.metadata.get("difficult_boxes", [])
        if ignore_difficult:
            difficult_box_mask[difficult_box_indices] = True
        difficult_boxes.append(difficult_box_mask)
    prediction_boxes = np.concatenate(prediction_boxes)
    difficult_boxes = np.concatenate(difficult_boxes)
    sorted_order = np.argsort(-prediction_boxes[:, 0])
    prediction_boxes = prediction_boxes[sorted_order]
    prediction_images = np.concatenate(prediction_images)[sorted_order]
    difficult_boxes = difficult_boxes[all_label_indices]
    difficult_boxes = difficult_boxes[sorted_order]
    return prediction_boxes, prediction_images, difficult_boxes


def bbox_match(
    annotation,
    prediction,
    label,
    overlap_thresh=0.5,
    ignore_difficult=True,
    allow_multiple_matches_per_ignored=False,
    include_boundaries=False,
    use_filtered_tp=False,
):
    used_boxes, number_ground_truth, difficult_boxes_annotation = _prepare_annotation_boxes(
        annotation, ignore_difficult, label
    )
    prediction_boxes, prediction_images, difficult_boxes_prediction = _prepare_prediction_boxes(
        label, prediction, ignore_difficult
    )
    tp = np.zeros_like(prediction_images)
    fp = np.zeros_like(prediction_images)
    max_overlapped_dt = defaultdict(list)
    boundary = 1 if include_boundaries else 0
    for image in range(prediction_images.shape[0]):
        gt_img = annotation[prediction_images[image]]
        annotation_difficult = difficult_boxes_annotation[gt_img.identifier]
        used = used_boxes[gt_img.identifier]
        idx = gt_img.labels == label
        if not np.array(idx).any():
            fp[image] = 1
            continue
        prediction_box = prediction_boxes[image][1:]
        annotation_boxes = gt_img.x_mins[idx], gt_img.y_mins[idx], gt_img.x_maxs[idx], gt_img.y_maxs[idx]
        overlaps = iou(prediction_box, annotation_boxes, boundary)
        assert not (ignore_difficult and allow_multiple_matches_per_ignored)  # the IOA branch is not transcribed
        max_overlap = -np.inf
        not_ignored_overlaps = overlaps[np.where(annotation_difficult == 0)[0]]
        ignored_overlaps = overlaps[np.where(annotation_difficult == 1)[0]]
        if not_ignored_overlaps.size:
            max_overlap = np.max(not_ignored_overlaps)
        if max_overlap < overlap_thresh and ignored_overlaps.size:
            max_overlap = np.max(ignored_overlaps)
        max_overlapped = np.where(overlaps == max_overlap)[0]

        def set_false_positive(box_index):
            is_box_difficult = difficult_boxes_prediction[box_index].any()
            return int(not ignore_difficult or not is_box_difficult)

        if max_overlap < overlap_thresh:
            fp[image] = set_false_positive(image)
            continue
        if not annotation_difficult[max_overlapped].any():
            if not used[max_overlapped].any():
                if not ignore_difficult or use_filtered_tp or not difficult_boxes_prediction[image].any():
                    tp[image] = 1
                    used[max_overlapped] = True
                    max_overlapped_dt[image].append(max_overlapped)
            else:
                fp[image] = set_false_positive(image)
        elif not allow_multiple_matches_per_ignored:
            if used[max_overlapped].any():
                fp[image] = set_false_positive(image)
            used[max_overlapped] = True
    return tp, fp, prediction_boxes[:, 0], number_ground_truth


def average_precision(precision, recall):
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    for i in range(precision.size - 1, 0, -1):
        precision[i - 1] = np.maximum(precision[i - 1], precision[i])
    change_point = np.where(recall[1:] != recall[:-1])[0]
    return np.sum((recall[change_point + 1] - recall[change_point]) * precision[change_point + 1])


def detection_map(annotations, predictions, distinct_conf=False, label_map=None):
    """DetectionMAP.evaluate: the mean over valid labels of each label's AP (NaN ones dropped; none: 0)."""
    label_map = label_map or {0: "__background__", 1: "face"}
    average_precisions = []
    for label in [lab for lab in label_map if lab != 0]:
        tp, fp, conf, n = bbox_match(annotations, predictions, int(label))
        if not tp.size:
            average_precisions.append(np.nan)
            continue
        if distinct_conf:
            distinct_value_indices = np.where(np.diff(conf))[0]
            threshold_indexes = np.r_[distinct_value_indices, tp.size - 1]
        else:
            threshold_indexes = np.arange(conf.size)
        tp, fp = np.cumsum(tp)[threshold_indexes], np.cumsum(fp)[threshold_indexes]
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        recall = tp / np.maximum(n, np.finfo(float).eps)
        average_precisions.append(average_precision(precision, recall) if recall.size else np.nan)
    average_precisions = [value for value in average_precisions if not np.isnan(value)]
    if not average_precisions:
        average_precisions.append(0)
    return float(np.mean(average_precisions))


def retinaface_resnet50_map(truth, predictions) -> float:
    """The whole pipeline on WIDER-format predictions (one N×5 x y w h score per image, truth order).

    Predictions become DetectionPredictions the way the converter makes annotations: x2 = x + w.
    """
    annotations = convert_wider(wider_gt_text(truth))
    detections = []
    for annotation, rows in zip(annotations, predictions, strict=True):
        x, y, w, h, s = (rows[:, i] for i in range(5))
        detections.append(Detection(annotation.identifier, np.full(len(rows), 1, dtype=int), x, y, x + w, y + h, s))
    cast_to_int(annotations + detections)  # no apply_to: both sides
    clip_boxes(annotations, 1024)  # apply_to: annotation
    filter_annotations(annotations)  # apply_to: annotation
    return detection_map(annotations, detections)
