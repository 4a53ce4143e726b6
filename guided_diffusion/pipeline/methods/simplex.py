"""Simplex diffusion (AnoDDPM, Wyatt et al. 2022): an unconditional diffusion model trained with
multi-octave simplex noise instead of Gaussian noise (``--noise_type simplex``), translating by DDPM
decoding from noise level L without guidance, L chosen on the validation split by tune.py. Its scripts
are the diffusion family's (:mod:`.diffusion`)."""
from __future__ import annotations

from ..presets import DEMO_SIMPLEX
from .base import Demo, DemoFlag, Method
from .diffusion import COMMANDS, TRANSLATION, demo_sampling, model_training

SIMPLEX_MODEL = model_training("simplex_model", DEMO_SIMPLEX)

METHOD = Method(
    key="simplex", name="Simplex diffusion (AnoDDPM)", commands=COMMANDS, translation="classifier_sample_known",
    translator=TRANSLATION.translator,
    demo=Demo({**demo_sampling(SIMPLEX_MODEL.key, DEMO_SIMPLEX), "use_ddim": False, "guidance": "none",
               "noise_levels": DemoFlag("noise_levels")}, tuned=True, trainings=(SIMPLEX_MODEL,)))
