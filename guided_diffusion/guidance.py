"""Guidance towards a class: the classifier's gradient (Dhariwal & Nichol 2021) or classifier-free
guidance (Ho & Salimans 2022), and a schedule of the classifier's scale over the decoding steps.

:class:`GuidedModel` is the network as guided, one object a translation loop samples with (the pattern of
k-diffusion's ``external.py``): the network, the decoding network of classifier-free guidance, the
classifier's ``cond_fn`` and the target class, built by :func:`classifier_guided`, :func:`cfg_guided` or
:func:`unguided`; the translation levers transform it as a whole."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch as th
import torch.nn.functional as F

from .script_util import HEALTHY
from .translation_levers import mask_gradient, with_clean_context
from .util.flags import GUIDANCE


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


def _fade_out_linear(tau: th.Tensor) -> th.Tensor:
    return tau


def _fade_out_cosine(tau: th.Tensor) -> th.Tensor:
    return th.sin(tau * (math.pi / 2)) ** 2


def _fade_in_linear(tau: th.Tensor) -> th.Tensor:
    return 1 - tau


SCALE_WEIGHTS = {"linear": _fade_out_linear, "cosine": _fade_out_cosine, "rising": _fade_in_linear}
"""w(tau) of each schedule but "constant" (w = 1); tau = t / t_start in [0, 1] is 1 at the first
decoding step and 0 at t = 0 (see :func:`schedule_cond_fn`)."""


def scale_weight(schedule: str, t: th.Tensor, t_start: float) -> th.Tensor:
    """w(t) of ``schedule`` at the timesteps ``t`` (B,), in the units the network is called with, for a
    decoding that starts at ``t_start`` (same units): a float32 tensor (B,) in [0, 1]."""
    if schedule == "constant":
        return th.ones(t.shape, dtype=th.float32, device=t.device)
    if schedule not in SCALE_WEIGHTS:
        raise ValueError(f"scale schedule {schedule!r}: expected constant or one of {', '.join(SCALE_WEIGHTS)}")
    tau = (t.float() / t_start).clamp(0, 1) if t_start > 0 else th.ones(t.shape, device=t.device)
    return SCALE_WEIGHTS[schedule](tau)


def schedule_cond_fn(cond_fn, schedule: str, t_start: float):
    """``cond_fn`` with its scale s multiplied by w(t): s(t) = s * w(t / t_start) over a decoding that
    starts at timestep ``t_start`` (the units ``cond_fn`` is called with) and ends at t = 0.

    * constant: w = 1; ``cond_fn`` itself is returned (the paper's guidance, bit for bit);
    * linear: w = tau (s at the first decoding step, fading to 0 at t = 0);
    * cosine: w = sin^2(pi tau / 2) (near s for longer at the start, near 0 for longer at the end);
    * rising: w = 1 - tau (0 at the first step, s at t = 0; linear's mirror).
    """
    if cond_fn is None or schedule == "constant":
        return cond_fn
    scale_weight(schedule, th.zeros(1), t_start)  # an unknown name fails here, not at the first step

    def scheduled(x: th.Tensor, t: th.Tensor, **kwargs) -> th.Tensor:
        grad = cond_fn(x, t, **kwargs)
        return grad * scale_weight(schedule, t, t_start).to(grad.device).view(-1, *([1] * (grad.ndim - 1)))

    return scheduled


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


@dataclass(frozen=True)
class GuidedModel:
    """The diffusion network as guided towards ``target``: what a translation loop samples with.

    The loop hands the pieces to gaussian_diffusion's pinned API unchanged: ``network`` as ``model``
    (DDIM's encoding, and the decoding unless ``decode`` is set), ``decode`` as ``decode_model``,
    ``cond_fn`` as ``cond_fn``, :meth:`model_kwargs` as ``model_kwargs``.

    * ``network(x_t, t, y=...)``: the eps network, (B, C, H, W) in, (B, C_out, H, W) out;
    * ``decode``: the network of the decoding half (classifier-free guidance), None: ``network``;
    * ``cond_fn(x_t, t, y=...)``: s * grad_x log p(y | x_t), (B, C, H, W); None: no classifier guidance;
    * ``target``: the class y every callable is given (HEALTHY = 0); None: an unconditional network, no y;
    * ``kind`` (one of ``util.flags.GUIDANCE``, the choices of --guidance) and ``scale`` (s or W) say what the guidance is, for names.
    """

    network: Callable
    decode: Callable | None = None
    cond_fn: Callable | None = None
    target: int | None = HEALTHY
    kind: str = "none"
    scale: float = 0.0

    def __post_init__(self):
        if self.kind not in GUIDANCE:
            raise ValueError(f"guidance {self.kind!r}: expected one of {', '.join(GUIDANCE)}")

    @property
    def decoder(self) -> Callable:
        """The network of the decoding steps (DDIM's second half, every DDPM step)."""
        return self.decode if self.decode is not None else self.network

    def model_kwargs(self, batch: int, device) -> dict:
        """The keyword arguments of every call: ``y`` = ``target`` per sample (B,), none without a target."""
        if self.target is None:
            return {}
        return {"y": th.full((batch,), self.target, dtype=th.long, device=device)}

    def describe(self) -> str:
        """The guidance for a method's name: "s=100", "CFG W=2" or "unguided"."""
        return {"classifier": f"s={self.scale:g}", "cfg": f"CFG W={self.scale:g}", "none": "unguided"}[self.kind]

    def scheduled(self, schedule: str, t_start: float) -> GuidedModel:
        """The classifier's scale times w(t) of ``schedule`` over a decoding that starts at ``t_start``
        (:func:`schedule_cond_fn`; "constant" keeps the very same ``cond_fn``)."""
        return replace(self, cond_fn=schedule_cond_fn(self.cond_fn, schedule, t_start))

    def with_clean_context(self, x_clean: th.Tensor, mask: th.Tensor) -> GuidedModel:
        """pDDPM's patch: every callable sees ``x_clean`` outside the boolean (B, 1, H, W) ``mask``
        (:func:`translation_levers.with_clean_context`)."""
        return replace(self, network=with_clean_context(self.network, x_clean, mask),
                       decode=with_clean_context(self.decode, x_clean, mask),
                       cond_fn=with_clean_context(self.cond_fn, x_clean, mask))

    def masked(self, mask: th.Tensor) -> GuidedModel:
        """AutoDDPM's resampling: the classifier's gradient is 0 outside the boolean (B, 1, H, W) ``mask``
        (:func:`translation_levers.mask_gradient`)."""
        return replace(self, cond_fn=mask_gradient(self.cond_fn, mask))


def classifier_guided(network: Callable, classifier: Callable, classifier_scale: float,
                      autocast=None, class_cond: bool = True) -> GuidedModel:
    """``network`` guided by ``classifier(x_t, t)`` logits towards "healthy" with scale s =
    ``classifier_scale`` (:func:`make_cond_fn`; Wolleb et al. 2022). The target class reaches the
    classifier always, the network only if it is class-conditional (``class_cond``; an unconditional
    network guided by a classifier, as Dhariwal & Nichol 2021 also sample)."""
    if not class_cond:
        network = _without_label(network)
    return GuidedModel(network, cond_fn=make_cond_fn(classifier, classifier_scale, autocast=autocast),
                       kind="classifier", scale=float(classifier_scale))


def _without_label(network: Callable) -> Callable:
    """``network`` called without the class label ``y`` its callers pass."""
    def call(x: th.Tensor, t: th.Tensor, y: th.Tensor | None = None, **kwargs) -> th.Tensor:
        return network(x, t, **kwargs)
    return call


def cfg_guided(network: Callable, guidance_scale: float, null_class: int, channels: int) -> GuidedModel:
    """The class-conditional ``network`` (trained with label dropout to ``null_class``) with classifier-free
    guidance of weight W = ``guidance_scale`` in the decoding (:func:`make_cfg_model`); the encoding uses
    the conditional network."""
    return GuidedModel(network, decode=make_cfg_model(network, guidance_scale, null_class, channels),
                       kind="cfg", scale=float(guidance_scale))


def unguided(network: Callable, class_cond: bool = True) -> GuidedModel:
    """``network`` with no guidance: given y = "healthy" if it is class-conditional, no y otherwise."""
    return GuidedModel(network, target=HEALTHY if class_cond else None)
