"""Segmentation, instance and uncertainty metrics. Pure numpy."""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "iou", "roc_auc", "average_precision", "panoptic_quality", "DSB_THRESHOLDS"]

# The IoU thresholds of the 2018 Data Science Bowl's metric: 0.5, 0.55, ..., 0.95.
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _foreground(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """The foreground (``> 0``: True, or any class but background) of two masks or label maps of one shape."""
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the foreground (``> 0``) of two masks or label maps; 1.0 when both are empty."""
    pred, truth = _foreground(pred, truth)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, truth).sum() / denom)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of the foreground (``> 0``) of two masks or label maps; 1.0 when both are empty."""
    pred, truth = _foreground(pred, truth)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``positives`` (ties count one half).

    Returns NaN when there are no positives or no negatives.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(positives, bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # Average ranks over ties (Mann-Whitney U).
    ranks = np.empty(s.size, np.float64)
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _matched_ious(pred, truth) -> tuple[np.ndarray, int, int]:
    """IoUs of the (prediction, truth) object pairs that overlap by IoU > 0.5, and the two object counts.

    Above 0.5 the matching is one-to-one by itself (an object cannot overlap two others by more than half of
    their union), so no assignment problem is solved. The overlaps come from the sparse contingency table of
    the two maps (one ``np.unique`` over the pixels both cover), never from a loop over pairs.
    """
    from .instances import _check_ids

    p = _check_ids(pred, "The predicted instances")
    t = _check_ids(truth, "The true instances")
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, truth {t.shape}")
    p_ids, p_inv = np.unique(p.ravel(), return_inverse=True)
    t_ids, t_inv = np.unique(t.ravel(), return_inverse=True)
    # Consecutive indices, 0 = background where the map has background.
    p_inv = p_inv.ravel() + (0 if p_ids.size and p_ids[0] == 0 else 1)
    t_inv = t_inv.ravel() + (0 if t_ids.size and t_ids[0] == 0 else 1)
    n_pred = int(p_ids.size - (p_ids.size > 0 and p_ids[0] == 0))
    n_true = int(t_ids.size - (t_ids.size > 0 and t_ids[0] == 0))
    if n_pred == 0 or n_true == 0:
        return np.zeros(0), n_pred, n_true
    p_area = np.bincount(p_inv, minlength=n_pred + 1)
    t_area = np.bincount(t_inv, minlength=n_true + 1)
    both = (p_inv > 0) & (t_inv > 0)
    pairs, inter = np.unique(p_inv[both].astype(np.int64) * (n_true + 1) + t_inv[both], return_counts=True)
    pi, ti = np.divmod(pairs, n_true + 1)
    ious = inter / (p_area[pi] + t_area[ti] - inter)
    return ious[ious > 0.5], n_pred, n_true


def average_precision(pred_instances, true_instances, thresholds=DSB_THRESHOLDS):
    """Instance "average precision" of the 2018 Data Science Bowl: TP / (TP + FP + FN) at IoU thresholds.

    A predicted object is a true positive at threshold ``t`` when its IoU with a true object is greater than
    ``t`` (objects are matched one to one); unmatched predictions are false positives, unmatched true objects
    false negatives. The challenge scored one image as the mean of this over ``t`` = 0.5, 0.55, ..., 0.95
    (:data:`DSB_THRESHOLDS`) and a data set as the mean over its images.

    Parameters
    ----------
    pred_instances, true_instances : (H, W) int arrays
        Instance maps: 0 = background, one positive id per object (ids need not be consecutive).
    thresholds : float or sequence of floats
        IoU thresholds, each in ``[0.5, 1)``.

    Returns
    -------
    float or numpy.ndarray
        The score at one threshold, or an array with one score per threshold. 1.0 when neither map holds an
        object (nothing to find and nothing found).

    Raises
    ------
    ValueError
        Shapes differ, ids are not non-negative integers, or a threshold lies outside ``[0.5, 1)``.
    """
    scalar = np.ndim(thresholds) == 0
    ts = np.atleast_1d(np.asarray(thresholds, np.float64))
    if ts.size == 0 or not np.all(np.isfinite(ts)) or ts.min() < 0.5 or ts.max() >= 1:
        raise ValueError(f"IoU thresholds must lie in [0.5, 1) (below 0.5 the matching is not one to one), "
                         f"got {thresholds!r}")
    ious, n_pred, n_true = _matched_ious(pred_instances, true_instances)
    tp = (ious[None, :] > ts[:, None]).sum(1)
    denom = n_pred + n_true - tp  # TP + FP + FN
    ap = np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)
    return float(ap[0]) if scalar else ap


def panoptic_quality(pred_instances, true_instances) -> float:
    """Panoptic quality (Kirillov et al. 2019) of an instance map against the truth.

    ``PQ = sum(IoU of matched pairs) / (TP + FP / 2 + FN / 2)``, objects matched one to one at IoU > 0.5; it is
    the product of the segmentation quality (mean IoU of the matches) and the recognition quality (an F1 score).
    Inputs as in :func:`average_precision`. 1.0 when neither map holds an object.
    """
    ious, n_pred, n_true = _matched_ious(pred_instances, true_instances)
    tp = ious.size
    denom = tp + 0.5 * (n_pred - tp) + 0.5 * (n_true - tp)
    return 1.0 if denom == 0 else float(ious.sum() / denom)
