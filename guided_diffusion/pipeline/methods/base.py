"""What a method is, for the registry (:data:`guided_diffusion.pipeline.methods.METHODS`).

A *method* is one way to detect anomalies end to end, one row of ``make compare``'s table: its scripts
(training and translation), the translator its translation script builds, and its stages in the plans
as data (:class:`Demo`: flags, the :class:`Training` s it needs, how its setting is chosen). Each module of
:mod:`.methods` declares its :class:`Method` (or, for a family sharing networks, several); the scripts,
the driver, compare.py's plan and the bundles read them.
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
    log folder, Visdom: :func:`..cli.run_script`), else it only reads and writes files (:func:`..cli.run_tool`);
    ``translator``: for a translation script, the function building its translator from its config and a
    device (what a bundle of the script rebuilds), else None."""

    config: type
    run: Callable[..., Any]
    networks: bool
    translator: Callable[[Any, th.device], Translator] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """In a method's demo flags: the last checkpoint of the training stage ``training`` (a
    :class:`Training`'s key), filled in by the driver."""

    training: str


@dataclass(frozen=True)
class DemoFlag:
    """In a method's demo flags: the value of demo.py's flag ``name`` (a grid tune.py tries, the
    ensembles of the levers), filled in by the driver."""

    name: str


@dataclass(frozen=True)
class Training:
    """A training stage of ``make demo`` / ``make compare`` (``train_<key>``, writing
    ``<out>/train/<key>/``): the command ``script`` with ``flags``, as long as the
    :class:`~guided_diffusion.util.flags.DriverFlags` attribute ``steps`` says (given as ``steps_flag``),
    batch ``batch_size``, one checkpoint ``<checkpoint><steps:06d>.pt`` at the end. Several methods may
    name the same training; its key is its name."""

    key: str
    script: str
    flags: Mapping[str, Any]
    steps: str
    steps_flag: str = "iterations"
    batch_size: int = 8
    checkpoint: str = "model"


@dataclass(frozen=True)
class Demo:
    """A method's stages in ``make compare`` on the demo's 64 x 64 data.

    ``translate``: the flags of its translation besides the data and output folders (a
    :class:`Checkpoint` or :class:`DemoFlag` value is filled in by the driver). How its setting is
    chosen: fixed, the same flags on the validation and the test split; ``tuned``, tune.py chooses among
    the grids in ``translate`` on the validation split; ``follows``, the setting the tuned method of that
    key chose, ``translate`` on top. ``trainings``: the training stages whose checkpoints it loads. For a
    method that trains one network of its own with its ``training`` script, the shorthand: ``train`` (its
    flags), ``steps_flag``, ``steps``, ``batch_size`` and ``checkpoint`` (a :class:`Training` keyed by the
    method, whose checkpoint the translation loads as ``--model_path``). ``in_demo``: ``make demo`` runs
    it too."""

    translate: Mapping[str, Any]
    train: Mapping[str, Any] | None = None
    steps_flag: str = "iterations"
    steps: str = ""
    batch_size: int = 8
    checkpoint: str = "model"
    tuned: bool = False
    follows: str = ""
    trainings: tuple[Training, ...] = ()
    in_demo: bool = False

    def __post_init__(self):
        if self.tuned and self.follows:
            raise ValueError(f"a demo follows {self.follows!r}'s tuned setting or is tuned itself, not both")


@dataclass(frozen=True)
class Method:
    """One method, one row of ``make compare``'s table: its ``key`` (the driver's row and folder name),
    its ``name`` in tables, its ``commands`` (script name -> :class:`Command`), the name of its
    translation script (``translation``), the function building its translator from that script's
    config and a device (checkpoints loaded), the name of the training script of its own network
    (``training``, "" for none; a method whose networks other methods share names them as
    :class:`Training` s in its demo instead), and its demo flags (None: it has no stages in the
    plans, which the compare plan refuses)."""

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
        if self.translation in self.commands and self.commands[self.translation].translator is not self.translator:
            raise ValueError(f"method {self.key}: its translator is not the one of its translation command "
                             f"{self.translation!r} (make that command with translation_command)")
        if self.demo is not None and (self.demo.train is None) != (not self.training):
            raise ValueError(f"method {self.key}: demo training flags need a training script, and one the other")
        for training in self.demo.trainings if self.demo is not None else ():
            if training.script not in self.commands:
                raise ValueError(f"method {self.key}: its training {training.key}'s script {training.script!r} is "
                                 f"not one of its commands ({', '.join(self.commands)})")

    @property
    def config(self) -> type:
        """The config class of the translation script."""
        return self.commands[self.translation].config

    def trainings(self) -> tuple[Training, ...]:
        """The training stages of its demo: those it names, then its own network's (the shorthand)."""
        if self.demo is None:
            return ()
        demo = self.demo
        own = () if demo.train is None else (Training(self.key, self.training, demo.train, demo.steps,
                                                      demo.steps_flag, demo.batch_size, demo.checkpoint),)
        return demo.trainings + own

    def demo_flags(self) -> dict[str, Any]:
        """Its demo's translation flags, the checkpoint of its own network as ``--model_path``."""
        flags = dict(self.demo.translate)
        if self.demo.train is not None:
            flags["model_path"] = (Checkpoint(self.key),)
        return flags


def translation_command(config: type, build: Callable[[Any, th.device], Translator]) -> Command:
    """A translation script: the translator ``build(cfg, device)`` run over the test folder by the
    one shared translation function (:func:`..runs.translate_with`)."""
    return Command(config, functools.partial(translate_with, build), True, translator=build)
