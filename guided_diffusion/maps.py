"""Anomaly maps beyond the paper's: the levers of the map of an image and its healthy translation.

:func:`guided_diffusion.anomaly.anomaly_map` is the paper's map, sum_c |x_c - x̂_c| (Wolleb et al.
2022, Sec. 3). :func:`make_map` makes the map under :class:`MapOptions`, three levers applied in
this order:

1. ``residual``, per channel c:
   ``abs``       |x_c - x̂_c|, the paper's;
   ``ssim``      1 - SSIM(x_c, x̂_c), the local structural similarity of Wang et al. 2004 (Eq. 13)
                 on scikit-image's 7 x 7 uniform window, data range 1 (images in [0, 1]), so a
                 change of local contrast or texture counts, not only of intensity;
   ``abs+ssim``  their product |x_c - x̂_c| (1 - SSIM). The product rather than the mean: the two
                 have different ranges ([0, 1] and [0, 2]), so a mean would need a weight to tune,
                 while the product needs none and is high only where both say "anomalous": SSIM
                 alone is large in dark, flat tissue where tiny absolute differences are a large
                 relative change, and the absolute residual alone is large along bright edges the
                 reconstruction misplaces by a pixel, with a structure SSIM still finds similar.
2. ``normalise``:
   ``none``      the residuals as they are;
   ``channel``   each channel's residual divided by its median over the image's brain (pixels where
                 any input channel is above 0; the whole image when none is) before the channels
                 are summed, so a channel whose reconstruction is poor everywhere (often T1ce or
                 T2) does not drown the others. The median, not the mean: a lesion covers a minority
                 of the brain, so the median is the error of healthy tissue and the lesion's own
                 residual is not divided away, while a mean grows with the lesion and would shrink
                 exactly the maps that hold one. Not a rescaling to [0, 1]: the map stays a ratio to
                 the image's typical error, comparable across images, so one global threshold chosen
                 on a validation folder still applies to a test folder. A median below
                 :data:`MIN_SCALE` counts as ``MIN_SCALE`` (a channel reconstructed exactly, e.g. the
                 untouched channels of the intensity baseline, stays 0 instead of dividing by 0).
3. ``smooth``: a Gaussian filter of that sigma in pixels on the summed map (scipy.ndimage, edges
   reflected; 0: off), each image's map on its own.

Conventions: images (C, H, W) or batches (B, C, H, W) in [0, 1], NumPy arrays or torch tensors (both
the same kind). The default options return :func:`anomaly.anomaly_map` itself, bit for bit. Other
options are computed in float32 NumPy on the CPU (SSIM and the filter are scikit-image's and SciPy's)
and come back as the input's kind, on its device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from .anomaly import Array, anomaly_map, to_numpy
from .util.errors import UserError
from .util.flags import MAP_NORMALISATIONS, MAP_RESIDUALS

MIN_SCALE = 1e-3
"""The smallest per-channel scale of ``normalise="channel"``: a thousandth of the intensity range,
below an 8-bit image's step (1/255), so only a channel reconstructed (almost) exactly reaches it."""

SSIM_WINDOW = 7
"""Side of SSIM's uniform window in pixels (scikit-image's default); images must be at least this big."""


@dataclass(frozen=True)
class MapOptions:
    """How :func:`make_map` makes a map (see the module's docstring); the defaults are the paper's map."""

    residual: str = "abs"
    normalise: str = "none"
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if self.residual not in MAP_RESIDUALS:
            raise UserError(f"--map_residual {self.residual}: expected one of {', '.join(MAP_RESIDUALS)}")
        if self.normalise not in MAP_NORMALISATIONS:
            raise UserError(f"--map_normalise {self.normalise}: expected one of {', '.join(MAP_NORMALISATIONS)}")
        if not (np.isfinite(self.smooth) and self.smooth >= 0):
            raise UserError(f"--map_smooth {self.smooth}: expected a sigma of 0 (off) or more pixels")

    @property
    def is_paper(self) -> bool:
        """The paper's map: |x - x̂| summed over the channels, nothing else."""
        return self == MapOptions()


def make_map(x: Array, x_healthy: Array, options: MapOptions = MapOptions()) -> Array:
    """The anomaly map of ``x`` and its healthy translation ``x_healthy`` under ``options``.

    :param x: the input image, (C, H, W) or a batch (B, C, H, W), values in [0, 1].
    :param x_healthy: its healthy translation, the same shape and kind.
    :param options: the levers; the default is :func:`anomaly.anomaly_map`, returned as it is.
    :return: (H, W), or (B, H, W) for a batch; the kind of ``x`` (a tensor on ``x``'s device). Values
        >= 0: in [0, C] for ``abs``, [0, 2C] for ``ssim`` and ``abs+ssim`` without normalisation.
    """
    amap = anomaly_map(x, x_healthy)  # also checks kinds and shapes
    if options.is_paper:
        return amap
    images = to_numpy(x, "x").astype(np.float32, copy=False)
    healthy = to_numpy(x_healthy, "x_healthy").astype(np.float32, copy=False)
    batched = images.ndim == 4
    if not batched:
        images, healthy = images[None], healthy[None]
    out = np.stack([_one_map(a, b, options) for a, b in zip(images, healthy)])  # (B, H, W)
    if not batched:
        out = out[0]
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(out).to(x.device)
    return out


def _one_map(x: np.ndarray, x_healthy: np.ndarray, options: MapOptions) -> np.ndarray:
    """The map of one image: (C, H, W) float32 twice -> (H, W) float32."""
    residual = channel_residuals(x, x_healthy, options.residual)  # (C, H, W)
    if options.normalise == "channel":
        residual = residual / channel_scales(x, residual)[:, None, None]
    amap = residual.sum(axis=0, dtype=np.float32)  # (H, W)
    if options.smooth > 0:
        amap = ndimage.gaussian_filter(amap, sigma=options.smooth, mode="reflect")
    return amap.astype(np.float32, copy=False)


def channel_residuals(x: np.ndarray, x_healthy: np.ndarray, residual: str) -> np.ndarray:
    """Each channel's residual of one image (step 1 of the module's docstring): (C, H, W) -> (C, H, W)."""
    absolute = np.abs(x - x_healthy)
    if residual == "abs":
        return absolute
    height, width = x.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise UserError(f"--map_residual {residual}: SSIM's {SSIM_WINDOW} x {SSIM_WINDOW} window needs images of "
                        f"at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, found {height} x {width}")
    dissimilarity = np.stack([1.0 - structural_similarity(a, b, win_size=SSIM_WINDOW, data_range=1.0, full=True)[1]
                              for a, b in zip(x, x_healthy)]).astype(np.float32)
    if residual == "ssim":
        return dissimilarity
    return absolute * dissimilarity  # abs+ssim


def channel_scales(x: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """``normalise="channel"``: each channel's median residual over the brain of ``x`` (C, H, W), at
    least :data:`MIN_SCALE`; returns (C,) float32."""
    brain = (x > 0).any(axis=0)  # (H, W)
    if not brain.any():
        brain = np.ones_like(brain)
    medians = np.median(residual[:, brain], axis=1)  # (C,)
    return np.maximum(medians, MIN_SCALE).astype(np.float32)
