"""The models the training scaffold (:mod:`guided_diffusion.pipeline.train`) trains, one piece each.

A piece names its networks (the checkpoint files), its parameter groups (one AdamW each) and
computes its losses from the step's batch and the scaffold's draws for the global batch:

* :class:`DiffusionPiece`: the class-conditional diffusion UNet, guided diffusion's hybrid loss
  at timesteps from the schedule sampler, EMA weights (``ema_<rate>_NNNNNN.pt``);
* :class:`ClassifierPiece`: the noise-aware classifier, cross entropy on q(x_t | x_0), held-out
  loss and accuracy;
* :class:`VAEPiece`: the cAAE baseline, three phases per step (adversarial prior) or one (KL);
* :class:`FPGANPiece`: FixedPoint-GAN, a critic step every step and a generator step every
  ``n_critic``;
* :class:`DAEPiece`: the denoising autoencoder, coarse noise in, the clean image out.

``TrainLoop`` and ``ClassifierTrainLoop`` keep guided diffusion's names for the first two.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch as th
import torch.nn.functional as F

from ..baselines import dae as dae_lib
from ..baselines import fpgan as fpgan_lib
from ..baselines import vae as vae_lib
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


class VAEPiece(Piece):
    """The cAAE baseline (:mod:`guided_diffusion.baselines.vae`), trained on healthy images.

    Adversarial prior, three phases per step: the autoencoder on L_rec + lambda_cons L_cons
    (optimizer ``opt_ae``), the latent discriminator (``opt_disc``), the encoder against it
    (``opt_enc``); the adversarial players use beta1 = 0.5 (Radford et al. 2016). KL prior: one
    phase on the ELBO-like loss.
    """

    kind = "vae"

    def __init__(self, model: vae_lib.VAE, disc: vae_lib.LatentDiscriminator | None, *, kl_weight: float = 1.0,
                 lambda_adv: float = 1.0, lambda_consistency: float = 1.0):
        if (disc is None) != model.variational:
            raise ValueError("the adversarial prior needs a latent discriminator; the KL prior none")
        self.model, self.disc = model, disc
        self.kl_weight, self.lambda_adv, self.lambda_consistency = kl_weight, lambda_adv, lambda_consistency

    def modules(self):
        return {"model": self.model} if self.disc is None else {"zdisc": self.disc, "model": self.model}

    def param_groups(self):
        groups = {"opt_ae": (list(self.model.parameters()), {})}
        if self.disc is not None:
            gan = {"betas": (0.5, 0.999)}
            groups.update(opt_disc=(list(self.disc.parameters()), gan),
                          opt_enc=(vae_lib.encoder_parameters(self.model), gan))
        return groups

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        B, d = x.shape[0], self.model.latent_dim
        if self.model.variational:
            eps = trainer.randn(d)
            trainer.minimise("opt_ae", lambda sl: vae_lib.kl_vae_loss(
                self.model, x[sl], eps[sl], kl_weight=self.kl_weight, lambda_consistency=self.lambda_consistency), B)
            return
        # 1. reconstruction phase
        trainer.minimise("opt_ae", lambda sl: vae_lib.autoencoder_loss(
            self.model, x[sl], lambda_consistency=self.lambda_consistency), B)
        # 2. regularisation phase: D_z step, then an encoder step against D_z
        z_prior = trainer.randn(d)

        def disc_loss(sl):
            with th.no_grad():
                z_code = self.model.encode(x[sl])[0]
            loss = vae_lib.latent_discriminator_loss(self.disc, z_prior[sl], z_code)
            return loss, {"disc": loss}

        trainer.minimise("opt_disc", disc_loss, B)
        self.disc.requires_grad_(False)
        try:
            def adv_loss(sl):
                adv = vae_lib.encoder_adversarial_loss(self.disc, self.model.encode(x[sl])[0])
                return self.lambda_adv * adv, {"adv": adv}

            trainer.minimise("opt_enc", adv_loss, B)
        finally:
            self.disc.requires_grad_(True)

    @th.no_grad()
    def show(self, trainer: Trainer, x: th.Tensor) -> None:
        self.model.eval()
        healthy = self.model.reconstruct(x[:1])
        self.model.train()
        trainer.monitor.images("input", x[0], title="training input")
        trainer.monitor.images("healthy", healthy[0], title="VAE: healthy translation")


class FPGANPiece(Piece):
    """FixedPoint-GAN (:mod:`guided_diffusion.baselines.fpgan`): each step a critic step (``opt_d``),
    every ``n_critic``-th step also a generator step (``opt_g``); Adam with beta1 = 0.5."""

    kind = "fpgan"

    def __init__(self, gen: fpgan_lib.Generator, disc: fpgan_lib.Discriminator, *, lambda_cls: float = 1.0,
                 lambda_gp: float = 10.0, lambda_rec: float = 10.0, lambda_id: float = 10.0, n_critic: int = 5):
        if n_critic < 1:
            raise UserError(f"--n_critic {n_critic}: expected 1 or more")
        self.gen, self.disc = gen, disc
        self.lambda_cls, self.lambda_gp, self.lambda_rec, self.lambda_id = lambda_cls, lambda_gp, lambda_rec, lambda_id
        self.n_critic = n_critic

    def modules(self):
        return {"D": self.disc, "G": self.gen}

    def param_groups(self):
        gan = {"betas": (0.5, 0.999)}
        return {"opt_g": (list(self.gen.parameters()), gan), "opt_d": (list(self.disc.parameters()), gan)}

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        B, c_x = x.shape[0], cond["y"]
        c_trg = trainer.randint(self.gen.num_domains)  # same- and cross-domain targets, half each
        alpha = trainer.rand()
        trainer.minimise("opt_d", lambda sl: fpgan_lib.critic_loss(
            self.gen, self.disc, x[sl], c_x[sl], c_trg[sl], alpha[sl], lambda_cls=self.lambda_cls,
            lambda_gp=self.lambda_gp), B)
        if (trainer.step + 1) % self.n_critic:
            return
        self.disc.requires_grad_(False)  # no critic gradients from the generator's loss
        try:
            trainer.minimise("opt_g", lambda sl: fpgan_lib.generator_loss(
                self.gen, self.disc, x[sl], c_x[sl], c_trg[sl], lambda_cls=self.lambda_cls,
                lambda_rec=self.lambda_rec, lambda_id=self.lambda_id), B)
        finally:
            self.disc.requires_grad_(True)

    @th.no_grad()
    def show(self, trainer: Trainer, x: th.Tensor) -> None:
        healthy = fpgan_lib.translate_to_healthy(self.gen, x[:1])
        trainer.monitor.images("input", x[0], title="training input")
        trainer.monitor.images("healthy", healthy[0], title="FixedPoint-GAN: healthy translation")


class DAEPiece(OneNetworkPiece):
    """The denoising autoencoder (:mod:`guided_diffusion.baselines.dae`) on healthy images: coarse noise
    of ``noise_std`` on a ``noise_res`` grid, the masked reconstruction loss."""

    kind = "dae"

    def __init__(self, net, *, noise_res: int = 16, noise_std: float = 0.2):
        if noise_res < 1 or noise_std < 0:
            raise UserError(f"--noise_res {noise_res} / --noise_std {noise_std}: expected a positive grid side "
                            "and a non-negative standard deviation")
        self.net, self.noise_res, self.noise_std = net, noise_res, noise_std

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        eps = self.noise_std * trainer.randn(x.shape[1], self.noise_res, self.noise_res)
        shifts = trainer.randint(x.shape[-1], 2)  # (B, 2): rows, columns
        trainer.minimise("opt", lambda sl: dae_lib.dae_loss(trainer.net, x[sl], eps[sl], shifts[sl]), x.shape[0])

    @th.no_grad()
    def show(self, trainer: Trainer, x: th.Tensor) -> None:
        self.net.eval()
        healthy = dae_lib.translate_to_healthy(self.net, x[:1])
        self.net.train()
        trainer.monitor.images("input", x[0], title="training input")
        trainer.monitor.images("healthy", healthy[0], title="DAE: healthy translation")


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
