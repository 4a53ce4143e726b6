"""Threshold rules: how an anomaly map becomes a binary mask (``--threshold``).

``otsu``
    One Otsu threshold per slice (Wolleb et al. 2022, the paper's rule); with ``--brain_mask``
    Otsu sees the brain pixels only.
``best``
    The one global threshold that maximises the mean Dice of the set being scored: an oracle
    (it looks at the test labels), as the "best possible Dice" of Baur et al. 2021, Kascenas et
    al. 2022 and Lagogiannis et al. 2024; tables label it so.
``val``
    The same search on a labelled validation run (``--val_dir``), applied unchanged to the test
    set (Behrendt et al.: the threshold with the best Dice on a validation set).
``fpr``
    The global threshold at which a fraction ``--fpr`` of the healthy pixels (ground truth 0,
    inside the brain) of ``--val_dir`` are positive (Behrendt et al.'s thresholds at 1/5/10 %
    false positives on healthy data).

A pixel is positive when its map value is strictly above the threshold (as ``otsu_mask``).
The search (``best``, ``val``) is exact: it evaluates every distinct value of the maps'
tumour pixels (a mask whose lowest included value holds no tumour pixel can only gain
Dice by dropping it), with the map after the median filter and brain mask; component removal
(``--min_component``) is applied afterwards, as Behrendt et al. search on the filtered map
and filter components on the thresholded one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..anomaly import otsu_mask
from ..util.errors import UserError

# A unit of the search: (map, ground truth, pixels that may be positive or None for all),
# arrays of one shape (D, H, W).
SearchUnit = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class SearchResult:
    """The threshold a rule chose and how it scored on the set it was chosen on."""

    threshold: float
    mean_dice: float | None = None  # best / val: the mean Dice reached on the search set
    candidates: int | None = None  # best / val: distinct tumour-pixel values tried
    fpr_achieved: float | None = None  # fpr: the fraction of healthy pixels above the threshold
    pixels: int | None = None  # fpr: healthy pixels the fraction is over


def otsu_masks(maps: np.ndarray, scoreable: np.ndarray | None) -> np.ndarray:
    """Per-slice Otsu masks of a (D, H, W) stack; with ``scoreable`` Otsu sees only those pixels
    and the rest stay negative. Without it each slice's mask is ``otsu_mask(slice)``, exactly the
    paper's."""
    masks = np.zeros(maps.shape, dtype=bool)
    for z, plane in enumerate(maps):
        if scoreable is None:
            masks[z] = otsu_mask(plane)
        elif scoreable[z].any():
            masks[z][scoreable[z]] = otsu_mask(plane[scoreable[z]])
    return masks


def _runs(sorted_ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted int array and how often each occurs."""
    if sorted_ints.size == 0:
        return sorted_ints, sorted_ints
    starts = np.flatnonzero(np.diff(sorted_ints)) + 1
    starts = np.concatenate(([0], starts))
    counts = np.diff(np.concatenate((starts, [sorted_ints.size])))
    return sorted_ints[starts], counts


def _between(low: float | None, high: np.float32) -> float:
    """A float32 t with low <= t < high (so ``x > t`` keeps exactly the values >= high), halfway
    where float32 allows, so that the threshold transfers to another set without bias."""
    if low is None:
        return float(np.nextafter(high, np.float32(-np.inf)))
    t = np.float32((float(low) + float(high)) / 2)
    return float(t if np.float32(low) <= t < high else np.float32(low))


def best_threshold(units: Sequence[SearchUnit]) -> SearchResult:
    """The global threshold that maximises the mean Dice over ``units`` (exact search).

    Each unit is a slice or a volume: Dice 2|M ∩ G| / (|M| + |G|), 1 when both are empty
    (a healthy unit left unmarked). Ties go to the highest threshold.

    :param units: (map, ground truth, scoreable or None) per unit; maps float32.
    :return: the threshold and the mean Dice it reaches on ``units``.
    :raises UserError: no unit to choose on.
    """
    if not units:
        raise UserError("threshold search: no image with ground truth to choose a threshold on")
    values = [m[s] if s is not None else m.ravel() for m, _, s in units]
    positives = [m[g & s] if s is not None else m[g] for m, g, s in units]
    sizes = [int(g.sum()) for _, g, _ in units]
    candidates = np.unique(np.concatenate(positives)) if positives else np.zeros(0, np.float32)
    base = float(sum(size == 0 for size in sizes))  # the empty mask: Dice 1 on healthy units
    top = max((float(v.max()) for v in values if v.size), default=0.0)
    if candidates.size == 0:  # no tumour pixel can be marked: the empty mask is best
        return SearchResult(top, base / len(units), 0)

    # For candidate j the mask is {value >= candidates[j]}; each unit's Dice is a step function
    # of j that changes only at the bins its pixels fall in, so the sum over units is built
    # from per-unit increments ("events") with one bincount per batch of them.
    gains = np.zeros(candidates.size, dtype=np.float64)
    pending_bins: list[np.ndarray] = []
    pending_steps: list[np.ndarray] = []
    pending = 0
    for v, p, size in zip(values, positives, sizes):
        bins, counts = _runs(np.searchsorted(candidates, np.sort(v), side="right") - 1)
        pos_bins, pos_counts = _runs(np.searchsorted(candidates, np.sort(p), side="right") - 1)
        counts = counts[bins >= 0]
        bins = bins[bins >= 0]
        tp = np.zeros(bins.size, dtype=np.int64)
        tp[np.searchsorted(bins, pos_bins)] = pos_counts
        # From the highest bin down: pixels and tumour pixels in the mask.
        marked, hits = np.cumsum(counts[::-1]), np.cumsum(tp[::-1])
        dice = 2.0 * hits / (marked + size)
        steps = np.diff(dice, prepend=1.0 if size == 0 else 0.0)
        pending_bins.append(bins[::-1])
        pending_steps.append(steps)
        pending += bins.size
        if pending > 1 << 24:  # bound the memory the events take
            gains += np.bincount(np.concatenate(pending_bins), np.concatenate(pending_steps), candidates.size)
            pending_bins, pending_steps, pending = [], [], 0
    if pending_bins:
        gains += np.bincount(np.concatenate(pending_bins), np.concatenate(pending_steps), candidates.size)
    mean = (base + np.cumsum(gains[::-1])[::-1]) / len(units)  # mean Dice at each candidate
    best = int(candidates.size - 1 - np.argmax(mean[::-1]))  # the highest of equal maxima
    if base / len(units) >= mean[best]:  # nothing marked is at least as good: threshold at the top
        return SearchResult(top, base / len(units), int(candidates.size))
    high = candidates[best]
    below = [v[v < high] for v in values]
    low = max((float(b.max()) for b in below if b.size), default=None)
    return SearchResult(_between(low, high), float(mean[best]), int(candidates.size))


def fpr_threshold(healthy: np.ndarray, fpr: float) -> SearchResult:
    """The threshold at which at most a fraction ``fpr`` of ``healthy`` values lie above it, as
    many as possible: the (k+1)-th largest value, k = floor(fpr * n).

    :param healthy: 1-D map values of healthy pixels (ground truth 0, inside the brain).
    :param fpr: the target fraction, 0 <= fpr < 1.
    """
    n = int(healthy.size)
    if n == 0:
        raise UserError("--threshold fpr: the validation folder has no healthy pixel inside the brain")
    k = math.floor(fpr * n)
    threshold = np.partition(healthy, n - 1 - k)[n - 1 - k]
    return SearchResult(float(threshold), fpr_achieved=float((healthy > threshold).sum()) / n, pixels=n)
