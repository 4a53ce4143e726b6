"""Two levers on the translation towards "healthy": AutoDDPM's mask, stitch and resample, and pDDPM's
patch-wise noising (its training loss and its patch grid).

* AutoDDPM (Bercea et al. 2023, "Mask, Stitch, and Re-Sample: Enhancing Robustness and
  Generalizability in Anomaly Detection through Automatic Diffusion Models"): a first healthy
  reconstruction x_hat marks the likely anomalies, m = the anomaly map |x - x_hat| (summed over the
  channels) above a threshold, dilated a little (:func:`autoddpm_mask`); the stitched image
  x_s = m * x_hat + (1 - m) * x (:func:`stitch`) is noised to a second, lower level and denoised again
  while the region outside m is held on the input's own trajectory (:func:`keep_known`,
  :func:`mask_gradient`), so the final image is x outside m.
* pDDPM (Behrendt et al. 2023, "Patched Diffusion Models for Unsupervised Anomaly Detection in Brain
  MRI"): only one patch of the image is noised; the network reconstructs it from the intact, clean
  context around it. Training noises one patch of a grid per image, the loss on that patch only
  (:func:`patched_training_losses`); translation noises and reconstructs each patch of the grid
  (:func:`patch_boxes`) in turn with the clean image outside it (:func:`with_clean_context`), and the
  reconstructed patches are tiled into one image.

Pure tensor maths: masks are boolean (B, 1, H, W) tensors that broadcast over the channels; the
device follows the inputs; nothing here draws random numbers.
"""
from __future__ import annotations

import math
from typing import Callable

import torch as th
import torch.nn.functional as F

from .anomaly import anomaly_map
from .gaussian_diffusion import LossType, ModelMeanType, ModelVarType
from .losses import discretized_gaussian_log_likelihood, normal_kl
from .util.errors import UserError

# AutoDDPM's levels: the first reconstruction at t = 200 of 1000, the resampling at t = 50
AUTODDPM_LEVEL_RATIO = 4


# -------------------------------------------------------------------------------- AutoDDPM


def autoddpm_mask(x: th.Tensor, x_hat: th.Tensor, quantile: float, dilation: int = 1) -> th.Tensor:
    """AutoDDPM's mask of likely anomalies: the anomaly map |x - x_hat| summed over the channels, above
    its ``quantile`` (per image), dilated by ``dilation`` pixels (a (2d+1) x (2d+1) square; AutoDDPM:
    3 x 3, d = 1).

    x, x_hat: (B, C, H, W) in [0, 1]. Returns a boolean (B, 1, H, W); ``quantile`` 1.0 gives an empty
    mask (no pixel lies above the image's largest value)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile {quantile}: expected 0 < q <= 1")
    amap = anomaly_map(x.float(), x_hat.float()).unsqueeze(1)  # (B, 1, H, W)
    threshold = th.quantile(amap.flatten(1), quantile, dim=1)  # (B,)
    mask = amap > threshold.view(-1, 1, 1, 1)
    if dilation > 0:
        # a binary dilation with a square structuring element is a max filter of the 0/1 image
        mask = F.max_pool2d(mask.float(), 2 * dilation + 1, stride=1, padding=dilation) > 0
    return mask


def stitch(x: th.Tensor, x_hat: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """x_s = m * x_hat + (1 - m) * x: the reconstruction inside the mask, the input (exactly) outside."""
    return th.where(mask, x_hat, x)


def keep_known(x_known: th.Tensor, mask: th.Tensor) -> Callable[[th.Tensor], th.Tensor]:
    """A ``denoised_fn`` that replaces the predicted x_0 outside ``mask`` by ``x_known``.

    At every step the region outside the mask then moves along the input's own noising trajectory
    (DDIM: x_t = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) eps with the eps it started with; DDPM: a draw
    of q(x_{t-1} | x_t, x_0 = x)), so the network sees the known image at the matching noise level
    around the masked region, as in AutoDDPM's re-sampling (after RePaint, Lugmayr et al. 2022)."""
    def denoised_fn(pred_xstart: th.Tensor) -> th.Tensor:
        return th.where(mask, pred_xstart, x_known.to(pred_xstart.dtype))
    return denoised_fn


def mask_gradient(cond_fn, mask: th.Tensor):
    """``cond_fn`` whose gradient is 0 outside ``mask`` (guidance only moves the masked region)."""
    if cond_fn is None:
        return None

    def masked(x: th.Tensor, t: th.Tensor, **kwargs) -> th.Tensor:
        return cond_fn(x, t, **kwargs) * mask
    return masked


def autoddpm_level(noise_level: int, level: int) -> int:
    """The resampling level: ``level``, or for 0 AutoDDPM's ratio (200 then 50 of 1000 steps), L / 4
    rounded, at least 1."""
    return level if level > 0 else max(1, round(noise_level / AUTODDPM_LEVEL_RATIO))


# -------------------------------------------------------------------------------- pDDPM


def check_patch_size(patch_size: int, image_size: int) -> None:
    """--patch_size: 0 (off) or a side that divides --image_size (pDDPM's grid of whole patches)."""
    if patch_size < 0 or patch_size > image_size or (patch_size and image_size % patch_size):
        raise UserError(f"--patch_size {patch_size}: expected 0 (off) or a patch side that divides --image_size "
                        f"{image_size} (the patches tile the image)")


def patch_boxes(height: int, width: int, patch_size: int) -> list[tuple[slice, slice]]:
    """pDDPM's grid: the non-overlapping ``patch_size`` squares (stride = side) that tile an H x W
    image, row by row, as (rows, columns) slices."""
    if patch_size <= 0 or height % patch_size or width % patch_size:
        raise ValueError(f"patch size {patch_size}: expected a side that divides {height} x {width}")
    return [(slice(r, r + patch_size), slice(c, c + patch_size))
            for r in range(0, height, patch_size) for c in range(0, width, patch_size)]


def box_mask(shape: tuple[int, ...], box: tuple[slice, slice], device=None) -> th.Tensor:
    """A boolean (B, 1, H, W) mask, True inside ``box``, for images of ``shape`` (B, C, H, W)."""
    mask = th.zeros((shape[0], 1, *shape[2:]), dtype=th.bool, device=device)
    mask[:, :, box[0], box[1]] = True
    return mask


def patch_masks(shape: tuple[int, ...], patch_size: int, index: th.Tensor) -> th.Tensor:
    """Per image, the mask of patch ``index[b]`` of the grid: a boolean (B, 1, H, W) tensor."""
    boxes = patch_boxes(shape[2], shape[3], patch_size)
    mask = th.zeros((shape[0], 1, *shape[2:]), dtype=th.bool, device=index.device)
    for b, k in enumerate(index.tolist()):
        rows, cols = boxes[k]
        mask[b, :, rows, cols] = True
    return mask


def with_clean_context(fn, x_clean: th.Tensor, mask: th.Tensor):
    """A network (or ``cond_fn``) that sees ``x_clean`` outside ``mask`` and its input inside: pDDPM's
    reconstruction of the noised patch from its intact context. Every step of a sampler is pixel-wise
    given the network's output, so wrapping the network equals resetting the region outside the
    patch to the clean image before every step."""
    if fn is None:
        return None

    def wrapped(x: th.Tensor, t: th.Tensor, **kwargs) -> th.Tensor:
        return fn(th.where(mask, x, x_clean.to(x.dtype)), t, **kwargs)
    return wrapped


def _masked_mean(values: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """The mean of (B, C, H, W) ``values`` over the pixels (and channels) inside ``mask``: (B,)."""
    weight = mask.to(values.dtype).expand_as(values)
    return (values * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))


def patched_training_losses(diffusion, model, x_start: th.Tensor, t: th.Tensor, mask: th.Tensor,
                            model_kwargs: dict | None = None, noise: th.Tensor | None = None) -> dict:
    """pDDPM's training loss (Behrendt et al. 2023): only the patch ``mask`` of x_t is noised, the
    network sees x_0 elsewhere, and the loss is averaged over the patch only.

    x_t = q_sample(x_0, t, noise) inside the mask and x_0 outside; the terms are those of
    ``diffusion.training_losses`` (the MSE of the predicted eps, x_0 or x_{t-1}; with a learned
    variance the VB term on the detached mean) restricted to the mask. A mask of the whole image gives
    ``diffusion.training_losses``. Returns dict(loss, mse[, vb]), each (B,).
    """
    model_kwargs = model_kwargs or {}
    if noise is None:
        noise = th.randn_like(x_start)
    x_t = th.where(mask, diffusion.q_sample(x_start, t, noise=noise), x_start)
    outputs = []

    def network(x, ts, **kwargs):
        outputs.append(model(x, ts, **kwargs))
        return outputs[-1]

    # one network call through the process, so that it sees the timesteps training_losses would give it
    # (a respaced process maps its indices back to the original ones)
    diffusion.p_mean_variance(network, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)
    output = outputs[0]
    C = x_start.shape[1]
    terms = {}

    def vb_of(model_output):
        """The VB term per pixel: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), the decoder NLL at t = 0, in bits."""
        p = diffusion.p_mean_variance(lambda *_, **__: model_output, x_t, t, clip_denoised=False)
        true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])
        nll = -discretized_gaussian_log_likelihood(x_start, means=p["mean"], log_scales=0.5 * p["log_variance"])
        at_zero = (t == 0).view(-1, *([1] * (x_start.ndim - 1)))
        return _masked_mean(th.where(at_zero, nll, kl), mask) / math.log(2.0)

    if diffusion.loss_type.is_vb():
        terms["loss"] = vb_of(output)
        if diffusion.loss_type == LossType.RESCALED_KL:
            terms["loss"] = terms["loss"] * diffusion.num_timesteps
        return terms
    if diffusion.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
        eps_part, var_values = th.split(output, C, dim=1)
        terms["vb"] = vb_of(th.cat([eps_part.detach(), var_values], dim=1))  # the VB term trains the variance only
        if diffusion.loss_type == LossType.RESCALED_MSE:
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)
        output = eps_part
    if diffusion.model_mean_type == ModelMeanType.PREVIOUS_X:
        target = diffusion.q_posterior_mean_variance(x_start, x_t, t)[0]
    elif diffusion.model_mean_type == ModelMeanType.START_X:
        target = x_start
    else:
        target = noise
    terms["mse"] = _masked_mean((target - output) ** 2, mask)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
