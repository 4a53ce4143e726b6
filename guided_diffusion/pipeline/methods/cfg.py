"""Classifier-free guidance (Ho & Salimans 2022) as a translation: a class-conditional diffusion model
trained with its label dropped to an extra "no class" label (image_train.py --p_uncond), decoded with
eps = (1 + W) eps(x, healthy) - W eps(x, no class) (``--guidance cfg``), L and W chosen on the validation
split by tune.py. No classifier. Its scripts are the diffusion family's (:mod:`.diffusion`)."""
from __future__ import annotations

from .base import Demo, DemoFlag, Method
from .diffusion import COMMANDS, TRANSLATION, demo_sampling, model_training

# the demo's model with a fifth of its labels dropped
CFG_MODEL = model_training("cfg_model", extra={"p_uncond": 0.2})

METHOD = Method(
    key="cfg", name="Classifier-free guidance", commands=COMMANDS, translation="classifier_sample_known",
    translator=TRANSLATION.translator,
    demo=Demo({**demo_sampling(CFG_MODEL.key), "use_ddim": True, "guidance": "cfg",
               "noise_levels": DemoFlag("noise_levels"), "guidance_scales": DemoFlag("guidance_scales")},
              tuned=True, trainings=(CFG_MODEL,)))
