"""What each script does, as a function of its typed config (the scripts stay thin).

A script's config is a dataclass of flag groups (:mod:`guided_diffusion.util.flags`); its
run function builds the data, the networks and the piece or method from it and hands them
to the training scaffold (:mod:`.train`) or the translation loop (:mod:`.translate`).
``DEFAULTS`` are a script's own defaults for flags of shared groups.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, make_dataclass
from typing import ClassVar

import torch as th
from torch.utils.data import DataLoader, Subset

from ..datasets.loaders import (
    collate_training_batch,
    create_dataset,
    item_labels,
    training_batches,
)
from ..datasets.splits import split_by_patient
from ..evaluation.results import format_table
from ..guidance import make_cond_fn
from ..methods.fpgan import translate_to_healthy
from ..resample import create_named_schedule_sampler
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import (
    ClassifierFlags,
    ClassifierTrainFlags,
    DataFlags,
    DiffusionFlags,
    DiffusionTrainFlags,
    EvaluationFlags,
    FPGANFlags,
    FPGANLossFlags,
    LengthFlags,
    ModelFlags,
    MonitorFlags,
    RunFlags,
    SamplingFlags,
    SpeedFlags,
    SplitFlags,
    TimestepFlags,
    TrainFlags,
    TranslateFlags,
    VAEFlags,
    VAELossFlags,
)
from ..util.flagspec import flag_dict, part
from .devices import (
    autocast_for,
    compile_network,
    prepare_for_inference,
    resolve_precision,
    wrap_network,
)
from .evaluate import scoring_of
from .methods import DiffusionTranslation, NetworkTranslation
from .networks import (
    FPGAN_FLAGS_HINT,
    VAE_FLAGS_HINT,
    create_classifier_net,
    create_fpgan,
    create_unet_and_diffusion,
    create_vae,
    load_weights,
)
from .pieces import ClassifierPiece, DiffusionPiece, FPGANPiece, VAEPiece
from .train import Piece, TrainConfig, Trainer
from .translate import LoopConfig, Method, translate_folder

# -------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class _ScriptConfig:
    """What every script that runs networks takes: how the run goes, its data, Visdom."""

    run: RunFlags
    data: DataFlags
    monitoring: MonitorFlags


@dataclass(frozen=True)
class _TrainingConfig(_ScriptConfig):
    training: TrainFlags


@dataclass(frozen=True)
class _TranslationConfig(_ScriptConfig):
    translation: TranslateFlags
    evaluation: EvaluationFlags


@dataclass(frozen=True)
class ImageTrainConfig(_TrainingConfig):
    """scripts/image_train.py"""

    model: ModelFlags
    diffusion: DiffusionFlags
    schedule: DiffusionTrainFlags
    timesteps: TimestepFlags
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "image_train"


@dataclass(frozen=True)
class ClassifierTrainConfig(_TrainingConfig):
    """scripts/classifier_train.py"""

    classifier: ClassifierFlags
    diffusion: DiffusionFlags
    length: LengthFlags
    classifier_training: ClassifierTrainFlags
    split: SplitFlags = part("val_fraction")
    timesteps: TimestepFlags
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "classifier_train"
    DEFAULTS: ClassVar[dict] = {"iterations": 150000}


@dataclass(frozen=True)
class SampleConfig(_TranslationConfig):
    """scripts/classifier_sample_known.py"""

    model: ModelFlags
    diffusion: DiffusionFlags
    classifier: ClassifierFlags
    sampling: SamplingFlags
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "classifier_sample_known"
    VISDOM_ENV: ClassVar[str] = "translate"


def _baseline_config(script: str, base: type, defaults: dict, **groups: type) -> type:
    """The config of a baseline's script: ``base``'s groups and the method's own (by field name)."""
    return make_dataclass(f"{script.title().replace('_', '')}Config", list(groups.items()), bases=(base,),
                          frozen=True, namespace={"SCRIPT": script, "DEFAULTS": defaults,
                                                  "__doc__": f"scripts/{script}.py", "__module__": __name__})


# the baselines at SPEC section 9's settings: 256 x 256, batch 10, 500 (VAE) or 150 (FixedPoint-GAN) epochs
_TRAINING = {"image_size": 256, "batch_size": 10, "save_interval": 1000}
_TRANSLATION = {"image_size": 256, "batch_size": 8}
VAETrainConfig = _baseline_config("vae_train", _TrainingConfig, {**_TRAINING, "epochs": 500}, length=LengthFlags,
                                  vae=VAEFlags, vae_losses=VAELossFlags)
FPGANTrainConfig = _baseline_config("fpgan_train", _TrainingConfig, {**_TRAINING, "epochs": 150}, length=LengthFlags,
                                    fpgan=FPGANFlags, fpgan_losses=FPGANLossFlags)
VAETranslateConfig = _baseline_config("vae_translate", _TranslationConfig, _TRANSLATION, vae=VAEFlags)
FPGANTranslateConfig = _baseline_config("fpgan_translate", _TranslationConfig, _TRANSLATION, fpgan=FPGANFlags)


# -------------------------------------------------------------------------------- shared steps


def _dataset(data: DataFlags, what: str, data_dir: str | None = None, label_dir: str | None = None):
    folder = data.data_dir if data_dir is None else data_dir
    if not folder:
        raise UserError(f"--data_dir: required (the {what} folder)")
    return create_dataset(folder, data.dataset, data.image_size,
                          label_dir=(data.label_dir if label_dir is None else label_dir) or None)


def _write_flags(cfg, log_dir: str) -> None:
    """Save every flag of the run beside its checkpoints (rank 0)."""
    if dist_util.is_main_process():
        with atomic_write(os.path.join(log_dir, f"flags_{cfg.SCRIPT}.json"), "w") as f:
            json.dump(flag_dict(cfg), f, indent=2, sort_keys=True, default=str)


def _stream(dataset, data: DataFlags, seed: int, device: th.device, indices=None):
    """The trainer's ``make_data``: this rank's batches from a given global step."""

    def make(start_step: int):
        return training_batches(dataset, data.batch_size, indices=indices, seed=seed, start_step=start_step,
                                shard=dist_util.get_rank(), num_shards=dist_util.get_world_size(),
                                num_workers=data.num_workers, pin_memory=device.type == "cuda")

    return make


def _length(length: LengthFlags, n_images: int, batch_size: int) -> int:
    """--iterations, else ceil(--epochs * N / global batch)."""
    if length.iterations < 0:
        raise UserError(f"--iterations {length.iterations}: expected 0 (use --epochs) or more")
    if length.iterations > 0:
        return length.iterations
    if length.epochs <= 0:
        raise UserError(f"--epochs {length.epochs:g}: expected a positive number (or set --iterations)")
    return math.ceil(length.epochs * n_images / (batch_size * dist_util.get_world_size()))


def _train_config(cfg, total_steps: int, anneal: bool, precision: str = "fp32", epoch_size: int = 0) -> TrainConfig:
    if total_steps < 0:
        raise UserError(f"total steps {total_steps}: expected 0 (no limit) or more")
    speed = getattr(cfg, "speed", SpeedFlags())
    t = cfg.training
    return TrainConfig(batch_size=cfg.data.batch_size, microbatch=t.microbatch, lr=t.lr, weight_decay=t.weight_decay,
                       total_steps=total_steps, anneal_lr=anneal, log_interval=t.log_interval,
                       save_interval=t.save_interval, precision=precision, seed=cfg.run.seed,
                       resume_checkpoint=t.resume_checkpoint, log_dir=cfg.run.log_dir, use_compile=speed.compile,
                       channels_last=speed.channels_last, progress=cfg.run.progress, epoch_size=epoch_size)


def _train(cfg, piece: Piece, dataset, train_cfg: TrainConfig, device, monitor, indices=None, what: str = "") -> dict:
    """Train ``piece``; returns ``{"step", "checkpoint" (the final marker file), "last" (the last
    logged loss means), "trainer"}``."""
    _write_flags(cfg, cfg.run.log_dir)
    trainer = Trainer(piece, _stream(dataset, cfg.data, cfg.run.seed, device, indices), train_cfg,
                      monitor=monitor, device=device)
    params = sum(p.numel() for net in piece.modules().values() for p in net.parameters())
    n = len(dataset) if indices is None else len(indices)
    logger.log(f"training the {piece.kind} on {n} of {len(dataset)} images{what}, {params} parameters, "
               f"{train_cfg.total_steps or 'unlimited'} steps (batch {train_cfg.batch_size} x "
               f"{dist_util.get_world_size()} processes), device {device}, from step {trainer.step}")
    trainer.run_loop()
    marker = trainer.checkpoint_path(trainer.marker_prefix(), trainer.step)
    logger.log(f"saved {marker}")
    return {"step": trainer.step, "checkpoint": marker, "last": trainer.last_logged, "trainer": trainer}


# -------------------------------------------------------------------------------- training


def train_diffusion_model(cfg: ImageTrainConfig, monitor=None) -> dict:
    """scripts/image_train.py: train the class-conditional diffusion UNet."""
    device = dist_util.dev(cfg.run.device or None)
    th.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    model, diffusion = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)
    model.to(device)
    dataset = _dataset(cfg.data, "training")
    piece = DiffusionPiece(model, diffusion, cfg.schedule.ema_rate,
                           create_named_schedule_sampler(cfg.timesteps.schedule_sampler, diffusion))
    steps = cfg.schedule.lr_anneal_steps
    precision = resolve_precision(cfg.speed.precision, cfg.model.use_fp16)
    return _train(cfg, piece, dataset, _train_config(cfg, steps, anneal=bool(steps), precision=precision),
                  device, monitor)


def train_classifier(cfg: ClassifierTrainConfig, monitor=None) -> dict:
    """scripts/classifier_train.py: train the noise-aware classifier (held-out accuracy logged)."""
    device = dist_util.dev(cfg.run.device or None)
    th.manual_seed(cfg.run.seed)
    classifier, diffusion = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
    classifier.to(device)
    dataset = _dataset(cfg.data, "training")
    ct = cfg.classifier_training
    if ct.val_data_dir:
        train_idx, val_set = None, _dataset(cfg.data, "held-out", ct.val_data_dir, ct.val_label_dir)
    else:
        train_idx, val_idx = split_by_patient(dataset.patients, cfg.split.val_fraction, cfg.run.seed)
        val_set = Subset(dataset, val_idx) if val_idx else None

    def make_val():
        return iter(DataLoader(val_set, batch_size=cfg.data.batch_size, shuffle=False,
                               collate_fn=collate_training_batch))

    piece = ClassifierPiece(classifier, diffusion, ct.noised,
                            create_named_schedule_sampler(cfg.timesteps.schedule_sampler, diffusion),
                            make_val_data=make_val if val_set is not None else None, eval_interval=ct.eval_interval)
    n_train = len(dataset) if train_idx is None else len(train_idx)
    precision = resolve_precision(cfg.speed.precision, cfg.classifier.classifier_use_fp16, "--classifier_use_fp16")
    train_cfg = _train_config(cfg, _length(cfg.length, n_train, cfg.data.batch_size), anneal=ct.anneal_lr,
                              precision=precision)
    held_out = f" ({len(val_set) if val_set is not None else 0} held out)"
    return _train(cfg, piece, dataset, train_cfg, device, monitor, indices=train_idx, what=held_out)


def _healthy_indices(dataset, data: DataFlags, what: str) -> list[int]:
    indices = [i for i, y in enumerate(item_labels(dataset, data.num_workers)) if y == 0]
    if not indices:
        raise UserError(f"--data_dir {data.data_dir}: no healthy (label 0) images to train the {what} on")
    return indices


def train_vae(cfg: VAETrainConfig, monitor=None) -> dict:
    """scripts/vae_train.py: the cAAE baseline on the healthy training images."""
    device = dist_util.dev(cfg.run.device or None)
    dataset = _dataset(cfg.data, "training")
    th.manual_seed(cfg.run.seed)  # initial weights are a function of --seed
    model, disc = create_vae(cfg.data, cfg.vae)
    for net in (model, disc):
        if net is not None:
            net.to(device)
    losses = cfg.vae_losses
    piece = VAEPiece(model, disc, kl_weight=losses.kl_weight, lambda_adv=losses.lambda_adv,
                     lambda_consistency=losses.lambda_consistency)
    indices = _healthy_indices(dataset, cfg.data, "VAE")
    train_cfg = _train_config(cfg, _length(cfg.length, len(indices), cfg.data.batch_size), anneal=False,
                              epoch_size=len(indices))
    return _train(cfg, piece, dataset, train_cfg, device, monitor, indices=indices, what=" (healthy only)")


def train_fpgan(cfg: FPGANTrainConfig, monitor=None) -> dict:
    """scripts/fpgan_train.py: FixedPoint-GAN on healthy and diseased training images."""
    device = dist_util.dev(cfg.run.device or None)
    dataset = _dataset(cfg.data, "training")
    th.manual_seed(cfg.run.seed)
    gen, disc = create_fpgan(cfg.data, cfg.fpgan)
    gen.to(device)
    disc.to(device)
    losses = cfg.fpgan_losses
    piece = FPGANPiece(gen, disc, lambda_cls=losses.lambda_cls, lambda_gp=losses.lambda_gp,
                       lambda_rec=losses.lambda_rec, lambda_id=losses.lambda_id, n_critic=losses.n_critic)
    if len(set(item_labels(dataset, cfg.data.num_workers))) < 2:
        logger.warn(f"--data_dir {cfg.data.data_dir}: only one class present; FixedPoint-GAN needs "
                    "healthy and diseased images to learn the translation")
    train_cfg = _train_config(cfg, _length(cfg.length, len(dataset), cfg.data.batch_size), anneal=False,
                              epoch_size=len(dataset))
    return _train(cfg, piece, dataset, train_cfg, device, monitor)


# -------------------------------------------------------------------------------- translation


def _translate(cfg, method: Method, dataset, device, monitor) -> dict | None:
    output_dir = cfg.translation.output_dir or os.path.join(cfg.run.log_dir, "samples")
    loop = LoopConfig(output_dir=output_dir, num_samples=cfg.translation.num_samples, batch_size=cfg.data.batch_size,
                      num_workers=cfg.data.num_workers, scoring=scoring_of(cfg.evaluation, cfg.run.seed),
                      progress=cfg.run.progress,
                      visdom_every=cfg.monitoring.visdom_every)
    flags = dict(sorted(flag_dict(cfg).items()))
    summary = translate_folder(method, dataset, loop, device=device, monitor=monitor, summary={"flags": flags})
    if summary is not None:
        logger.log(format_table(summary))
    return summary


def diffusion_method(cfg: SampleConfig, device: th.device) -> DiffusionTranslation:
    """The guided DDIM / DDPM translation of the flags, with both checkpoints loaded."""
    model, diffusion = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)
    classifier, _ = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
    s = cfg.sampling
    load_weights(model, cfg.translation.model_path, "--model_path", "diffusion model")
    load_weights(classifier, s.classifier_path, "--classifier_path", "classifier")
    if not 1 <= s.noise_level <= diffusion.num_timesteps:  # before any image is translated
        raise UserError(f"--noise_level {s.noise_level}: expected 1..{diffusion.num_timesteps} (steps of the "
                        f"process with --timestep_respacing {cfg.diffusion.timestep_respacing or 'none'})")
    speed = cfg.speed
    for net in (model, classifier):
        prepare_for_inference(net, device, speed.channels_last)
    model_autocast = autocast_for(device, resolve_precision(speed.precision, cfg.model.use_fp16))
    classifier_autocast = autocast_for(device, resolve_precision(speed.precision, cfg.classifier.classifier_use_fp16,
                                                                 "--classifier_use_fp16"))
    model_fn = wrap_network(compile_network(model, device) if speed.compile else model, model_autocast,
                            speed.channels_last)
    cond_fn = make_cond_fn(classifier, s.classifier_scale, autocast=classifier_autocast)
    return DiffusionTranslation(model_fn, diffusion, cond_fn, seed=cfg.run.seed, noise_level=s.noise_level,
                                use_ddim=s.use_ddim, clip_denoised=s.clip_denoised, scale=s.classifier_scale)


def run_translation(cfg: SampleConfig, monitor=None) -> dict | None:
    """scripts/classifier_sample_known.py: translate ``--data_dir`` and score it; the summary on rank 0."""
    device = dist_util.dev(cfg.run.device or None)
    method = diffusion_method(cfg, device)
    return _translate(cfg, method, _dataset(cfg.data, "test"), device, monitor)


def translate_vae(cfg: VAETranslateConfig, monitor=None) -> dict | None:
    """scripts/vae_translate.py: the VAE's reconstruction as the healthy translation."""
    device = dist_util.dev(cfg.run.device or None)
    model, _ = create_vae(cfg.data, cfg.vae)
    load_weights(model, cfg.translation.model_path, "--model_path", "VAE", hint=VAE_FLAGS_HINT)
    prepare_for_inference(model, device)
    return _translate(cfg, NetworkTranslation("VAE", model.reconstruct), _dataset(cfg.data, "test"), device, monitor)


def translate_fpgan(cfg: FPGANTranslateConfig, monitor=None) -> dict | None:
    """scripts/fpgan_translate.py: G(x, healthy) as the healthy translation."""
    device = dist_util.dev(cfg.run.device or None)
    gen, _ = create_fpgan(cfg.data, cfg.fpgan)
    load_weights(gen, cfg.translation.model_path, "--model_path", "FixedPoint-GAN G", hint=FPGAN_FLAGS_HINT)
    prepare_for_inference(gen, device)
    method = NetworkTranslation("FixedPoint-GAN", lambda x: translate_to_healthy(gen, x))
    return _translate(cfg, method, _dataset(cfg.data, "test"), device, monitor)
