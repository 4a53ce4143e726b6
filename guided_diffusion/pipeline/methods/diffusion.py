"""The paper's method (Wolleb et al. 2022) and the diffusion family beyond it (DDPM sampling,
classifier-free guidance, simplex noise, the translation levers): its three scripts and its translator.
This round its configs and run functions stay in :mod:`..runs` (tune.py's search over its settings is
:mod:`..tune`); the driver writes its tuned rows by hand, so it has no :class:`Demo`."""
from __future__ import annotations

from ..runs import (
    ClassifierTrainConfig,
    ImageTrainConfig,
    SampleConfig,
    diffusion_translator,
    run_translation,
    train_classifier,
    train_diffusion_model,
)
from .base import Command, Method

METHOD = Method(
    key="ddim", name="DDIM (paper)",
    commands={"image_train": Command(ImageTrainConfig, train_diffusion_model, True),
              "classifier_train": Command(ClassifierTrainConfig, train_classifier, True),
              "classifier_sample_known": Command(SampleConfig, run_translation, True)},
    translation="classifier_sample_known", translator=diffusion_translator)
