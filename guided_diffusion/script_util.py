"""Factories: the one place where flags become networks and diffusions (guided diffusion's API).

The defaults dicts are those of the flag registry's model, diffusion and classifier groups
(:mod:`guided_diffusion.util.flags`, where each flag is declared with its meaning);
``add_dict_to_argparser`` and ``args_to_dict`` are kept for code written for guided diffusion.
"""
from __future__ import annotations

import argparse

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .unet import EncoderUNetModel, UNetModel
from .util.errors import UserError
from .util.flags import ClassifierFlags, DataFlags, DiffusionFlags, ModelFlags
from .util.flagspec import str2bool

NUM_CLASSES = 2  # 0 = healthy, 1 = diseased, for both data sets
HEALTHY = 0  # the class translation steers towards
NULL_CLASS = NUM_CLASSES  # the extra "no class" label of classifier-free guidance
DATASET_CHANNELS = {"brats": 4, "chexpert": 1}  # input channels per --dataset (SPEC section 4; their names:
# datasets.common.CHANNELS, which this layer does not import; a test checks the two agree)

# channel multipliers per level, by image size (guided diffusion's choices)
_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def diffusion_defaults() -> dict:
    """Defaults of the diffusion process (shared by the model and the classifier)."""
    return DiffusionFlags.defaults()


def classifier_defaults() -> dict:
    """Defaults of the noise-aware classifier."""
    return {"image_size": DataFlags.image_size, **ClassifierFlags.defaults(), "dataset": DataFlags.dataset}


def model_and_diffusion_defaults() -> dict:
    """Defaults of the diffusion UNet and its process."""
    return {"image_size": DataFlags.image_size, **ModelFlags.defaults(), "dataset": DataFlags.dataset,
            **diffusion_defaults()}


def classifier_and_diffusion_defaults() -> dict:
    return {**classifier_defaults(), **diffusion_defaults()}


def in_channels_for(dataset: str) -> int:
    """Image channels of a data set: 4 for BRATS (t1, t1ce, t2, flair), 1 for CheXpert."""
    if dataset not in DATASET_CHANNELS:
        raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASET_CHANNELS)}")
    return DATASET_CHANNELS[dataset]


def _channel_mult(channel_mult, image_size: int, flag: str) -> tuple:
    if channel_mult in ("", None):
        if image_size not in _CHANNEL_MULT:
            raise UserError(f"--image_size {image_size}: no default channel multipliers; pass {flag} "
                             f"(defaults exist for {sorted(_CHANNEL_MULT)})")
        return _CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        try:
            return tuple(float(m) if "." in m else int(m) for m in channel_mult.split(","))
        except ValueError:
            raise UserError(f"{flag} {channel_mult!r}: expected comma-separated numbers, e.g. 1,2,2") from None
    return tuple(channel_mult)


def _attention_ds(resolutions: str, image_size: int, flag: str) -> tuple:
    """Resolutions (e.g. "16,8") -> downsampling factors (image_size // res)."""
    if resolutions in ("", None):
        return ()
    try:
        res = [int(r) for r in str(resolutions).split(",")]
    except ValueError:
        raise UserError(f"{flag} {resolutions!r}: expected comma-separated resolutions, e.g. 32,16,8") from None
    return tuple(image_size // r for r in res)


def create_model_and_diffusion(*, image_size, class_cond, learn_sigma, num_channels, num_res_blocks,
                               channel_mult, num_heads, num_head_channels, num_heads_upsample,
                               attention_resolutions, dropout, diffusion_steps, noise_schedule,
                               timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                               rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                               resblock_updown, use_fp16, use_new_attention_order, dataset="brats",
                               uncond_label=False):
    """(UNetModel, SpacedDiffusion) from the flags of :func:`model_and_diffusion_defaults`.

    ``uncond_label``: the class-conditional UNet gets one extra label row, class ``NULL_CLASS``
    ("no class"), for classifier-free guidance (Ho & Salimans 2022); off, the state dict is guided
    diffusion's."""
    model = create_model(image_size, num_channels, num_res_blocks, channel_mult=channel_mult,
                         learn_sigma=learn_sigma, class_cond=class_cond, use_checkpoint=use_checkpoint,
                         attention_resolutions=attention_resolutions, num_heads=num_heads,
                         num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
                         use_scale_shift_norm=use_scale_shift_norm, dropout=dropout,
                         resblock_updown=resblock_updown, use_fp16=use_fp16,
                         use_new_attention_order=use_new_attention_order, dataset=dataset, uncond_label=uncond_label)
    diffusion = create_gaussian_diffusion(steps=diffusion_steps, learn_sigma=learn_sigma,
                                          noise_schedule=noise_schedule, use_kl=use_kl,
                                          predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
                                          rescale_learned_sigmas=rescale_learned_sigmas,
                                          timestep_respacing=timestep_respacing)
    return model, diffusion


def create_model(image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False, class_cond=False,
                 use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0.0, resblock_updown=False,
                 use_fp16=False, use_new_attention_order=False, dataset="brats", uncond_label=False) -> UNetModel:
    """The diffusion UNet. Output channels: 2*C with ``learn_sigma`` (eps and the variance
    interpolation), C without (SPEC section 10: the fork always gave 2*C)."""
    channels = in_channels_for(dataset)
    return UNetModel(
        image_size=image_size,
        in_channels=channels,
        model_channels=num_channels,
        out_channels=2 * channels if learn_sigma else channels,
        num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(attention_resolutions, image_size, "--attention_resolutions"),
        dropout=dropout,
        channel_mult=_channel_mult(channel_mult, image_size, "--channel_mult"),
        num_classes=(NUM_CLASSES + int(uncond_label)) if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_classifier(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                      classifier_attention_resolutions, classifier_use_scale_shift_norm,
                      classifier_resblock_updown, classifier_pool, dataset="brats", classifier_channel_mult="",
                      classifier_num_head_channels=64) -> EncoderUNetModel:
    """The noise-aware healthy/diseased classifier (2 logits; class 0 = healthy)."""
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=in_channels_for(dataset),
        model_channels=classifier_width,
        out_channels=NUM_CLASSES,
        num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(classifier_attention_resolutions, image_size,
                                            "--classifier_attention_resolutions"),
        channel_mult=_channel_mult(classifier_channel_mult, image_size, "--classifier_channel_mult"),
        use_fp16=classifier_use_fp16,
        num_head_channels=classifier_num_head_channels,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


def create_classifier_and_diffusion(*, image_size, classifier_use_fp16, classifier_width, classifier_depth,
                                    classifier_attention_resolutions, classifier_use_scale_shift_norm,
                                    classifier_resblock_updown, classifier_pool, learn_sigma, diffusion_steps,
                                    noise_schedule, timestep_respacing, use_kl, predict_xstart,
                                    rescale_timesteps, rescale_learned_sigmas, dataset="brats",
                                    classifier_channel_mult="", classifier_num_head_channels=64):
    """(EncoderUNetModel, SpacedDiffusion) from :func:`classifier_and_diffusion_defaults` flags."""
    classifier = create_classifier(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                                   classifier_attention_resolutions, classifier_use_scale_shift_norm,
                                   classifier_resblock_updown, classifier_pool, dataset,
                                   classifier_channel_mult, classifier_num_head_channels)
    diffusion = create_gaussian_diffusion(steps=diffusion_steps, learn_sigma=learn_sigma,
                                          noise_schedule=noise_schedule, use_kl=use_kl,
                                          predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
                                          rescale_learned_sigmas=rescale_learned_sigmas,
                                          timestep_respacing=timestep_respacing)
    return classifier, diffusion


def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear",
                              use_kl=False, predict_xstart=False, rescale_timesteps=False,
                              rescale_learned_sigmas=False, timestep_respacing="") -> SpacedDiffusion:
    """A (possibly respaced) diffusion process; see :func:`space_timesteps` for ``timestep_respacing``."""
    if steps < 1:
        raise UserError(f"--diffusion_steps {steps}: expected a positive number of steps")
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: dict) -> None:
    """Add a ``--key`` flag per entry, typed like its default (bools as True/False)."""
    for k, v in default_dict.items():
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        else:
            v_type = type(v)
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys) -> dict:
    return {k: getattr(args, k) for k in keys}
