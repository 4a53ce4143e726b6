"""Anomaly maps and their scores (Wolleb et al. 2022, Sec. 3 and 4).

The anomaly map of an image x and its healthy translation x_healthy is
|x - x_healthy| summed over the channels (for BRATS the four MR sequences).
Each map is binarised with its own Otsu threshold (one threshold per slice, as the
authors' evaluation does) and scored against the ground-truth segmentation with the
Dice coefficient, the pixel-wise AUROC and the pixel-wise AUPRC.

Conventions: images are channel-first, (C, H, W) or batched (B, C, H, W), with values
in [0, 1]; ground truth is any array whose nonzero pixels are "anomalous" (tumour);
healthy is class 0. Both NumPy arrays and torch tensors are accepted.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from skimage.filters import threshold_otsu

Array = Union[np.ndarray, torch.Tensor]

# Image-level score: this percentile of the anomaly map's pixel values.
# A high percentile rather than the mean, because a small lesion (often under 1 % of
# a slice) barely moves the mean of the map but dominates its top pixels.
IMAGE_SCORE_PERCENTILE = 99.0


def to_numpy(a: Array, name: str = "array") -> np.ndarray:
    """Return ``a`` as a NumPy array (a torch tensor is detached and moved to the CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()  # NumPy has no bfloat16
        return a.numpy()
    if isinstance(a, np.ndarray):
        return a
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(a).__name__}")


def _kind(a: object) -> str | None:
    if isinstance(a, torch.Tensor):
        return "torch"
    if isinstance(a, np.ndarray):
        return "numpy"
    return None


def anomaly_map(x: Array, x_healthy: Array) -> Array:
    """Anomaly map |x - x_healthy| summed over the channel axis.

    :param x: the input image, (C, H, W) or a batch (B, C, H, W), values in [0, 1].
    :param x_healthy: its healthy translation, same shape and same kind as ``x``.
    :return: (H, W), or (B, H, W) for a batch; values in [0, C] for inputs in [0, 1].
        A torch tensor (same device) for tensor inputs, a NumPy array for arrays.
        Integer inputs are converted to float32 first (so differences do not wrap).
    """
    kind_x, kind_healthy = _kind(x), _kind(x_healthy)
    if kind_x is None or kind_x != kind_healthy:
        raise TypeError(
            "anomaly_map: x and x_healthy must both be numpy arrays or both torch tensors, "
            f"got {type(x).__name__} and {type(x_healthy).__name__}"
        )
    if tuple(x.shape) != tuple(x_healthy.shape):
        raise ValueError(
            f"anomaly_map: x has shape {tuple(x.shape)} but x_healthy has shape "
            f"{tuple(x_healthy.shape)}; expected equal shapes"
        )
    if x.ndim not in (3, 4):
        raise ValueError(
            f"anomaly_map: expected (C, H, W) or (B, C, H, W) images, got shape {tuple(x.shape)}"
        )
    channel_axis = x.ndim - 3  # 0 for (C, H, W), 1 for (B, C, H, W)
    if isinstance(x, torch.Tensor):
        if not torch.is_floating_point(x):
            x = x.float()
        if not torch.is_floating_point(x_healthy):
            x_healthy = x_healthy.float()
        return (x - x_healthy).abs().sum(dim=channel_axis)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if not np.issubdtype(x_healthy.dtype, np.floating):
        x_healthy = x_healthy.astype(np.float32)
    return np.abs(x - x_healthy).sum(axis=channel_axis)


def otsu_mask(amap: Array) -> Array:
    """Binary anomaly mask: ``amap > threshold_otsu(amap)``.

    One threshold for the whole array; the paper thresholds each slice on its own, so
    call this once per image (H, W), not on a batch.

    The map is thresholded in float32, the precision in which results are stored
    (see :mod:`guided_diffusion.evaluation.results`), so a mask recomputed from a saved map is
    identical to the one computed before saving, even for a float64 map.

    :param amap: anomaly map of any shape, finite values.
    :return: a bool mask of the same shape and kind (NumPy array or torch tensor on
        ``amap``'s device). A constant map has no foreground: the mask is all False.
    """
    values = to_numpy(amap, "amap").astype(np.float32)
    if values.size == 0:
        raise ValueError("otsu_mask: the anomaly map is empty")
    if not np.isfinite(values).all():
        raise ValueError("otsu_mask: the anomaly map holds NaN or infinite values")
    if values.min() == values.max():
        mask = np.zeros(values.shape, dtype=bool)
    else:
        mask = values > threshold_otsu(values)
    if isinstance(amap, torch.Tensor):
        return torch.from_numpy(mask).to(amap.device)
    return mask


def _binary(a: Array, name: str) -> np.ndarray:
    return to_numpy(a, name) != 0


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
                         "expected equal shapes")


def dice(mask: Array, gt: Array) -> float:
    """Dice coefficient 2 |mask ∩ gt| / (|mask| + |gt|) of two binary masks.

    Nonzero values count as foreground. When both masks are empty (a healthy slice
    correctly left unmarked) the result is 1.0 by convention; when only one is empty
    it is 0.0.
    """
    m, g = _binary(mask, "mask"), _binary(gt, "gt")
    _check_same_shape(m, g, "mask", "gt")
    total = int(m.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(m, g).sum()) / total


def _pixel_scores(amap: Array, gt: Array) -> tuple[np.ndarray, np.ndarray] | None:
    scores = to_numpy(amap, "amap").reshape(-1)
    labels = _binary(gt, "gt").reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"amap has {scores.size} pixels but gt has {labels.size}; "
                         "expected equal shapes")
    if labels.all() or not labels.any():
        return None  # one class only: ROC and PR curves are undefined
    return labels, scores


def pixel_auroc(amap: Array, gt: Array) -> float:
    """Area under the ROC curve of the anomaly map's pixels against the ground truth.

    :return: a float in [0, 1]; NaN when ``gt`` has only one class (no anomalous pixel,
        or no normal pixel), where the ROC curve is undefined.
    """
    from sklearn.metrics import roc_auc_score  # here, not at the top: it adds ~0.6 s to every process's start

    pair = _pixel_scores(amap, gt)
    if pair is None:
        return math.nan
    return float(roc_auc_score(*pair))


def pixel_auprc(amap: Array, gt: Array) -> float:
    """Area under the precision-recall curve (average precision) of the pixels.

    :return: a float in [0, 1]; NaN when ``gt`` has only one class.
    """
    from sklearn.metrics import average_precision_score  # loaded on first use, as in pixel_auroc

    pair = _pixel_scores(amap, gt)
    if pair is None:
        return math.nan
    return float(average_precision_score(*pair))


def image_score(amap: Array) -> float:
    """Image-level anomaly score: the 99th percentile (``IMAGE_SCORE_PERCENTILE``) of
    the anomaly map's values, used for the image-level AUROC (healthy = 0 vs. diseased).
    """
    values = to_numpy(amap, "amap")
    if values.size == 0:
        raise ValueError("image_score: the anomaly map is empty")
    return float(np.percentile(values.astype(np.float64), IMAGE_SCORE_PERCENTILE))
