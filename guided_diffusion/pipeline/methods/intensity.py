"""One channel's intensity as the anomaly map (the baseline of Meissen et al.): its flags, script
(intensity_translate.py), translator and demo flags. Nothing is trained."""
from __future__ import annotations

from dataclasses import dataclass

import torch as th

from ...datasets.common import CHANNELS
from ...util.errors import UserError
from ...util.flagspec import FlagGroup, flag
from ..runs import TranslationConfigBase, script_config
from ..translators import NetworkTranslation
from .base import Demo, Method, translation_command


@dataclass(frozen=True)
class IntensityFlags(FlagGroup):
    NAME = "intensity baseline"
    ABOUT = "intensity_translate.py: one channel's intensity as the anomaly map (Meissen et al.)"
    channel: str = flag("flair", "the channel whose intensity is the map (BRATS: t1, t1ce, t2, flair; CheXpert: "
                                 "xray, its only channel)", choices=sum(CHANNELS.values(), ()))


IntensityConfig = script_config("intensity_translate", TranslationConfigBase, {}, module=__name__,
                                intensity=IntensityFlags)


def intensity_translator(cfg: IntensityConfig, device: th.device | None = None) -> NetworkTranslation:
    """One channel's intensity as the anomaly map: the "healthy" image is the input with that channel
    set to 0, so sum_c |x - healthy| is its intensity."""
    names = CHANNELS[cfg.data.dataset]
    channel = cfg.intensity.channel
    if channel not in names:
        raise UserError(f"--channel {channel}: --dataset {cfg.data.dataset} has the channels {', '.join(names)}")
    index = names.index(channel)

    def zero_channel(x: th.Tensor) -> th.Tensor:
        healthy = x.clone()
        healthy[:, index] = 0
        return healthy

    return NetworkTranslation(f"{channel.upper() if channel != 'xray' else 'X-ray'} intensity", zero_channel)


METHOD = Method(
    key="intensity", name="FLAIR intensity",
    commands={"intensity_translate": translation_command(IntensityConfig, intensity_translator)},
    translation="intensity_translate", translator=intensity_translator,
    demo=Demo(translate={"image_size": 64, "channel": "flair"}, in_demo=True))
