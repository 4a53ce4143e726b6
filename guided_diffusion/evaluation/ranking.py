"""Exact AUROC and AUPRC (average precision) pooled over many pixels, per cluster and resampled.

Pooled over a BraTS test split these rank about 128 M voxels (40 patients x 49 x 256 x 256)
-- the MOOD challenge's average precision pooled over all voxels. scikit-learn would hold
several float64 and int64 copies of that (gigabytes); here only the tumour pixels' values and
one sorted float32 copy of each cluster's other pixels are kept, and every count is an exact
integer:

    AP    = sum over the distinct tumour-pixel values v of  (t(v) / P) * TP(>= v) / (TP(>= v) + FP(>= v))
    AUROC = sum over v of  t(v) * (FP(< v) + FP(= v) / 2) / (P * N)

with t(v) the tumour pixels of value v, P and N the numbers of tumour and other pixels. These
are scikit-learn's ``average_precision_score`` (thresholds without a tumour pixel add no
recall) and ``roc_auc_score`` (ties count one half), to rounding.

A cluster is a patient (or an image): the bootstrap resamples clusters, and a resample's AP
weights each cluster's counts by how often it was drawn. The weighted counts are exact
integers below 2^24 except the other pixels' (float32 matrix products: relative error about
1e-7 in each resampled AP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_BLOCK = 1 << 22  # clusters x values per block: bounds the (K x block) arrays
_RESAMPLES = 256  # resamples per block: (256 x 16384) float32 arrays, 16 MiB


@dataclass
class Ranking:
    """Pooled and per-cluster AUROC/AUPRC; None / NaN where undefined (one class only)."""

    auroc: float | None
    auprc: float | None
    cluster_auroc: np.ndarray  # (K,)
    cluster_auprc: np.ndarray  # (K,)
    auprc_resampled: np.ndarray | None  # (B,), one AP per row of the weights


def ranking_scores(
    positives: Sequence[np.ndarray],
    negatives: Sequence[np.ndarray],
    weights: np.ndarray | None = None,
) -> Ranking:
    """AUROC and AP of the pixels of K clusters, pooled, per cluster and per resample.

    :param positives: per cluster, the 1-D float32 map values of its tumour pixels.
    :param negatives: per cluster, the values of its other pixels. Both are sorted in place.
    :param weights: optional (B, K) counts, how often each resample drew each cluster.
    :return: a :class:`Ranking`.
    """
    k = len(positives)
    for values in (*positives, *negatives):
        values.sort()
    n_pos = np.array([p.size for p in positives], dtype=np.int64)
    n_neg = np.array([n.size for n in negatives], dtype=np.int64)
    values = np.unique(np.concatenate(positives)) if k else np.zeros(0, np.float32)

    ap = 0.0
    auc2 = 0  # sum of t(v) * (2 FP(< v) + FP(= v)): an exact integer
    cluster_ap = np.zeros(k)
    cluster_auc2 = np.zeros(k)
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    resampled = None if w is None else np.zeros(w.shape[0])
    chunk = max(1024, min(1 << 14, _BLOCK // max(k, 1)))
    for start in range(0, values.size, chunk):
        v = values[start : start + chunk]
        after = values[start + chunk] if start + chunk < values.size else None
        tp = np.zeros((k, v.size + 1), dtype=np.int64)  # tumour pixels >= v, and >= the next value
        fp = np.empty((k, v.size), dtype=np.int64)  # other pixels >= v
        below2 = np.empty((k, v.size), dtype=np.int64)  # 2 FP(< v) + FP(= v)
        for c in range(k):
            tp[c, :-1] = n_pos[c] - np.searchsorted(positives[c], v, side="left")
            if after is not None:
                tp[c, -1] = n_pos[c] - np.searchsorted(positives[c], after, side="left")
            less = np.searchsorted(negatives[c], v, side="left")
            fp[c] = n_neg[c] - less
            below2[c] = 2 * less
            # Ties with other pixels are rare in float maps: count them only where they occur.
            tied = np.flatnonzero(negatives[c][np.minimum(less, n_neg[c] - 1)] == v) if n_neg[c] else []
            if len(tied):
                below2[c, tied] += np.searchsorted(negatives[c], v[tied], side="right") - less[tied]
        at = tp[:, :-1] - tp[:, 1:]  # tumour pixels of exactly value v
        hits = tp[:, :-1]
        total_at, total_hits = at.sum(0), hits.sum(0)
        ap += float((total_at * (total_hits / (total_hits + fp.sum(0)))).sum())
        auc2 += int((total_at * below2.sum(0)).sum())
        marked = np.maximum(hits + fp, 1)  # 0 only where at is 0 too
        cluster_ap += (at * (hits / marked)).sum(1)
        cluster_auc2 += (at * below2).sum(1)
        if w is not None:
            hits32, at32, fp32 = hits.astype(np.float32), at.astype(np.float32), fp.astype(np.float32)
            for b in range(0, w.shape[0], _RESAMPLES):  # blocks of resamples whose arrays stay in cache
                wb = w[b : b + _RESAMPLES]
                w_hits, w_marked = wb @ hits32, wb @ fp32
                w_marked += w_hits
                np.maximum(w_marked, 1, out=w_marked)
                np.divide(w_hits, w_marked, out=w_marked)  # precision at each value
                resampled[b : b + _RESAMPLES] += np.einsum("ij,ij->i", wb @ at32, w_marked)

    p, n = int(n_pos.sum()), int(n_neg.sum())
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_ap = np.where(defined, cluster_ap / n_pos, np.nan)
        c_auc = np.where(defined, cluster_auc2 / (2.0 * n_pos * n_neg), np.nan)
        if w is not None:
            w_p, w_n = w.astype(np.float64) @ n_pos, w.astype(np.float64) @ n_neg
            resampled = np.where((w_p > 0) & (w_n > 0), resampled / w_p, np.nan)
    if p == 0 or n == 0:
        return Ranking(None, None, c_auc, c_ap, resampled)
    return Ranking(auc2 / (2.0 * p * n), ap / p, c_auc, c_ap, resampled)
