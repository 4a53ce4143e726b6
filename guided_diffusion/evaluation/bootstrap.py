"""Bootstrap intervals over patients (or images): resampling weights and percentile intervals.

A resample draws K units (patients, or images where the files carry no patient) with
replacement; it is stored as the (B, K) counts of how often each unit was drawn, so that
every statistic of a resample is a weighted sum over units (Dice) or over their pixel counts
(pooled AUPRC, :mod:`guided_diffusion.evaluation.ranking`). The same ``seed`` gives the same
weights and so the same intervals.
"""
from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def resample_weights(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """(B, K) int64 counts: row b is how often each of the K units is drawn in resample b
    (K draws with replacement, so each row sums to K)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """The central 95 % percentile interval [low, high] of the finite resampled values, or
    None when there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def resampled_means(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample, the mean of a per-item metric over the items of the drawn units.

    :param sums: (K,) the metric summed over each unit's items (a patient's scored slices, or
        its one volume). :param counts: (K,) the items per unit.
    :return: (B,) means; NaN for a resample with no item.
    """
    w = weights.astype(np.float64)
    n = w @ counts
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, (w @ sums) / n, np.nan)
