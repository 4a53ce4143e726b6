"""Likelihood terms of the variational bound (Ho et al. 2020; Nichol & Dhariwal 2021)."""
from __future__ import annotations

import math

import torch as th


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + th.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * th.exp(-logvar2))


def approx_standard_normal_cdf(x: th.Tensor) -> th.Tensor:
    """Standard normal CDF via the tanh approximation (Page 1977)."""
    return 0.5 * (1.0 + th.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: th.Tensor, *, means: th.Tensor, log_scales: th.Tensor) -> th.Tensor:
    """Log-likelihood (nats, elementwise) of images in [-1, 1] quantised to 256 levels
    under N(means, exp(log_scales)^2); the two end bins take the open tails (Ho et al. 2020, Eq. 13).
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError("x, means and log_scales must have the same shape")
    centred = x - means
    inv_std = th.exp(-log_scales)
    half_bin = 1.0 / 255.0
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + half_bin))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - half_bin))
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = th.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return th.where(x < -0.999, log_cdf_plus, th.where(x > 0.999, log_one_minus_cdf_min, log_delta))
