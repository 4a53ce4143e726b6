"""Guidance towards a class: the classifier's gradient (Dhariwal & Nichol 2021) or classifier-free
guidance (Ho & Salimans 2022)."""
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


def make_cfg_model(model, guidance_scale: float, null_class: int, channels: int):
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): a network call that returns
    eps = (1 + W) eps(x, t, y) - W eps(x, t, null) in its first ``channels`` output channels
    (W = ``guidance_scale``), the conditional prediction's other channels (the learned variance)
    unchanged. The conditional and the unconditional predictions come from one batched call.

    ``model(x, t, y=...)`` is a class-conditional network trained with label dropout to
    ``null_class`` (the "no class" label). With W = 0 it is the conditional network.
    """
    w = float(guidance_scale)

    def guided(x: th.Tensor, t: th.Tensor, y: th.Tensor | None = None, **kwargs) -> th.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs the target class y (pass model_kwargs={'y': ...})")
        out = model(th.cat([x, x]), th.cat([t, t]), y=th.cat([y, th.full_like(y, null_class)]), **kwargs)
        cond, uncond = out.chunk(2)  # (B, C_out, H, W) each
        eps = (1 + w) * cond[:, :channels] - w * uncond[:, :channels]
        return th.cat([eps, cond[:, channels:]], dim=1)

    return guided
