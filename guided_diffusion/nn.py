"""Small layers and helpers shared by the networks and the diffusion maths."""
from __future__ import annotations

import math

import torch as th
import torch.nn as nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 and returns the input dtype.

    Keeps half-precision activations numerically safe, as in guided diffusion.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        if (x.device.type == "cpu" and x.ndim == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=th.channels_last)):
            # PyTorch's channels-last GroupNorm kernel on the CPU loses precision when a group's
            # mean is large against its spread (errors of 3e-4 at mean 1 and 4e-2 at mean 10 for
            # a spread of 0.1, where the contiguous kernel gives 2e-6 and 2e-5): normalise a
            # contiguous copy instead
            return super().forward(x.float().contiguous()).to(x.dtype, memory_format=th.channels_last)
        if x.dtype == th.float32:
            return super().forward(x)
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The normalisation layer of every block: 32 groups."""
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"dims={dims}: expected 1, 2 or 3")
    return layers[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"dims={dims}: expected 1, 2 or 3")
    return layers[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Module:
    return nn.Linear(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (residual branches start as identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def mean_flat(tensor: th.Tensor) -> th.Tensor:
    """Mean over every dimension but the batch dimension: (B, ...) -> (B,)."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def timestep_embedding(timesteps: th.Tensor, dim: int, max_period: float = 10000.0) -> th.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim).

    Transformer-style frequencies from 1 down to 1/max_period; the cosine half
    comes first, then the sine half (the order guided-diffusion checkpoints expect).
    """
    half = dim // 2
    freqs = th.exp(
        -math.log(max_period) * th.arange(half, dtype=th.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = th.cat([th.cos(args), th.sin(args)], dim=-1)
    if dim % 2:
        emb = th.cat([emb, th.zeros_like(emb[:, :1])], dim=-1)
    return emb
