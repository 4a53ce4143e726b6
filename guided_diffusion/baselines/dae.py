"""The denoising autoencoder baseline (Kascenas, Pugeault & O'Neil 2022, "Denoising Autoencoders for
Unsupervised Anomaly Detection in Brain MRI", MIDL).

A UNet D is trained on healthy slices only to remove *coarse* noise: Gaussian noise drawn on a
coarse r x r grid and upsampled bilinearly to the image, so that it looks like smooth blobs of
brightness rather than pixel noise. At test time the clean image goes in unchanged and D repaints
what does not look healthy:

    training:  x~ = x + m * shift(up(eps)),  eps ~ N(0, sigma^2) of shape (C, r, r),
               L = mean over pixels and channels of m * (D(x~) - x)^2;
    test:      x_healthy = D(x),   anomaly = sum_c |x - x_healthy|.

m is the foreground mask (the sum over channels above 0.01), ``up`` bilinear upsampling to the
image size, ``shift`` a random circular translation per image (the paper rolls the noise so that
its grid does not align with the image's); r = 16 and sigma = 0.2 are the paper's (``noise_res``,
``noise_std``). The paper's post-processing (brain mask, median filter) is the evaluation's
(``evaluate.py --brain_mask True --median 5``).

The network is this package's UNet (the ``model`` flags) called at timestep 0: a UNet without
the time input. Randomness (eps, shifts) comes in as arguments.
"""
from __future__ import annotations

import torch as th
import torch.nn.functional as F

FOREGROUND = 0.01  # the paper's foreground threshold on the sum of the channels


def foreground(x: th.Tensor) -> th.Tensor:
    """(B, 1, H, W) float mask of the pixels whose channel sum exceeds ``FOREGROUND``."""
    return (x.sum(dim=1, keepdim=True) > FOREGROUND).to(x.dtype)


def coarse_noise(eps: th.Tensor, size: int, shifts: th.Tensor) -> th.Tensor:
    """Upsample coarse noise ``eps`` (B, C, r, r) bilinearly to (B, C, size, size) and roll each image
    by its ``shifts`` (B, 2) pixels (rows, columns)."""
    up = F.interpolate(eps, size=(size, size), mode="bilinear", align_corners=False)
    return th.stack([th.roll(image, shifts=(int(s[0]), int(s[1])), dims=(-2, -1)) for image, s in zip(up, shifts)])


def noisy_input(x: th.Tensor, eps: th.Tensor, shifts: th.Tensor) -> th.Tensor:
    """x + m * shift(up(eps)): the training input of the DAE; ``eps`` already scaled by sigma."""
    return x + foreground(x) * coarse_noise(eps, x.shape[-1], shifts)


def denoise(net, x: th.Tensor) -> th.Tensor:
    """D(x): the network's output at timestep 0, (B, C, H, W)."""
    return net(x, th.zeros(x.shape[0], dtype=th.long, device=x.device))


def dae_loss(net, x: th.Tensor, eps: th.Tensor, shifts: th.Tensor) -> tuple[th.Tensor, dict]:
    """The masked reconstruction loss of one batch of healthy images; returns the loss and its terms."""
    out = denoise(net, noisy_input(x, eps, shifts))
    loss = (foreground(x) * (out.float() - x) ** 2).mean()
    return loss, {"loss": loss}


def translate_to_healthy(net, x: th.Tensor) -> th.Tensor:
    """x_healthy = D(x), clipped to the images' range [0, 1]."""
    return denoise(net, x).float().clamp(0.0, 1.0)
