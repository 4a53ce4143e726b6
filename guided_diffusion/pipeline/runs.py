"""What the scripts do, as functions of their typed configs (the scripts stay thin): the configs'
bases and the steps every method shares.

A script's config is a dataclass of flag groups (:mod:`guided_diffusion.util.flags`); its
run function builds the data, the networks and the piece or translator from it and hands them
to the training scaffold (:mod:`.train`) or the translation loop (:mod:`.translate`).
``DEFAULTS`` are a script's own defaults for flags of shared groups. Each method's configs and
run functions are its module's (:mod:`.methods`; the diffusion family's :mod:`.methods.diffusion`);
they build on :class:`TrainingConfigBase`,
:class:`TranslationConfigBase`, :func:`script_config`, :func:`train_baseline` and :func:`translate_with`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, make_dataclass
from typing import Any, Callable

import torch as th

from ..datasets.loaders import create_dataset, item_labels, training_batches
from ..evaluation.results import format_table
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import (
    DataFlags,
    EvaluationFlags,
    LengthFlags,
    MapFlags,
    MonitorFlags,
    RunFlags,
    SpeedFlags,
    TrainFlags,
    TranslateFlags,
)
from ..util.flagspec import flag_dict
from .evaluate import scoring_of
from .networks import CheckpointFlags, flags_file
from .train import Piece, TrainConfig, Trainer
from .settings import claim_output_dir
from .translate import LoopConfig, Translator, map_options, remap_folder, translate_folder

# -------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ScriptConfigBase:
    """What every script that runs networks takes: how the run goes, its data, Visdom."""

    run: RunFlags
    data: DataFlags
    monitoring: MonitorFlags


@dataclass(frozen=True)
class TrainingConfigBase(ScriptConfigBase):
    """What every training script takes."""

    training: TrainFlags


@dataclass(frozen=True)
class TranslationConfigBase(ScriptConfigBase):
    """What every translation script takes."""

    translation: TranslateFlags
    evaluation: EvaluationFlags
    maps: MapFlags


def script_config(script: str, base: type, defaults: dict, checkpoint: CheckpointFlags | None = None,
                  module: str = __name__, **groups: type) -> type:
    """The config of script ``script``: ``base``'s groups and the method's own (by field name);
    ``checkpoint``: the flags its checkpoint carries; ``module``: where the config is defined."""
    return make_dataclass(f"{script.title().replace('_', '')}Config", list(groups.items()), bases=(base,),
                          frozen=True, namespace={"SCRIPT": script, "DEFAULTS": defaults,
                                                  "CHECKPOINTS": (checkpoint,) if checkpoint else (),
                                                  "__doc__": f"scripts/{script}.py", "__module__": module})


def resumed(script: str, names: tuple[str, ...]) -> CheckpointFlags:
    """A training script's --resume_checkpoint: its own saved flags ``names``."""
    return CheckpointFlags("resume_checkpoint", script, names)


def translated(train_script: str, names: tuple[str, ...]) -> CheckpointFlags:
    """A translation script's --model_path: the flags ``names`` that ``train_script`` saved."""
    return CheckpointFlags("model_path", train_script, names)


# the baselines at SPEC section 9's settings: 256 x 256, batch 10, 500 (VAE) or 150 (FixedPoint-GAN) epochs
BASELINE_TRAINING = {"image_size": 256, "batch_size": 10, "save_interval": 1000}
BASELINE_TRANSLATION = {"image_size": 256, "batch_size": 8}


# -------------------------------------------------------------------------------- shared steps


def open_dataset(data: DataFlags, what: str, data_dir: str | None = None, label_dir: str | None = None):
    folder = data.data_dir if data_dir is None else data_dir
    if not folder:
        raise UserError(f"--data_dir: required (the {what} folder)")
    return create_dataset(folder, data.dataset, data.image_size,
                          label_dir=(data.label_dir if label_dir is None else label_dir) or None,
                          cache_dir=data.cache_dir or None)


def _write_flags(cfg, log_dir: str) -> None:
    """Save every flag of the run beside its checkpoints (rank 0)."""
    if dist_util.is_main_process():
        with atomic_write(flags_file(log_dir, cfg.SCRIPT), "w") as f:
            json.dump(flag_dict(cfg), f, indent=2, sort_keys=True, default=str)


def _stream(dataset, data: DataFlags, seed: int, device: th.device, indices=None):
    """The trainer's ``make_data``: this rank's batches from a given global step."""

    def make(start_step: int):
        return training_batches(dataset, data.batch_size, indices=indices, seed=seed, start_step=start_step,
                                shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                                num_workers=data.num_workers, pin_memory=device.type == "cuda")

    return make


def training_length(length: LengthFlags, n_images: int, batch_size: int) -> int:
    """--iterations, else ceil(--epochs * N / global batch)."""
    if length.iterations < 0:
        raise UserError(f"--iterations {length.iterations}: expected 0 (use --epochs) or more")
    if length.iterations > 0:
        return length.iterations
    if length.epochs <= 0:
        raise UserError(f"--epochs {length.epochs:g}: expected a positive number (or set --iterations)")
    return math.ceil(length.epochs * n_images / (batch_size * dist_util.get_world_size()))


def train_config(cfg, total_steps: int, anneal: bool, precision: str = "fp32", epoch_size: int = 0) -> TrainConfig:
    """The scaffold's config: the script's training, run and speed flags (the speed flags' precision
    replaced by the one resolved from them; a script without speed flags trains in fp32, eager)."""
    if total_steps < 0:
        raise UserError(f"total steps {total_steps}: expected 0 (no limit) or more")
    speed = dataclasses.replace(getattr(cfg, "speed", SpeedFlags()), precision=precision)
    return TrainConfig(training=cfg.training, run=cfg.run, speed=speed, batch_size=cfg.data.batch_size,
                       total_steps=total_steps, anneal_lr=anneal, epoch_size=epoch_size)


def train_piece(cfg, piece: Piece, dataset, train_cfg: TrainConfig, device, monitor, indices=None, what: str = "") -> dict:
    """Train ``piece``; returns ``{"step", "checkpoint" (the final marker file), "last" (the last
    logged loss means), "trainer"}``."""
    trainer = Trainer(piece, _stream(dataset, cfg.data, cfg.run.seed, device, indices), train_cfg,
                      monitor=monitor, device=device)  # first: it refuses a folder of another run's checkpoints
    _write_flags(cfg, cfg.run.log_dir)
    params = sum(p.numel() for net in piece.modules().values() for p in net.parameters())
    n = len(dataset) if indices is None else len(set(indices))  # an index may repeat (--balance_classes)
    logger.log(f"training the {piece.kind} on {n} of {len(dataset)} images{what}, {params} parameters, "
               f"{train_cfg.total_steps or 'unlimited'} steps (batch {train_cfg.batch_size} x "
               f"{dist_util.get_world_size()} processes), device {device}, from step {trainer.step}")
    trainer.run_loop()
    marker = trainer.checkpoint_path(trainer.marker_prefix(), trainer.step)
    logger.log(f"saved {marker}")
    return {"step": trainer.step, "checkpoint": marker, "last": trainer.last_logged, "trainer": trainer}


# -------------------------------------------------------------------------------- training


def train_baseline(cfg, make_piece: Callable[[Any, th.device], Piece], monitor=None, healthy: str = "") -> dict:
    """A baseline's training script: the training folder, initial weights seeded by --seed, the piece
    ``make_piece(dataset, device)`` (its networks on ``device``) trained for --iterations or --epochs
    without annealing, on every image or, with ``healthy`` (the network's name in the error when there
    are none), on the healthy ones only."""
    device = dist_util.dev(cfg.run.device or None)
    dataset = open_dataset(cfg.data, "training")
    th.manual_seed(cfg.run.seed)  # initial weights are a function of --seed
    piece = make_piece(dataset, device)
    indices = healthy_indices(dataset, cfg.data, healthy) if healthy else None
    n = len(dataset) if indices is None else len(indices)
    train_cfg = train_config(cfg, training_length(cfg.length, n, cfg.data.batch_size), anneal=False, epoch_size=n)
    return train_piece(cfg, piece, dataset, train_cfg, device, monitor, indices=indices,
                       what=" (healthy only)" if healthy else "")


def healthy_indices(dataset, data: DataFlags, what: str) -> list[int]:
    indices = [i for i, y in enumerate(item_labels(dataset, data.num_workers)) if y == 0]
    if not indices:
        raise UserError(f"--data_dir {data.data_dir}: no healthy (label 0) images to train the {what} on")
    return indices


# -------------------------------------------------------------------------------- translation


def checkpoint_of(cfg) -> str:
    """The one ``--model_path`` of a translation script ("" when none is given)."""
    paths = cfg.translation.model_path
    if len(paths) > 1:
        raise UserError(f"--model_path {' '.join(paths)}: expected one checkpoint (tune.py compares several)")
    return paths[0] if paths else ""


def _translate(cfg, translator: Translator | None, dataset, device, monitor, maps_from: str = "") -> dict | None:
    """Translate ``dataset`` with ``translator`` into the config's output folder and score it; without a
    translator, make the maps of ``maps_from``'s translation again with the config's map options."""
    output_dir = cfg.translation.output_dir or os.path.join(cfg.run.log_dir, "samples")
    loop = LoopConfig(output_dir=output_dir, num_samples=cfg.translation.num_samples, batch_size=cfg.data.batch_size,
                      num_workers=cfg.data.num_workers, scoring=scoring_of(cfg.evaluation, cfg.run.seed),
                      progress=cfg.run.progress,
                      visdom_every=cfg.monitoring.visdom_every, maps=map_options(cfg.maps))
    claim_output_dir(output_dir, cfg)  # before any result: other settings are an error, the same ones resume
    flags = dict(sorted(flag_dict(cfg).items()))
    if translator is None:
        summary = remap_folder(maps_from, loop, summary={"flags": flags})
    else:
        summary = translate_folder(translator, dataset, loop, device=device, monitor=monitor, summary={"flags": flags})
    if summary is not None:
        logger.log(format_table(summary))
    return summary


def translate_with(build: Callable[..., Translator], cfg, monitor=None) -> dict | None:
    """A translation script: the translator ``build(cfg, device)`` over ``--data_dir``, scored; the
    summary on rank 0."""
    device = dist_util.dev(cfg.run.device or None)
    return _translate(cfg, build(cfg, device), open_dataset(cfg.data, "test"), device, monitor)


def remap_translation(cfg, maps_from: str) -> dict | None:
    """The results of ``cfg`` (any translation script's) written from ``maps_from``, a folder translated
    with settings that differ from ``cfg``'s only in the ``--map_*`` flags and with one healthy image per
    input (no noise-level ensemble): each map is made again from its saved input and healthy image, and
    nothing is translated (:func:`.translate.remap_folder`). The summary on rank 0."""
    return _translate(cfg, None, None, None, None, maps_from=maps_from)
