"""What the diffusion family shares (:mod:`.paper`, :mod:`.cfg`, :mod:`.simplex`): its three scripts as
commands (image_train.py, classifier_train.py, classifier_sample_known.py, whose translator is the
diffusion translation of the flags) and the demo's sampling flags. Its configs and run functions stay in
:mod:`..runs` (the translator and the levers beside them, and tune.py's search in :mod:`..tune`, build on
them, and :mod:`..runs` is below the methods); which method a run is follows from its flags (``--guidance``,
``--noise_type``, the checkpoints)."""
from __future__ import annotations

from ..presets import DEMO_DIFFUSION, DEMO_MODEL, DEMO_RESPACING
from ..runs import (
    ClassifierTrainConfig,
    ImageTrainConfig,
    SampleConfig,
    diffusion_translator,
    train_classifier,
    train_diffusion_model,
)
from .base import Checkpoint, Command, Training, translation_command

IMAGE_TRAIN = Command(ImageTrainConfig, train_diffusion_model, True)
CLASSIFIER_TRAIN = Command(ClassifierTrainConfig, train_classifier, True)
TRANSLATION = translation_command(SampleConfig, diffusion_translator)
"""classifier_sample_known.py: the translation of every diffusion method."""
COMMANDS = {"image_train": IMAGE_TRAIN, "classifier_train": CLASSIFIER_TRAIN,
            "classifier_sample_known": TRANSLATION}


def model_training(key: str, network: dict = DEMO_MODEL, extra: dict | None = None) -> Training:
    """A diffusion model of the demo (``network``'s flags, ``extra`` on top), trained for --model_steps
    (image_train.py's --lr_anneal_steps)."""
    return Training(key, "image_train", {**network, **DEMO_DIFFUSION, "ema_rate": "0.999", **(extra or {})},
                    steps="model_steps", steps_flag="lr_anneal_steps")


def demo_sampling(model: str, network: dict = DEMO_MODEL) -> dict:
    """The demo's translation with the diffusion model of the training ``model``: DDIM's respacing of 50
    steps, batch 8."""
    return {**network, **DEMO_DIFFUSION, "timestep_respacing": f"ddim{DEMO_RESPACING}", "batch_size": 8,
            "model_path": (Checkpoint(model),)}
