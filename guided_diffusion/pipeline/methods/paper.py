"""The paper's method (Wolleb et al. 2022): DDIM encoding to noise level L and decoding guided by a
noise-aware classifier's gradient towards "healthy" (scale s), L and s chosen on the validation split by
tune.py; and its variants in ``make compare``, which share its networks: the levers (a classifier trained
only where translation asks it, ``--classifier_max_t``; the noise-level ensemble; both) and stochastic
DDPM decoding at DDIM's chosen setting. Its scripts are the diffusion family's (:mod:`.diffusion`)."""
from __future__ import annotations

from ..presets import DEMO_CLASSIFIER, DEMO_DIFFUSION, DEMO_MAX_T
from .base import Checkpoint, Demo, DemoFlag, Method, Training
from .diffusion import COMMANDS, TRANSLATION, demo_sampling, model_training

CLASSIFIER = Training("classifier", "classifier_train", {**DEMO_CLASSIFIER, **DEMO_DIFFUSION}, steps="classifier_steps")
MODEL = model_training("model")
# the lever: a classifier trained where translation asks it, t < 400 of 1000 (L <= 20 of ddim50)
CLASSIFIER_MAX_T = Training("classifier_max_t", "classifier_train", {**DEMO_CLASSIFIER, **DEMO_DIFFUSION, **DEMO_MAX_T},
                            steps="classifier_steps")


def _guided(classifier: Training, levels: str) -> dict:
    """Classifier-guided DDIM with ``classifier``, tune.py trying the noise levels of demo.py's flag
    ``levels`` and its classifier scales."""
    return {**demo_sampling(MODEL.key), **DEMO_CLASSIFIER, "use_ddim": True,
            "classifier_path": Checkpoint(classifier.key), "noise_levels": DemoFlag(levels),
            "classifier_scales": DemoFlag("classifier_scales")}


def _method(key: str, name: str, demo: Demo) -> Method:
    return Method(key=key, name=name, commands=COMMANDS, translation="classifier_sample_known",
                  translator=TRANSLATION.translator, demo=demo)


DDIM = _method("ddim", "DDIM (paper)", Demo(_guided(CLASSIFIER, "noise_levels"), tuned=True,
                                            trainings=(CLASSIFIER, MODEL), in_demo=True))
METHODS = (
    DDIM,
    _method("max_t", "DDIM + classifier_max_t", Demo(_guided(CLASSIFIER_MAX_T, "noise_levels"), tuned=True,
                                                     trainings=(CLASSIFIER_MAX_T, MODEL))),
    _method("ensemble", "DDIM + ensemble", Demo(_guided(CLASSIFIER, "ensemble_levels"), tuned=True,
                                                trainings=(CLASSIFIER, MODEL))),
    _method("both", "DDIM + classifier_max_t + ensemble", Demo(_guided(CLASSIFIER_MAX_T, "ensemble_levels"),
                                                               tuned=True, trainings=(CLASSIFIER_MAX_T, MODEL))),
    _method("ddpm", "DDPM sampling (DDIM's setting)", Demo({"use_ddim": False}, follows=DDIM.key)),
)
"""The paper's DDIM and its variants, in the order of the comparison's rows."""
