"""What a method is, for the registry (:data:`guided_diffusion.pipeline.methods.METHODS`).

A *method* is one way to detect anomalies end to end: its scripts (training and translation), the
translator its translation script builds, and its flags in ``make compare``. Each method's module
declares one :class:`Method`; the scripts, the driver, compare.py's plan and the bundles read them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch as th

from ..runs import translate_with
from ..translate import Translator


@dataclass(frozen=True)
class Command:
    """A script's config class and run function; ``networks``: it runs networks (a process group, a
    log folder, Visdom: :func:`..cli.run_script`), else it only reads and writes files (:func:`..cli.run_tool`)."""

    config: type
    run: Callable[..., Any]
    networks: bool


@dataclass(frozen=True)
class Demo:
    """A method's stages in ``make compare`` on the demo's 64 x 64 data: the flags of its translation
    (besides the data, the output folder and the checkpoint) and, for a method that trains a network,
    the flags of its training, the flag that sets its length (``steps_flag``) with the
    :class:`~guided_diffusion.util.flags.DriverFlags` attribute that holds its value (``steps``), the
    batch size, and the file prefix of the checkpoint the translation loads."""

    translate: Mapping[str, Any]
    train: Mapping[str, Any] | None = None
    steps_flag: str = "iterations"
    steps: str = ""
    batch_size: int = 8
    checkpoint: str = "model"


@dataclass(frozen=True)
class Method:
    """One method: its ``key`` (the driver's row and folder name), its ``name`` in tables, its
    ``commands`` (script name -> :class:`Command`), the name of its translation script
    (``translation``), the function building its translator from that script's config and a device
    (checkpoints loaded), the name of the training script its :class:`Demo` runs (``training``, ""
    for none), and its demo flags (None: its stages in the plans are written by hand, as the
    diffusion family's tuned rows are)."""

    key: str
    name: str
    commands: Mapping[str, Command]
    translation: str
    translator: Callable[[Any, th.device], Translator]
    training: str = ""
    demo: Demo | None = None

    def __post_init__(self):
        for role, script in (("translation", self.translation), ("training", self.training)):
            if script and script not in self.commands:
                raise ValueError(f"method {self.key}: its {role} script {script!r} is not one of its commands "
                                 f"({', '.join(self.commands)})")
        if self.demo is not None and (self.demo.train is None) != (not self.training):
            raise ValueError(f"method {self.key}: demo training flags need a training script, and one the other")

    @property
    def config(self) -> type:
        """The config class of the translation script."""
        return self.commands[self.translation].config


def translation_command(config: type, build: Callable[[Any, th.device], Translator]) -> Command:
    """A translation script: the translator ``build(cfg, device)`` run over the test folder by the
    one shared translation function (:func:`..runs.translate_with`)."""
    return Command(config, functools.partial(translate_with, build), True)
