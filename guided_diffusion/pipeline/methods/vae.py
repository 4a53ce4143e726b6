"""The VAE baseline (cAAE, Chen & Konukoglu 2018; SPEC section 9): its flags, network factory, training
piece, scripts (vae_train.py, vae_translate.py), translator and demo flags. The network and its losses
are :mod:`guided_diffusion.baselines.vae`."""
from __future__ import annotations

from dataclasses import dataclass

import torch as th

from ...baselines import vae as vae_lib
from ...baselines.vae import LATENT_PRIORS, VAE, LatentDiscriminator, latent_prior_check
from ...script_util import in_channels_for
from ...util.flags import DataFlags, LengthFlags
from ...util.flagspec import FlagGroup, flag
from ..devices import prepare_for_inference
from ..networks import SHAPE_FLAGS, flag_names, load_weights
from ..runs import (
    BASELINE_TRAINING,
    BASELINE_TRANSLATION,
    TrainingConfigBase,
    TranslationConfigBase,
    checkpoint_of,
    resumed,
    script_config,
    train_baseline,
    translated,
)
from ..train import Piece, Trainer
from ..translators import NetworkTranslation
from .base import Command, Demo, Method, translation_command


@dataclass(frozen=True)
class VAEFlags(FlagGroup):
    NAME = "vae"
    ABOUT = "the VAE baseline (cAAE, Chen & Konukoglu 2018)"
    vae_width: int = flag(32, "channels of the first encoder layer")
    vae_depth: int = flag(6, "stride-2 downsamplings (the bottleneck side is --image_size / 2^depth)")
    latent_dim: int = flag(128, "size of the latent code")
    latent_prior: str = flag("adversarial", "adversarial (the cAAE) or kl (a Gaussian VAE)", choices=LATENT_PRIORS)
    latent_disc_width: int = flag(256, "units of the latent discriminator (adversarial prior)")


@dataclass(frozen=True)
class VAELossFlags(FlagGroup):
    NAME = "vae losses"
    ABOUT = "weights of the VAE's loss terms"
    kl_weight: float = flag(1.0, "weight of the KL term (kl prior)")
    lambda_adv: float = flag(1.0, "weight of the encoder's adversarial term (adversarial prior)")
    lambda_consistency: float = flag(1.0, "weight of the latent consistency ||E(x) - E(x_rec)||^2")


VAE_FLAGS = SHAPE_FLAGS + flag_names(VAEFlags)
"""What a VAE checkpoint fixes."""
VAE_FLAGS_HINT = ("check --vae_width, --vae_depth, --latent_dim, --latent_prior, --latent_disc_width, --image_size, "
                  "--dataset")


def create_vae(data: DataFlags, vae: VAEFlags) -> tuple[VAE, LatentDiscriminator | None]:
    """The VAE and, for the adversarial prior, its latent discriminator (else None)."""
    variational = latent_prior_check(vae.latent_prior)
    model = VAE(in_channels_for(data.dataset), data.image_size, width=vae.vae_width, depth=vae.vae_depth,
                latent_dim=vae.latent_dim, variational=variational)
    disc = None if variational else LatentDiscriminator(vae.latent_dim, vae.latent_disc_width)
    return model, disc


class VAEPiece(Piece):
    """The cAAE baseline (:mod:`guided_diffusion.baselines.vae`), trained on healthy images.

    Adversarial prior, three phases per step: the autoencoder on L_rec + lambda_cons L_cons
    (optimizer ``opt_ae``), the latent discriminator (``opt_disc``), the encoder against it
    (``opt_enc``); the adversarial players use beta1 = 0.5 (Radford et al. 2016). KL prior: one
    phase on the ELBO-like loss.
    """

    kind = "vae"

    def __init__(self, model: VAE, disc: LatentDiscriminator | None, *, kl_weight: float = 1.0,
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


# SPEC section 9: 500 epochs
VAETrainConfig = script_config("vae_train", TrainingConfigBase, {**BASELINE_TRAINING, "epochs": 500},
                               resumed("vae_train", VAE_FLAGS), module=__name__, length=LengthFlags, vae=VAEFlags,
                               vae_losses=VAELossFlags)
VAETranslateConfig = script_config("vae_translate", TranslationConfigBase, BASELINE_TRANSLATION,
                                   translated("vae_train", VAE_FLAGS), module=__name__, vae=VAEFlags)


def train_vae(cfg: VAETrainConfig, monitor=None) -> dict:
    """scripts/vae_train.py: the cAAE baseline on the healthy training images."""
    def piece(dataset, device) -> VAEPiece:
        model, disc = create_vae(cfg.data, cfg.vae)
        for net in (model, disc):
            if net is not None:
                net.to(device)
        losses = cfg.vae_losses
        return VAEPiece(model, disc, kl_weight=losses.kl_weight, lambda_adv=losses.lambda_adv,
                        lambda_consistency=losses.lambda_consistency)

    return train_baseline(cfg, piece, monitor, healthy="VAE")


def vae_translator(cfg: VAETranslateConfig, device: th.device) -> NetworkTranslation:
    """The VAE's reconstruction as the healthy translation, its checkpoint loaded."""
    model, _ = create_vae(cfg.data, cfg.vae)
    load_weights(model, checkpoint_of(cfg), "--model_path", "VAE", hint=VAE_FLAGS_HINT)
    prepare_for_inference(model, device)
    return NetworkTranslation("VAE", model.reconstruct)


# make compare: a small VAE on the 64 x 64 demo data
DEMO_VAE = {"image_size": 64, "vae_width": 16, "vae_depth": 4, "latent_dim": 64, "latent_disc_width": 128}

METHOD = Method(
    key="vae", name="VAE (cAAE)",
    commands={"vae_train": Command(VAETrainConfig, train_vae, True),
              "vae_translate": translation_command(VAETranslateConfig, vae_translator)},
    translation="vae_translate", translator=vae_translator, training="vae_train",
    demo=Demo(translate=DEMO_VAE, train=DEMO_VAE, steps="vae_steps", batch_size=10))
