"""Precision, memory layout and compilation of networks: what training and translation share."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch as th

from ..util.errors import UserError
from ..util.flags import PRECISIONS

_DTYPES = {"fp32": None, "bf16": th.bfloat16, "fp16": th.float16}


def autocast_for(device: th.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """Context-manager factory for the chosen precision (fp32: no autocast)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: th.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, use_fp16: bool, flag: str = "--use_fp16") -> str:
    """The precision of one network: guided diffusion's ``--use_fp16`` (or ``--classifier_use_fp16``)
    means fp16; with another ``--precision`` than fp32 the two flags contradict each other."""
    if not use_fp16:
        return precision
    if precision not in ("fp32", "fp16"):
        raise UserError(f"{flag} True: contradicts --precision {precision} (use one of them)")
    return "fp16"


def wrap_network(net: th.nn.Module, autocast: Callable, channels_last: bool = False):
    """Call ``net`` under ``autocast`` (and channels-last layout) and return float32 outputs."""

    def call(x, t, **kwargs):
        if channels_last:
            x = x.contiguous(memory_format=th.channels_last)
        with autocast():
            out = net(x, t, **kwargs)
        return out.float()

    return call


def compile_network(net, device: th.device):
    """``torch.compile`` for sampling. On the CPU with inductor freezing: the weights, fixed while
    translating, are folded in as constants and pre-packed for oneDNN (1.19x over eager at 64x64
    with channels-last; benchmarks/RESULTS.md). The compiled network must be called under no_grad.

    Shapes are static (``dynamic=False``): a last, smaller batch gets its own compiled graph instead
    of a dynamic-shape one, which is slower and, with torch 2.13's inductor, can fail to compile."""
    if device.type == "cpu":
        return th.compile(net, dynamic=False, options={"freezing": True})
    return th.compile(net, dynamic=False)


def prepare_for_inference(net: th.nn.Module, device: th.device, channels_last: bool = False) -> th.nn.Module:
    """Move ``net`` to ``device`` in eval mode with frozen weights (and channels-last layout)."""
    net.to(device).eval()
    net.requires_grad_(False)
    if channels_last:
        net.to(memory_format=th.channels_last)
    return net
