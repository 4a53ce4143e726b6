"""Multi-octave simplex noise for diffusion (AnoDDPM: Wyatt et al. 2022, "AnoDDPM: Anomaly Detection
with Denoising Diffusion Probabilistic Models using Simplex Noise", CVPR workshops).

AnoDDPM replaces the Gaussian noise of the forward process (and of each ancestral sampling step)
by fractal simplex noise: low-frequency structure that a partially noised image cannot hide a large
lesion behind, so denoising from a partial level L repaints it as healthy tissue.

The noise of one image channel is

    n(p) = sum_{o=0}^{O-1} rho^o * simplex(p / (f / 2^o) + offset)

with O = ``octaves`` (AnoDDPM: 6), rho = ``persistence`` (0.8) and f = ``frequency``, the period of
the coarsest octave in pixels (64 at AnoDDPM's 256 x 256 images); each octave halves the period.
``simplex`` is 2-D simplex noise (Perlin 2001; the skewed triangular grid and the 12 gradients of
Gustavson 2005, "Simplex noise demystified"): for a point, the three corners of its triangle each
contribute max(0, 1/2 - |d|^2)^4 (g . d), with d the offset from the corner and g the corner's
gradient, picked by a permutation table.

Differences from AnoDDPM, deliberately: every image and channel gets its own field (its own
permutation table and offset, drawn from the generator), where AnoDDPM draws one 2-D field and
repeats it over the batch; and each field is normalised to zero mean and unit variance, as the
forward process q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I) assumes of its noise.

Implementation: vectorised in torch over all pixels, images and channels (one gather per corner and
octave), on the device of the generator, so a training step draws its noise on the GPU from a
seeded ``torch.Generator``. The Python packages (opensimplex and AnoDDPM's numba port) evaluate one
point at a time on the CPU from a global seed, which is neither fast enough per training step nor
reproducible per image.
"""
from __future__ import annotations

import math

import torch as th

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)  # skews (x, y) onto the triangular grid
_G2 = (3.0 - math.sqrt(3.0)) / 6.0  # and back
# the 12 gradient directions of Gustavson's 3-D table, their (x, y) parts
_GRADIENTS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (0, 1), (0, -1))
_SCALE = 70.0  # brings 2-D simplex noise to about [-1, 1]


def simplex_2d(x: th.Tensor, y: th.Tensor, perm: th.Tensor) -> th.Tensor:
    """2-D simplex noise at the points (x, y), one permutation table per row.

    :param x, y: (N, P) coordinates (float), N independent fields of P points each.
    :param perm: (N, 512) long, a permutation of 0..255 repeated twice per row.
    :return: (N, P) values in about [-1, 1].
    """
    s = (x + y) * _F2
    i, j = th.floor(x + s), th.floor(y + s)
    t = (i + j) * _G2
    x0, y0 = x - (i - t), y - (j - t)  # offsets from the triangle's first corner
    upper = (x0 > y0).to(x.dtype)  # lower or upper triangle of the skewed cell
    corners = (
        (x0, y0, 0, 0),
        (x0 - upper + _G2, y0 - (1 - upper) + _G2, upper.long(), 1 - upper.long()),
        (x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2, 1, 1),
    )
    ii, jj = i.long() & 255, j.long() & 255
    grads = th.tensor(_GRADIENTS, dtype=x.dtype, device=x.device)  # (12, 2)
    total = th.zeros_like(x)
    for dx, dy, di, dj in corners:
        hashed = th.gather(perm, 1, ii + di + th.gather(perm, 1, jj + dj))  # (N, P)
        g = grads[hashed % 12]  # (N, P, 2)
        falloff = (0.5 - dx * dx - dy * dy).clamp(min=0.0)
        total = total + falloff**4 * (g[..., 0] * dx + g[..., 1] * dy)
    return _SCALE * total


def simplex_noise(shape, *, octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0,
                  generator: th.Generator | None = None, device=None) -> th.Tensor:
    """Fractal simplex noise of ``shape`` (B, C, H, W): one field per image and channel, each with
    zero mean and unit variance over its H x W pixels (see the module docstring).

    Reproducible from ``generator``; drawn on its device (or ``device``).
    """
    if len(shape) != 4:
        raise ValueError(f"simplex_noise: expected a (B, C, H, W) shape, got {tuple(shape)}")
    if octaves < 1 or frequency <= 0 or persistence <= 0:
        raise ValueError(f"simplex_noise: octaves {octaves}, persistence {persistence}, frequency {frequency}: "
                         "expected octaves >= 1 and positive persistence and frequency")
    b, c, h, w = shape
    n = b * c
    where = generator.device if generator is not None else th.device(device or "cpu")
    perm = th.rand((n, 256), generator=generator, device=where).argsort(dim=1)
    perm = th.cat([perm, perm], dim=1)  # (N, 512): indices up to 255 + 255 need no wrap
    offsets = th.rand((n, 2, 1), generator=generator, device=where) * 256.0  # decorrelates the fields
    rows, cols = th.meshgrid(th.arange(h, device=where, dtype=th.float32),
                             th.arange(w, device=where, dtype=th.float32), indexing="ij")
    rows, cols = rows.reshape(1, -1), cols.reshape(1, -1)  # (1, H*W)
    total = th.zeros((n, h * w), device=where)
    for octave in range(octaves):
        period = frequency / 2**octave
        total += persistence**octave * simplex_2d(cols / period + offsets[:, 0], rows / period + offsets[:, 1], perm)
    total = total - total.mean(dim=1, keepdim=True)
    total = total / total.std(dim=1, keepdim=True).clamp(min=1e-12)
    out = total.reshape(b, c, h, w)
    return out.to(device) if device is not None else out
