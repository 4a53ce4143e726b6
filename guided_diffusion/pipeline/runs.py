"""What the scripts do, as functions of their typed configs (the scripts stay thin): the steps every
method shares, and the diffusion family's scripts (image_train, classifier_train,
classifier_sample_known; tune.py's search is :mod:`.tune`).

A script's config is a dataclass of flag groups (:mod:`guided_diffusion.util.flags`); its
run function builds the data, the networks and the piece or translator from it and hands them
to the training scaffold (:mod:`.train`) or the translation loop (:mod:`.translate`).
``DEFAULTS`` are a script's own defaults for flags of shared groups. Each baseline's configs and
run functions are its method's module (:mod:`.methods`); they build on :class:`TrainingConfigBase`,
:class:`TranslationConfigBase`, :func:`script_config`, :func:`train_baseline` and :func:`translate_with`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, make_dataclass
from typing import Any, Callable, ClassVar

import torch as th
from torch.utils.data import DataLoader, Subset

from ..datasets.loaders import (
    balanced_indices,
    collate_training_batch,
    create_dataset,
    item_labels,
    training_batches,
)
from ..datasets.splits import split_by_patient
from ..evaluation.results import format_table
from ..guidance import cfg_guided, classifier_guided, unguided
from ..resample import create_named_schedule_sampler
from ..script_util import NULL_CLASS, NUM_CLASSES, in_channels_for
from ..simplex import simplex_noise
from ..translation_levers import check_patch_size
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
    LengthFlags,
    MapFlags,
    ModelFlags,
    MonitorFlags,
    NoiseFlags,
    PatchFlags,
    RunFlags,
    SamplingFlags,
    SpeedFlags,
    SplitFlags,
    TimestepFlags,
    TrainFlags,
    TranslateFlags,
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
from .translators import DiffusionTranslation, Levers, per_image
from .networks import (
    CLASSIFIER_FLAGS,
    UNET_FLAGS,
    CheckpointFlags,
    create_classifier_net,
    create_unet_and_diffusion,
    flags_file,
    load_weights,
)
from .pieces import ClassifierPiece, DiffusionPiece, gaussian_noise
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


@dataclass(frozen=True)
class ImageTrainConfig(TrainingConfigBase):
    """scripts/image_train.py"""

    model: ModelFlags
    diffusion: DiffusionFlags
    noise: NoiseFlags
    schedule: DiffusionTrainFlags
    patches: PatchFlags
    timesteps: TimestepFlags
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "image_train"
    CHECKPOINTS: ClassVar[tuple] = (CheckpointFlags("resume_checkpoint", "image_train", UNET_FLAGS + ("p_uncond",)),)


@dataclass(frozen=True)
class ClassifierTrainConfig(TrainingConfigBase):
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
    CHECKPOINTS: ClassVar[tuple] = (CheckpointFlags("resume_checkpoint", "classifier_train",
                                                    CLASSIFIER_FLAGS + ("diffusion_steps", "noise_schedule")),)
    # the diffusion flags that the classifier's noising does not use: accepted (the original README's
    # presets pass them) but not listed in --help
    HIDDEN: ClassVar[tuple] = ("learn_sigma", "use_kl", "predict_xstart", "rescale_learned_sigmas")


@dataclass(frozen=True)
class SampleConfig(TranslationConfigBase):
    """scripts/classifier_sample_known.py"""

    model: ModelFlags
    diffusion: DiffusionFlags
    noise: NoiseFlags
    classifier: ClassifierFlags
    sampling: SamplingFlags
    patches: PatchFlags
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "classifier_sample_known"
    VISDOM_ENV: ClassVar[str] = "translate"
    # every network and diffusion flag not given is the checkpoints' (their saved flags, else their shapes)
    CHECKPOINTS: ClassVar[tuple] = (CheckpointFlags("model_path", "image_train", UNET_FLAGS, shapes="unet"),
                                    CheckpointFlags("classifier_path", "classifier_train", CLASSIFIER_FLAGS,
                                                    shapes="classifier"))


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


def train_diffusion_model(cfg: ImageTrainConfig, monitor=None) -> dict:
    """scripts/image_train.py: train the class-conditional diffusion UNet."""
    device = dist_util.dev(cfg.run.device or None)
    th.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    model, diffusion = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion,
                                                 uncond_label=cfg.schedule.p_uncond > 0)
    model.to(device)
    dataset = open_dataset(cfg.data, "training")
    sched = cfg.schedule
    check_patch_size(cfg.patches.patch_size, cfg.data.image_size)
    if sched.p_uncond and not cfg.model.class_cond:
        raise UserError(f"--p_uncond {sched.p_uncond}: classifier-free guidance needs a class-conditional model "
                        "(--class_cond True)")
    piece = DiffusionPiece(model, diffusion, sched.ema_rate,
                           create_named_schedule_sampler(cfg.timesteps.schedule_sampler, diffusion),
                           noise_fn=noise_fn_of(cfg.noise), p_uncond=sched.p_uncond,
                           patch_size=cfg.patches.patch_size)
    indices = healthy_indices(dataset, cfg.data, "diffusion model") if sched.healthy_only else None
    steps = sched.lr_anneal_steps
    precision = resolve_precision(cfg.speed.precision, cfg.model.use_fp16)
    return train_piece(cfg, piece, dataset, train_config(cfg, steps, anneal=bool(steps), precision=precision),
                  device, monitor, indices=indices, what=" (healthy only)" if sched.healthy_only else "")


def train_classifier(cfg: ClassifierTrainConfig, monitor=None) -> dict:
    """scripts/classifier_train.py: train the noise-aware classifier (held-out accuracy logged)."""
    device = dist_util.dev(cfg.run.device or None)
    th.manual_seed(cfg.run.seed)
    classifier, diffusion = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
    classifier.to(device)
    dataset = open_dataset(cfg.data, "training")
    ct = cfg.classifier_training
    if ct.val_data_dir:
        train_idx, val_set = None, open_dataset(cfg.data, "held-out", ct.val_data_dir, ct.val_label_dir)
    else:
        train_idx, val_idx = split_by_patient(dataset.patients, cfg.split.val_fraction, cfg.run.seed)
        val_set = Subset(dataset, val_idx) if val_idx else None

    def make_val():
        return iter(DataLoader(val_set, batch_size=cfg.data.batch_size, shuffle=False,
                               collate_fn=collate_training_batch))

    piece = ClassifierPiece(classifier, diffusion, ct.noised,
                            create_named_schedule_sampler(cfg.timesteps.schedule_sampler, diffusion),
                            make_val_data=make_val if val_set is not None else None, eval_interval=ct.eval_interval,
                            max_t=ct.classifier_max_t)
    if ct.balance_classes:
        train_idx = balanced_indices(item_labels(dataset, cfg.data.num_workers), train_idx)
    n_train = len(dataset) if train_idx is None else len(train_idx)
    precision = resolve_precision(cfg.speed.precision, cfg.classifier.classifier_use_fp16, "--classifier_use_fp16")
    train_cfg = train_config(cfg, training_length(cfg.length, n_train, cfg.data.batch_size), anneal=ct.anneal_lr,
                              precision=precision)
    held_out = f" ({len(val_set) if val_set is not None else 0} held out)"
    if ct.balance_classes:
        held_out += f", classes balanced: {n_train} draws per epoch"
    return train_piece(cfg, piece, dataset, train_cfg, device, monitor, indices=train_idx, what=held_out)


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


def noise_fn_of(noise: NoiseFlags):
    """The forward process's noise of the noise flags, as ``noise_fn(shape, generator)``, for training
    and (one image per generator) translation."""
    if noise.noise_type == "gaussian":
        return gaussian_noise
    return lambda shape, generator: simplex_noise(shape, octaves=noise.simplex_octaves,
                                                  persistence=noise.simplex_persistence,
                                                  frequency=noise.simplex_frequency, generator=generator)


def _check_uncond_label(path: str, state: dict) -> None:
    """--guidance cfg needs a model with the "no class" label row; name the cause when it has none."""
    rows = state.get("label_emb.weight")
    if rows is not None and rows.shape[0] == NUM_CLASSES:
        raise UserError(f"{path}: made without the 'no class' label of classifier-free guidance; --guidance cfg "
                        "needs a model trained with image_train.py --p_uncond > 0")


def _warn_beyond_classifier_range(classifier_path: str, diffusion, levels) -> None:
    """Warn when translation asks the classifier about timesteps it was not trained on
    (classifier_train.py --classifier_max_t, read from the flags saved beside the checkpoint)."""
    saved = flags_file(classifier_path, "classifier_train")
    try:
        with open(saved) as f:
            max_t = int(json.load(f).get("classifier_max_t") or 0)
    except (OSError, ValueError):
        return
    # decoding calls the classifier at the levels L-2 .. 0 of the (respaced) process
    deepest = max(diffusion.timestep_map[max(level - 2, 0)] for level in levels)
    if max_t and deepest >= max_t:
        logger.warn(f"--noise_level {','.join(map(str, levels))}: the classifier is asked about timesteps up to "
                    f"{deepest}, but it was trained on t < {max_t} only (--classifier_max_t in {saved})")


def diffusion_translator(cfg: SampleConfig, device: th.device) -> DiffusionTranslation:
    """The diffusion translation of the flags (classifier-guided, classifier-free guided or unguided),
    with its checkpoints loaded."""
    s, speed = cfg.sampling, cfg.speed
    cfg_guidance = s.guidance == "cfg"
    if cfg_guidance and not cfg.model.class_cond:
        raise UserError("--guidance cfg: needs a class-conditional model (--class_cond True) trained with --p_uncond")
    model, diffusion = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion, uncond_label=cfg_guidance)
    levers = levers_of(cfg, diffusion.num_timesteps)
    load_weights(model, checkpoint_of(cfg), "--model_path", "diffusion model",
                 check=_check_uncond_label if cfg_guidance else None)
    for level in s.noise_level:  # before any image is translated
        if not 1 <= level <= diffusion.num_timesteps:
            raise UserError(f"--noise_level {level}: expected 1..{diffusion.num_timesteps} (steps of the process "
                            f"with --timestep_respacing {cfg.diffusion.timestep_respacing or 'none'})")
    prepare_for_inference(model, device, speed.channels_last)
    model_autocast = autocast_for(device, resolve_precision(speed.precision, cfg.model.use_fp16))
    model_fn = wrap_network(compile_network(model, device) if speed.compile else model, model_autocast,
                            speed.channels_last)
    if s.guidance == "classifier":
        classifier, _ = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
        load_weights(classifier, s.classifier_path, "--classifier_path", "classifier")
        _warn_beyond_classifier_range(s.classifier_path, diffusion, s.noise_level)
        prepare_for_inference(classifier, device, speed.channels_last)
        classifier_autocast = autocast_for(device, resolve_precision(
            speed.precision, cfg.classifier.classifier_use_fp16, "--classifier_use_fp16"))
        guided = classifier_guided(model_fn, classifier, s.classifier_scale, autocast=classifier_autocast,
                                   class_cond=cfg.model.class_cond)
    elif cfg_guidance:
        guided = cfg_guided(model_fn, s.guidance_scale, NULL_CLASS, in_channels_for(cfg.data.dataset))
    else:
        guided = unguided(model_fn, class_cond=cfg.model.class_cond)
    return DiffusionTranslation(guided, diffusion, seed=cfg.run.seed, noise_levels=s.noise_level,
                                use_ddim=s.use_ddim, clip_denoised=s.clip_denoised,
                                draw=per_image(noise_fn_of(cfg.noise)), noise_type=cfg.noise.noise_type,
                                levers=levers, map_options=map_options(cfg.maps))


def levers_of(cfg: SampleConfig, num_timesteps: int) -> Levers:
    """The translation levers of the flags (scale schedule, AutoDDPM, pDDPM patches), checked against the
    image size and the process's ``num_timesteps``: a bad value is a :class:`UserError` naming its flag."""
    s = cfg.sampling
    if s.scale_schedule != "constant" and s.guidance != "classifier":
        raise UserError(f"--scale_schedule {s.scale_schedule}: schedules the classifier's scale; --guidance "
                        f"{s.guidance} has no classifier")
    if not 0.0 < s.autoddpm_quantile <= 1.0:
        raise UserError(f"--autoddpm_quantile {s.autoddpm_quantile:g}: expected 0 < q <= 1")
    if not 0 <= s.autoddpm_level <= num_timesteps:
        raise UserError(f"--autoddpm_level {s.autoddpm_level}: expected 0 (L / 4) or 1..{num_timesteps} (steps of "
                        f"the process with --timestep_respacing {cfg.diffusion.timestep_respacing or 'none'})")
    if s.autoddpm_dilation < 0:
        raise UserError(f"--autoddpm_dilation {s.autoddpm_dilation}: expected 0 or more pixels")
    check_patch_size(cfg.patches.patch_size, cfg.data.image_size)
    return Levers(scale_schedule=s.scale_schedule, autoddpm=s.autoddpm, autoddpm_quantile=s.autoddpm_quantile,
                  autoddpm_level=s.autoddpm_level, autoddpm_dilation=s.autoddpm_dilation,
                  patch_size=cfg.patches.patch_size)


def translate_with(build: Callable[..., Translator], cfg, monitor=None) -> dict | None:
    """A translation script: the translator ``build(cfg, device)`` over ``--data_dir``, scored; the
    summary on rank 0."""
    device = dist_util.dev(cfg.run.device or None)
    return _translate(cfg, build(cfg, device), open_dataset(cfg.data, "test"), device, monitor)


def run_translation(cfg: SampleConfig, monitor=None) -> dict | None:
    """scripts/classifier_sample_known.py: translate ``--data_dir`` and score it; the summary on rank 0."""
    return translate_with(diffusion_translator, cfg, monitor)


def remap_translation(cfg, maps_from: str) -> dict | None:
    """The results of ``cfg`` (any translation script's) written from ``maps_from``, a folder translated
    with settings that differ from ``cfg``'s only in the ``--map_*`` flags and with one healthy image per
    input (no noise-level ensemble): each map is made again from its saved input and healthy image, and
    nothing is translated (:func:`.translate.remap_folder`). The summary on rank 0."""
    return _translate(cfg, None, None, None, None, maps_from=maps_from)
