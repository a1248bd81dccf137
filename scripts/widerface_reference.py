"""A slow, direct transcription of biubug6's widerface_evaluate/evaluation.py, for ``bench_eval.py`` to time.

Loops as the reference has them (per prediction, per threshold); ``bbox_overlaps`` transcribes its Cython
kernel element by element. Works on in-memory ground truth in the loader's layout. It is also the tests'
oracle (``tests/reference_evaluation.py`` loads it from here: scripts do not import from ``tests/``), and
``bench_eval.py`` fails when it and the package disagree on any AP.
"""

from __future__ import annotations

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
