"""Classifier guidance: the gradient of log p(y | x_t, t) from the noise-aware classifier."""
from __future__ import annotations

import contextlib

import torch as th
import torch.nn.functional as F


def make_cond_fn(classifier, classifier_scale: float, autocast=None):
    """Return ``cond_fn(x, t, y=None, **kwargs)`` = s * d/dx log softmax(classifier(x, t))[y].

    Dhariwal & Nichol 2021, Alg. 1/2; s = ``classifier_scale`` (100 in Wolleb et al.).
    ``y`` is the target class per sample (0 = healthy); it comes from ``model_kwargs``.
    ``autocast``: an optional context-manager factory (e.g. bf16 autocast) for the
    classifier forward; the gradient is returned in float32.
    """
    scale = float(classifier_scale)

    def cond_fn(x: th.Tensor, t: th.Tensor, y: th.Tensor | None = None, **_) -> th.Tensor:
        if y is None:
            raise ValueError("cond_fn needs the target class y (pass model_kwargs={'y': ...})")
        with th.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            with (autocast() if autocast is not None else contextlib.nullcontext()):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[th.arange(len(log_probs), device=log_probs.device), y.view(-1)]
            grad = th.autograd.grad(selected.sum(), x_in)[0]
        return grad * scale

    return cond_fn
