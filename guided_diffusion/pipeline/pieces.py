"""The models the training scaffold (:mod:`guided_diffusion.pipeline.train`) trains, one piece each.

A piece names its networks (the checkpoint files), its parameter groups (one AdamW each) and
computes its losses from the step's batch and the scaffold's draws for the global batch:

* :class:`DiffusionPiece`: the class-conditional diffusion UNet, guided diffusion's hybrid loss
  at timesteps from the schedule sampler, EMA weights (``ema_<rate>_NNNNNN.pt``);
* :class:`ClassifierPiece`: the noise-aware classifier, cross entropy on q(x_t | x_0), held-out
  loss and accuracy.

Each baseline's piece is in its method's module (:mod:`.methods`); :class:`OneNetworkPiece` is the
base of the pieces with one network.

``TrainLoop`` and ``ClassifierTrainLoop`` keep guided diffusion's names for the first two.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch as th
import torch.nn.functional as F

from ..resample import LossAwareSampler, UniformSampler
from ..script_util import NULL_CLASS
from ..translation_levers import patch_boxes, patch_masks, patched_training_losses
from ..unet_forensics import check_state_dict
from ..util import logger
from ..util.errors import UserError
from .train import Piece, TrainConfig, Trainer, step_generator


class OneNetworkPiece(Piece):
    """A piece with one network ``net`` (file prefix ``model``), one optimizer (``opt``), wrapped in DDP."""

    net: th.nn.Module

    def modules(self):
        return {"model": self.net}

    def param_groups(self):
        return {"opt": (list(self.net.parameters()), {})}

    def main_module(self):
        return self.net


def _parse_rates(ema_rate: str) -> list[float]:
    return [float(r) for r in str(ema_rate).split(",")] if str(ema_rate) else []


def gaussian_noise(shape, generator: th.Generator) -> th.Tensor:
    """The forward process's noise of the paper: standard normal."""
    return th.randn(shape, generator=generator, device=generator.device)


class DiffusionPiece(OneNetworkPiece):
    """The diffusion UNet (guided diffusion's TrainLoop): loss ``diffusion.training_losses``
    weighted by the schedule sampler's importance weights, EMA of the weights after each step.

    ``noise_fn(shape, generator)`` draws the forward process's noise for the global batch (Gaussian,
    or AnoDDPM's simplex noise). With ``p_uncond`` > 0 each label is replaced by ``null_class`` with
    that probability (label dropout of classifier-free guidance, Ho & Salimans 2022). With ``patch_size``
    > 0 only one patch per image, drawn from the grid of ``patch_size`` squares that tile it, is noised
    and the loss is that patch's (pDDPM, Behrendt et al. 2023: the network learns to reconstruct a patch
    from its clean context)."""

    kind = "model"

    def __init__(self, model, diffusion, ema_rate: str = "0.9999", schedule_sampler=None,
                 noise_fn: Callable = gaussian_noise, p_uncond: float = 0.0, null_class: int = NULL_CLASS,
                 patch_size: int = 0):
        if not 0.0 <= p_uncond < 1.0:
            raise UserError(f"--p_uncond {p_uncond}: expected a probability, 0 <= p < 1")
        self.patch_size = patch_size
        self.model = self.net = model
        self.diffusion = diffusion
        self.ema_rate = _parse_rates(ema_rate)
        self.ema_params = [[p.detach().clone() for p in model.parameters()] for _ in self.ema_rate]
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.noise_fn = noise_fn
        self.p_uncond = p_uncond
        self.null_class = null_class

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        t, weights = self.schedule_sampler.sample(trainer.global_batch, trainer.device, generator=trainer.generator)
        noise = self.noise_fn((trainer.global_batch, *x.shape[1:]), trainer.generator)
        t, weights, noise = trainer.mine(t, weights, noise.to(trainer.device))
        if getattr(self.model, "num_classes", None) is None:
            cond = {k: v for k, v in cond.items() if k != "y"}  # an unconditional model takes no label
        if self.p_uncond:
            drop = trainer.rand() < self.p_uncond  # (B,) this rank's share of the global draw
            cond = {**cond, "y": th.where(drop, th.full_like(cond["y"], self.null_class), cond["y"])}
        mask = None
        if self.patch_size:  # pDDPM: one patch of the grid per image (drawn after the paper's draws)
            n_patches = len(patch_boxes(x.shape[2], x.shape[3], self.patch_size))
            mask = patch_masks(x.shape, self.patch_size, trainer.randint(n_patches))

        def loss(sl):
            kwargs = dict(noise=noise[sl], model_kwargs={k: v[sl] for k, v in cond.items()})
            if mask is None:
                losses = self.diffusion.training_losses(trainer.net, x[sl], t[sl], **kwargs)
            else:
                losses = patched_training_losses(self.diffusion, trainer.net, x[sl], t[sl], mask[sl], **kwargs)
            if isinstance(self.schedule_sampler, LossAwareSampler):
                self.schedule_sampler.update_with_local_losses(t[sl], losses["loss"].detach())
            return (losses["loss"] * weights[sl]).mean(), losses

        trainer.minimise("opt", loss, x.shape[0])

    def after_step(self, trainer: Trainer) -> None:
        params = [p.detach() for p in self.model.parameters()]
        for rate, ema in zip(self.ema_rate, self.ema_params):
            th._foreach_lerp_(ema, params, 1.0 - rate)  # ema <- rate * ema + (1 - rate) * p

    @staticmethod
    def ema_prefix(rate: float) -> str:
        return f"ema_{rate}_"

    def ema_state_dict(self, params) -> dict:
        state = self.model.state_dict()
        for (name, _), p in zip(self.model.named_parameters(), params):
            state[name] = p.detach().clone()
        return state

    def state_dicts(self):
        emas = {self.ema_prefix(rate): self.ema_state_dict(params)
                for rate, params in zip(self.ema_rate, self.ema_params)}
        return {**emas, "model": self.model.state_dict()}

    def check_state_dicts(self, states, paths):
        for prefix in states:
            what = "diffusion model" if prefix == "model" else "EMA weights of the diffusion model"
            check_state_dict(self.model, states[prefix], paths[prefix], what)

    def load_state_dicts(self, states):
        self.model.load_state_dict(states["model"], strict=True)
        names = [n for n, _ in self.model.named_parameters()]
        for rate, params in zip(self.ema_rate, self.ema_params):
            state = states[self.ema_prefix(rate)]
            for name, p in zip(names, params):
                p.copy_(state[name])


class ClassifierPiece(OneNetworkPiece):
    """The noise-aware classifier: cross entropy of classifier(q_sample(x, t), t) against the label,
    at timesteps from the schedule sampler (guided diffusion's classifier_train.py)."""

    kind = "classifier"

    def __init__(self, classifier, diffusion, noised: bool = True, schedule_sampler=None,
                 make_val_data: Callable[[], Iterator] | None = None, eval_interval: int = 0,
                 val_batches: int = 4, max_t: int = 0):
        if not 0 <= max_t <= diffusion.num_timesteps:
            raise UserError(f"--classifier_max_t {max_t}: expected 0 (all) or 1..{diffusion.num_timesteps}")
        self.max_t = max_t
        self.classifier = self.net = classifier
        self.diffusion = diffusion
        self.noised = noised
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.make_val_data = make_val_data
        self.eval_interval = eval_interval
        self.val_batches = val_batches
        self._val_cache: list | None = None

    def logits_and_terms(self, net, x, y, t, noise):
        if self.noised:
            x = self.diffusion.q_sample(x, t, noise=noise)
        else:
            t = th.zeros_like(t)
        logits = net(x, t)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        acc = (logits.argmax(dim=-1) == y).float()
        return loss, {"loss": loss, "acc": acc}

    def timesteps(self, n: int, generator: th.Generator, device) -> th.Tensor:
        """n training timesteps: the schedule sampler's, or uniform in [0, max_t) with ``max_t``."""
        if self.max_t:
            return th.randint(0, self.max_t, (n,), generator=generator, device=generator.device).to(device)
        return self.schedule_sampler.sample(n, device, generator=generator)[0]

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        t = self.timesteps(trainer.global_batch, trainer.generator, trainer.device)
        noise = th.randn((trainer.global_batch, *x.shape[1:]), generator=trainer.generator, device=trainer.device)
        t, noise = trainer.mine(t, noise)

        def loss(sl):
            per_image, terms = self.logits_and_terms(trainer.net, x[sl], cond["y"][sl], t[sl], noise[sl])
            return per_image.mean(), terms

        trainer.minimise("opt", loss, x.shape[0])

    def periodic(self, trainer: Trainer) -> None:
        if self.make_val_data is not None and self.eval_interval and trainer.step % self.eval_interval == 0:
            self.evaluate(trainer)

    def _held_out(self, device) -> list:
        """The first ``val_batches`` held-out batches, read once and kept on the device."""
        if self._val_cache is None:
            self._val_cache = []
            for i, (x, cond) in enumerate(self.make_val_data()):
                if i >= self.val_batches:
                    break
                self._val_cache.append((x.to(device), cond["y"].to(device)))
        return self._val_cache

    @th.no_grad()
    def evaluate(self, trainer: Trainer) -> dict:
        """Loss and accuracy on the held-out batches at random noise levels (seeded per step)."""
        self.classifier.eval()
        sums: dict[str, float] = {}
        n = 0
        gen = step_generator(trainer.cfg.run.seed + 1, trainer.step, trainer.device)
        for x, y in self._held_out(trainer.device):
            t = th.randint(0, self.max_t or self.diffusion.num_timesteps, (x.shape[0],), generator=gen,
                           device=trainer.device)
            noise = th.randn(x.shape, generator=gen, device=trainer.device)
            with trainer.autocast():
                _, terms = self.logits_and_terms(self.classifier, x, y, t, noise)
            for k, v in terms.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + v.float().sum().item()
            n += x.shape[0]
        self.classifier.train()
        values = {k: v / max(n, 1) for k, v in sums.items()}
        if trainer.is_main and values:
            for k, v in values.items():
                logger.logkv(k, v)
            if trainer.monitor is not None:
                trainer.monitor.line("classifier_accuracy", trainer.step, {"val_acc": values["val_acc"]},
                                     title="classifier accuracy")
        return values


class TrainLoop(Trainer):
    """guided diffusion's name: the scaffold training a :class:`DiffusionPiece`."""

    def __init__(self, model, diffusion, make_data, config: TrainConfig, ema_rate: str = "0.9999",
                 schedule_sampler=None, monitor=None, device: th.device | None = None):
        self.model = model
        super().__init__(DiffusionPiece(model, diffusion, ema_rate, schedule_sampler), make_data, config,
                         monitor=monitor, device=device)


class ClassifierTrainLoop(Trainer):
    """The scaffold training a :class:`ClassifierPiece`."""

    def __init__(self, classifier, diffusion, make_data, config: TrainConfig, noised: bool = True,
                 make_val_data: Callable[[], Iterator] | None = None, eval_interval: int = 0,
                 schedule_sampler=None, monitor=None, device: th.device | None = None):
        self.model = classifier
        super().__init__(ClassifierPiece(classifier, diffusion, noised, schedule_sampler, make_val_data, eval_interval),
                         make_data, config, monitor=monitor, device=device)

    def evaluate(self, max_batches: int = 4) -> dict:
        if max_batches != self.piece.val_batches:
            self.piece.val_batches, self.piece._val_cache = max_batches, None
        return self.piece.evaluate(self)
