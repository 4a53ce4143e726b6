"""The FixedPoint-GAN baseline (Siddiquee et al. 2019; SPEC section 9): its flags, network factory,
training piece, scripts (fpgan_train.py, fpgan_translate.py), translator and demo flags. The networks
and losses are :mod:`guided_diffusion.baselines.fpgan`."""
from __future__ import annotations

from dataclasses import dataclass

import torch as th

from ...baselines import fpgan as fpgan_lib
from ...baselines.fpgan import Discriminator, Generator, translate_to_healthy
from ...datasets.loaders import item_labels
from ...script_util import in_channels_for
from ...util import logger
from ...util.errors import UserError
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
class FPGANFlags(FlagGroup):
    NAME = "fpgan"
    ABOUT = "the FixedPoint-GAN baseline (Siddiquee et al. 2019)"
    fpgan_width: int = flag(64, "channels of the generator's first layer")
    fpgan_res_blocks: int = flag(6, "residual blocks of the generator")
    fpgan_d_width: int = flag(64, "channels of the discriminator's first layer")
    fpgan_d_depth: int = flag(6, "stride-2 layers of the discriminator")


@dataclass(frozen=True)
class FPGANLossFlags(FlagGroup):
    NAME = "fpgan losses"
    ABOUT = "FixedPoint-GAN's loss weights and critic steps (paper: 1, 10, 10, 10, 5)"
    lambda_cls: float = flag(1.0, "weight of the domain classification terms")
    lambda_gp: float = flag(10.0, "weight of the WGAN gradient penalty")
    lambda_rec: float = flag(10.0, "weight of the cycle-consistency term")
    lambda_id: float = flag(10.0, "weight of the fixed-point (identity) term")
    n_critic: int = flag(5, "critic steps per generator step")


FPGAN_FLAGS = SHAPE_FLAGS + flag_names(FPGANFlags)
"""What a FixedPoint-GAN checkpoint fixes."""
FPGAN_FLAGS_HINT = "check --fpgan_width, --fpgan_res_blocks, --fpgan_d_width, --fpgan_d_depth, --image_size, --dataset"


def create_fpgan(data: DataFlags, fpgan: FPGANFlags) -> tuple[Generator, Discriminator]:
    """FixedPoint-GAN's generator and discriminator."""
    if data.image_size < 4 or data.image_size % 4:
        raise UserError(f"--image_size {data.image_size}: the FixedPoint-GAN generator needs a multiple of 4")
    channels = in_channels_for(data.dataset)
    gen = Generator(channels, width=fpgan.fpgan_width, res_blocks=fpgan.fpgan_res_blocks)
    disc = Discriminator(channels, data.image_size, width=fpgan.fpgan_d_width, depth=fpgan.fpgan_d_depth)
    return gen, disc


class FPGANPiece(Piece):
    """FixedPoint-GAN (:mod:`guided_diffusion.baselines.fpgan`): each step a critic step (``opt_d``),
    every ``n_critic``-th step also a generator step (``opt_g``); Adam with beta1 = 0.5."""

    kind = "fpgan"

    def __init__(self, gen: Generator, disc: Discriminator, *, lambda_cls: float = 1.0,
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
        healthy = translate_to_healthy(self.gen, x[:1])
        trainer.monitor.images("input", x[0], title="training input")
        trainer.monitor.images("healthy", healthy[0], title="FixedPoint-GAN: healthy translation")


# SPEC section 9: 150 epochs
FPGANTrainConfig = script_config("fpgan_train", TrainingConfigBase, {**BASELINE_TRAINING, "epochs": 150},
                                 resumed("fpgan_train", FPGAN_FLAGS), module=__name__, length=LengthFlags,
                                 fpgan=FPGANFlags, fpgan_losses=FPGANLossFlags)
FPGANTranslateConfig = script_config("fpgan_translate", TranslationConfigBase, BASELINE_TRANSLATION,
                                     translated("fpgan_train", FPGAN_FLAGS), module=__name__, fpgan=FPGANFlags)


def train_fpgan(cfg: FPGANTrainConfig, monitor=None) -> dict:
    """scripts/fpgan_train.py: FixedPoint-GAN on healthy and diseased training images."""
    def piece(dataset, device) -> FPGANPiece:
        gen, disc = create_fpgan(cfg.data, cfg.fpgan)
        gen.to(device)
        disc.to(device)
        if len(set(item_labels(dataset, cfg.data.num_workers))) < 2:
            logger.warn(f"--data_dir {cfg.data.data_dir}: only one class present; FixedPoint-GAN needs "
                        "healthy and diseased images to learn the translation")
        losses = cfg.fpgan_losses
        return FPGANPiece(gen, disc, lambda_cls=losses.lambda_cls, lambda_gp=losses.lambda_gp,
                          lambda_rec=losses.lambda_rec, lambda_id=losses.lambda_id, n_critic=losses.n_critic)

    return train_baseline(cfg, piece, monitor)


def fpgan_translator(cfg: FPGANTranslateConfig, device: th.device) -> NetworkTranslation:
    """G(x, healthy) of FixedPoint-GAN as the healthy translation, its checkpoint loaded."""
    gen, _ = create_fpgan(cfg.data, cfg.fpgan)
    load_weights(gen, checkpoint_of(cfg), "--model_path", "FixedPoint-GAN G", hint=FPGAN_FLAGS_HINT)
    prepare_for_inference(gen, device)
    return NetworkTranslation("FixedPoint-GAN", lambda x: translate_to_healthy(gen, x))


# make compare: a small FixedPoint-GAN on the 64 x 64 demo data; the translation loads the generator
DEMO_FPGAN = {"image_size": 64, "fpgan_width": 16, "fpgan_res_blocks": 3, "fpgan_d_width": 16, "fpgan_d_depth": 4}

METHOD = Method(
    key="fpgan", name="FixedPoint-GAN",
    commands={"fpgan_train": Command(FPGANTrainConfig, train_fpgan, True),
              "fpgan_translate": translation_command(FPGANTranslateConfig, fpgan_translator)},
    translation="fpgan_translate", translator=fpgan_translator, training="fpgan_train",
    demo=Demo(translate=DEMO_FPGAN, train=DEMO_FPGAN, steps="fpgan_steps", batch_size=10, checkpoint="G"))
