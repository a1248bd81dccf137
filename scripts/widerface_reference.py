"""A slow, direct transcription of biubug6's widerface_evaluate/evaluation.py, for ``bench_eval.py`` to time.

Loops as the reference has them (per prediction, per threshold); ``bbox_overlaps`` transcribes its Cython
kernel element by element. :func:`reference_evaluate` works on in-memory ground truth in the loader's
layout; :func:`evaluation` is the original's whole command (read every prediction file line by line, load
the four .mat files with scipy, score), and running this file runs it as the original's ``evaluation.py``
does (``-p PRED_DIR -g GT_DIR``), without its progress bars. It is also the tests' oracle
(``tests/reference_evaluation.py`` loads it from here: scripts do not import from ``tests/``), and
``bench_eval.py`` fails when it and the package disagree on any AP.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def bbox_overlaps(boxes, query_boxes):
    """IoU matrix with the +1 pixel convention, element by element (the reference's Cython kernel)."""
    n, k = boxes.shape[0], query_boxes.shape[0]
    overlaps = np.zeros((n, k), dtype=float)
    for kk in range(k):
        box_area = (query_boxes[kk, 2] - query_boxes[kk, 0] + 1) * (query_boxes[kk, 3] - query_boxes[kk, 1] + 1)
        for nn in range(n):
            iw = min(boxes[nn, 2], query_boxes[kk, 2]) - max(boxes[nn, 0], query_boxes[kk, 0]) + 1
            if iw > 0:
                ih = min(boxes[nn, 3], query_boxes[kk, 3]) - max(boxes[nn, 1], query_boxes[kk, 1]) + 1
                if ih > 0:
                    ua = float(
                        (boxes[nn, 2] - boxes[nn, 0] + 1) * (boxes[nn, 3] - boxes[nn, 1] + 1) + box_area - iw * ih
                    )
                    overlaps[nn, kk] = iw * ih / ua
    return overlaps


def norm_score(pred):
    """Scores rescaled to [0, 1] over the whole prediction set, in place."""
    max_score, min_score = 0, 1
    for v in pred:
        if len(v) == 0:
            continue
        max_score = max(np.max(v[:, -1]), max_score)
        min_score = min(np.min(v[:, -1]), min_score)
    diff = max_score - min_score
    for v in pred:
        if len(v) == 0:
            continue
        v[:, -1] = (v[:, -1] - min_score) / diff


def image_eval(pred, gt, ignore, iou_thresh, overlaps_fn=bbox_overlaps):
    """Per prediction, the recall so far and whether it hit an ignored face."""
    _pred, _gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = overlaps_fn(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    """Proposals and recalled faces at each of ``thresh_num`` score thresholds."""
    pr_info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[: r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def voc_ap(rec, prec):
    """VOC average precision (area under the interpolated precision/recall curve)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_evaluate(predictions, boxes, keep, iou_thresh=0.5, overlaps_fn=bbox_overlaps):
    """predictions[i]: N×5 (x y w h score); boxes[i]: K×4; keep[setting][i]: 1-based kept indices.

    ``overlaps_fn`` replaces the element-by-element kernel (the reference compiles it with Cython; a
    vectorised one stands in for that speed in benchmarks).
    """
    pred = [p.copy() for p in predictions]
    norm_score(pred)
    thresh_num = 1000
    aps = {}
    for setting in ("easy", "medium", "hard"):
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for pred_info, gt_boxes, keep_index in zip(pred, boxes, keep[setting], strict=True):
            gt_boxes = gt_boxes.astype("float")
            count_face += len(keep_index)
            if len(gt_boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = np.zeros(gt_boxes.shape[0])
            if len(keep_index) != 0:
                ignore[keep_index - 1] = 1
            pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, iou_thresh, overlaps_fn)
            pr_curve += img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        _pr_curve = np.zeros((thresh_num, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(thresh_num):
                _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
                _pr_curve[i, 1] = pr_curve[i, 1] / count_face
        aps[setting] = voc_ap(_pr_curve[:, 1], _pr_curve[:, 0])
    return aps


def get_gt_boxes(gt_dir):
    """The original's ground-truth loader: the four .mat files, whole, with scipy."""
    from scipy.io import loadmat

    gt_mat = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    hard_mat = loadmat(os.path.join(gt_dir, "wider_hard_val.mat"))
    medium_mat = loadmat(os.path.join(gt_dir, "wider_medium_val.mat"))
    easy_mat = loadmat(os.path.join(gt_dir, "wider_easy_val.mat"))
    facebox_list = gt_mat["face_bbx_list"]
    event_list = gt_mat["event_list"]
    file_list = gt_mat["file_list"]
    hard_gt_list = hard_mat["gt_list"]
    medium_gt_list = medium_mat["gt_list"]
    easy_gt_list = easy_mat["gt_list"]
    return facebox_list, event_list, file_list, hard_gt_list, medium_gt_list, easy_gt_list


def read_pred_file(filepath):
    """The original's reader: one line at a time, the first five fields of each as floats."""
    with open(filepath) as f:
        lines = f.readlines()
        img_file = lines[0].rstrip("\n\r")
        lines = lines[2:]
    boxes = []
    for line in lines:
        line = line.rstrip("\r\n").split(" ")
        if line[0] == "":
            continue
        boxes.append([float(line[0]), float(line[1]), float(line[2]), float(line[3]), float(line[4])])
    boxes = np.array(boxes)
    return img_file.split("/")[-1], boxes


def get_preds(pred_dir):
    """{event: {image key: N×5}} of every file of every event folder."""
    events = os.listdir(pred_dir)
    boxes = dict()
    for event in events:
        event_dir = os.path.join(pred_dir, event)
        event_images = os.listdir(event_dir)
        current_event = dict()
        for imgtxt in event_images:
            imgname, _boxes = read_pred_file(os.path.join(event_dir, imgtxt))
            current_event[imgname.rstrip(".jpg")] = _boxes
        boxes[event] = current_event
    return boxes


def norm_score_nested(pred):
    """The original's norm_score, over {event: {image: boxes}}."""
    max_score, min_score = 0, 1
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            max_score = max(np.max(v[:, -1]), max_score)
            min_score = min(np.min(v[:, -1]), min_score)
    diff = max_score - min_score
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            v[:, -1] = (v[:, -1] - min_score) / diff


def evaluation(pred, gt_path, iou_thresh=0.5, overlaps_fn=bbox_overlaps):
    """The original's whole evaluation: {setting: AP} of a prediction folder against a ground-truth folder."""
    pred = get_preds(pred)
    norm_score_nested(pred)
    facebox_list, event_list, file_list, hard_gt_list, medium_gt_list, easy_gt_list = get_gt_boxes(gt_path)
    event_num = len(event_list)
    thresh_num = 1000
    settings = ["easy", "medium", "hard"]
    setting_gts = [easy_gt_list, medium_gt_list, hard_gt_list]
    aps = {}
    for setting_id in range(3):
        gt_list = setting_gts[setting_id]
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for i in range(event_num):
            event_name = str(event_list[i][0][0])
            img_list = file_list[i][0]
            pred_list = pred[event_name]
            sub_gt_list = gt_list[i][0]
            gt_bbx_list = facebox_list[i][0]
            for j in range(len(img_list)):
                pred_info = pred_list[str(img_list[j][0][0])]
                gt_boxes = gt_bbx_list[j][0].astype("float")
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, iou_thresh, overlaps_fn)
                pr_curve += img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        _pr_curve = np.zeros((thresh_num, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(thresh_num):
                _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
                _pr_curve[i, 1] = pr_curve[i, 1] / count_face
        aps[settings[setting_id]] = voc_ap(_pr_curve[:, 1], _pr_curve[:, 0])
    return aps


def vectorised_overlaps(boxes, query_boxes):
    """The Cython kernel's arithmetic, broadcast (stands in for its compiled speed)."""
    iw = np.minimum(boxes[:, None, 2], query_boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], query_boxes[None, :, 0])
    ih = np.minimum(boxes[:, None, 3], query_boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], query_boxes[None, :, 1])
    iw, ih = iw + 1, ih + 1
    box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    query_area = (query_boxes[:, 2] - query_boxes[:, 0] + 1) * (query_boxes[:, 3] - query_boxes[:, 1] + 1)
    inter = iw * ih
    valid = (iw > 0) & (ih > 0)
    union = box_area[:, None] + query_area[None, :] - inter
    return np.where(valid, inter / np.where(valid, union, 1.0), 0.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-p", "--pred", default="./widerface_txt/")
    parser.add_argument("-g", "--gt", default="./ground_truth/")
    parser.add_argument(
        "--element-overlaps", action="store_true", help="the element-by-element kernel (default: vectorised)"
    )
    args = parser.parse_args()
    result = evaluation(args.pred, args.gt, overlaps_fn=bbox_overlaps if args.element_overlaps else vectorised_overlaps)
    print("==================== Results ====================")
    for setting in ("easy", "medium", "hard"):
        print(f"{setting.capitalize()} Val AP: {float(result[setting])!r}")
    print("=================================================")
