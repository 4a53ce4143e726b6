"""Every network built from its typed config, and loaded from its checkpoint.

The UNet and the classifier come from guided diffusion's factories (:mod:`script_util`), the
baselines' networks from :mod:`guided_diffusion.methods`. A checkpoint that does not fit the
flags is an error naming the file and the flags that shape the network.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch as th

from ..methods.fpgan import Discriminator, Generator
from ..methods.vae import VAE, LatentDiscriminator, latent_prior_check
from ..script_util import (
    create_classifier_and_diffusion,
    create_model,
    create_model_and_diffusion,
    in_channels_for,
)
from ..util import checkpoint as ckpt
from ..util.errors import UserError
from ..util.flags import (
    ClassifierFlags,
    DataFlags,
    DiffusionFlags,
    FPGANFlags,
    ModelFlags,
    VAEFlags,
)

VAE_FLAGS_HINT = ("check --vae_width, --vae_depth, --latent_dim, --latent_prior, --latent_disc_width, --image_size, "
                  "--dataset")
FPGAN_FLAGS_HINT = "check --fpgan_width, --fpgan_res_blocks, --fpgan_d_width, --fpgan_d_depth, --image_size, --dataset"
DAE_FLAGS_HINT = (
    "check --num_channels, --num_res_blocks, --channel_mult, --attention_resolutions, --image_size, --dataset")


def _shape(data: DataFlags) -> dict:
    return {"image_size": data.image_size, "dataset": data.dataset}


def create_unet_and_diffusion(data: DataFlags, model: ModelFlags, diffusion: DiffusionFlags,
                              uncond_label: bool = False):
    """(UNetModel, SpacedDiffusion) of the flags; ``uncond_label``: with classifier-free guidance's extra
    "no class" label."""
    return create_model_and_diffusion(**_shape(data), **dataclasses.asdict(model), **dataclasses.asdict(diffusion),
                                      uncond_label=uncond_label)


def create_dae(data: DataFlags, model: ModelFlags) -> th.nn.Module:
    """The denoising autoencoder's network: the UNet of the model flags, unconditional, C channels out."""
    if model.class_cond:
        raise UserError("--class_cond True: the denoising autoencoder is unconditional (use --class_cond False)")
    flags = {**dataclasses.asdict(model), **_shape(data)}
    return create_model(flags.pop("image_size"), flags.pop("num_channels"), flags.pop("num_res_blocks"), **flags)


def create_classifier_net(data: DataFlags, classifier: ClassifierFlags, diffusion: DiffusionFlags):
    """(EncoderUNetModel, SpacedDiffusion) of the flags."""
    return create_classifier_and_diffusion(**_shape(data), **dataclasses.asdict(classifier),
                                           **dataclasses.asdict(diffusion))


def create_vae(data: DataFlags, vae: VAEFlags) -> tuple[VAE, LatentDiscriminator | None]:
    """The VAE and, for the adversarial prior, its latent discriminator (else None)."""
    variational = latent_prior_check(vae.latent_prior)
    model = VAE(in_channels_for(data.dataset), data.image_size, width=vae.vae_width, depth=vae.vae_depth,
                latent_dim=vae.latent_dim, variational=variational)
    disc = None if variational else LatentDiscriminator(vae.latent_dim, vae.latent_disc_width)
    return model, disc


def create_fpgan(data: DataFlags, fpgan: FPGANFlags) -> tuple[Generator, Discriminator]:
    """FixedPoint-GAN's generator and discriminator."""
    if data.image_size < 4 or data.image_size % 4:
        raise UserError(f"--image_size {data.image_size}: the FixedPoint-GAN generator needs a multiple of 4")
    channels = in_channels_for(data.dataset)
    gen = Generator(channels, width=fpgan.fpgan_width, res_blocks=fpgan.fpgan_res_blocks)
    disc = Discriminator(channels, data.image_size, width=fpgan.fpgan_d_width, depth=fpgan.fpgan_d_depth)
    return gen, disc


def load_weights(net: th.nn.Module, path: str, flag: str, what: str, hint: str | None = None,
                 check: Callable[[str, dict], None] | None = None) -> th.nn.Module:
    """Load the state dict at ``path`` (the value of ``flag``) into ``net`` with ``strict=True``;
    ``check(path, state)`` may first refuse the file with a message of its own."""
    if not path:
        raise UserError(f"{flag}: required (a {what} checkpoint, e.g. model010000.pt)")
    state = ckpt.load(path)
    if check is not None:
        check(path, state)
    ckpt.apply_state_dict(net, state, path, what, hint=hint)
    return net
