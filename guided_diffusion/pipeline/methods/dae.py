"""The denoising autoencoder (Kascenas et al. 2022): its flags, network factory (the UNet of the model
flags, without time), training piece, scripts (dae_train.py, dae_translate.py), translator and demo
flags. Its loss and translation are :mod:`guided_diffusion.baselines.dae`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch as th

from ...baselines import dae as dae_lib
from ...script_util import create_model
from ...util.errors import UserError
from ...util.flags import DataFlags, LengthFlags, ModelFlags
from ...util.flagspec import FlagGroup, flag
from ..devices import prepare_for_inference
from ..networks import UNET_NETWORK_FLAGS, check_unet_flags, load_weights
from ..pieces import OneNetworkPiece
from ..presets import DEMO_MODEL
from ..runs import (
    BASELINE_TRANSLATION,
    TrainingConfigBase,
    TranslationConfigBase,
    checkpoint_of,
    resumed,
    script_config,
    train_baseline,
    translated,
)
from ..train import Trainer
from ..translators import NetworkTranslation
from .base import Command, Demo, Method, translation_command


@dataclass(frozen=True)
class DAEFlags(FlagGroup):
    NAME = "dae"
    ABOUT = "the denoising autoencoder (Kascenas et al. 2022): the UNet of --num_channels ... without time"
    noise_res: int = flag(16, "side of the grid the coarse noise is drawn on before bilinear upsampling")
    noise_std: float = flag(0.2, "standard deviation of the coarse noise")


DAE_FLAGS = UNET_NETWORK_FLAGS
"""What a DAE checkpoint fixes: its UNet's flags."""
DAE_FLAGS_HINT = (
    "check --num_channels, --num_res_blocks, --channel_mult, --attention_resolutions, --image_size, --dataset")


def create_dae(data: DataFlags, model: ModelFlags) -> th.nn.Module:
    """The denoising autoencoder's network: the UNet of the model flags, unconditional, C channels out."""
    if model.class_cond:
        raise UserError("--class_cond True: the denoising autoencoder is unconditional (use --class_cond False)")
    check_unet_flags(data, model)
    flags = {**dataclasses.asdict(model), "image_size": data.image_size, "dataset": data.dataset}
    return create_model(flags.pop("image_size"), flags.pop("num_channels"), flags.pop("num_res_blocks"), **flags)


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


# Kascenas et al.'s batch 16 and 2100 epochs of 32 batches; their UNet is the model flags'
_DAE_TRAINING = {"image_size": 256, "batch_size": 16, "iterations": 67200, "save_interval": 5000,
                 "class_cond": False}
DAETrainConfig = script_config("dae_train", TrainingConfigBase, _DAE_TRAINING,
                               resumed("dae_train", DAE_FLAGS + ("noise_res", "noise_std")), module=__name__,
                               length=LengthFlags, model=ModelFlags, dae=DAEFlags)
DAETranslateConfig = script_config("dae_translate", TranslationConfigBase, {**BASELINE_TRANSLATION, "class_cond": False},
                                   translated("dae_train", DAE_FLAGS), module=__name__, model=ModelFlags)


def train_dae(cfg: DAETrainConfig, monitor=None) -> dict:
    """scripts/dae_train.py: the denoising autoencoder on the healthy training images."""
    def piece(dataset, device) -> DAEPiece:
        return DAEPiece(create_dae(cfg.data, cfg.model).to(device), noise_res=cfg.dae.noise_res,
                        noise_std=cfg.dae.noise_std)

    return train_baseline(cfg, piece, monitor, healthy="denoising autoencoder")


def dae_translator(cfg: DAETranslateConfig, device: th.device) -> NetworkTranslation:
    """D(x), the DAE's reconstruction, as the healthy translation, its checkpoint loaded."""
    net = create_dae(cfg.data, cfg.model)
    load_weights(net, checkpoint_of(cfg), "--model_path", "denoising autoencoder", hint=DAE_FLAGS_HINT)
    prepare_for_inference(net, device)
    return NetworkTranslation("DAE", lambda x: dae_lib.translate_to_healthy(net, x))


# make compare: the DAE's UNet like the diffusion model's, trained with coarse noise on an 8 x 8 grid (Kascenas:
# 16 at 128 pixels)
DEMO_DAE = {k: DEMO_MODEL[k] for k in ("image_size", "num_channels", "num_res_blocks", "channel_mult",
                                       "attention_resolutions")}
DEMO_DAE_NOISE = {"noise_res": 8, "noise_std": 0.2}

METHOD = Method(
    key="dae", name="Denoising autoencoder",
    commands={"dae_train": Command(DAETrainConfig, train_dae, True),
              "dae_translate": translation_command(DAETranslateConfig, dae_translator)},
    translation="dae_translate", translator=dae_translator, training="dae_train",
    demo=Demo(translate=DEMO_DAE, train={**DEMO_DAE, **DEMO_DAE_NOISE}, steps="dae_steps", batch_size=8))
