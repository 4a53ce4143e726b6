"""The diffusion family (:mod:`.paper`, :mod:`.cfg`, :mod:`.simplex` are its methods): what its methods
share, in one place. Its training pieces (the class-conditional diffusion UNet's, with guided diffusion's
``TrainLoop`` name, and the noise-aware classifier's), its three scripts' configs and run functions
(image_train.py, classifier_train.py, classifier_sample_known.py; tune.py's search over the last is
:mod:`..tune`), the diffusion translator of the flags with its levers, those scripts as commands, and the
demo's sampling flags. Which method a run is follows from its flags (``--guidance``, ``--noise_type``,
the checkpoints)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch as th
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ...datasets.loaders import balanced_indices, collate_training_batch, item_labels
from ...datasets.splits import split_by_patient
from ...guidance import cfg_guided, classifier_guided, unguided
from ...resample import LossAwareSampler, UniformSampler, create_named_schedule_sampler
from ...script_util import NULL_CLASS, NUM_CLASSES, in_channels_for
from ...simplex import simplex_noise
from ...translation_levers import check_patch_size, patch_boxes, patch_masks, patched_training_losses
from ...unet_forensics import check_state_dict
from ...util import dist_util, logger
from ...util.errors import UserError
from ...util.flags import (
    ClassifierFlags,
    ClassifierTrainFlags,
    DiffusionFlags,
    DiffusionTrainFlags,
    LengthFlags,
    ModelFlags,
    NoiseFlags,
    PatchFlags,
    SamplingFlags,
    SpeedFlags,
    SplitFlags,
    TimestepFlags,
)
from ...util.flagspec import part
from ..devices import autocast_for, compile_network, prepare_for_inference, resolve_precision, wrap_network
from ..networks import (
    CLASSIFIER_FLAGS,
    UNET_FLAGS,
    CheckpointFlags,
    create_classifier_net,
    create_unet_and_diffusion,
    flags_file,
    load_weights,
)
from ..pieces import OneNetworkPiece
from ..presets import DEMO_DIFFUSION, DEMO_MODEL, DEMO_RESPACING
from ..runs import (
    TrainingConfigBase,
    TranslationConfigBase,
    checkpoint_of,
    open_dataset,
    train_config,
    train_piece,
    training_length,
    healthy_indices,
    translate_with,
)
from ..train import TrainConfig, Trainer, step_generator
from ..translate import map_options
from ..translators import DiffusionTranslation, Levers, per_image
from .base import Checkpoint, Command, Training, translation_command

# ---------------------------------------------------------------------------------- training pieces


def _parse_rates(ema_rate: str) -> list[float]:
    return [float(r) for r in str(ema_rate).split(",")] if str(ema_rate) else []


def gaussian_noise(shape, generator: th.Generator) -> th.Tensor:
    """The forward process's noise of the paper: standard normal."""
    return th.randn(shape, generator=generator, device=generator.device)


class DiffusionPiece(OneNetworkPiece):
    """The diffusion UNet (guided diffusion's TrainLoop): loss ``diffusion.training_losses``
    weighted by the schedule sampler's importance weights, EMA of the weights after each step.

    ``noise_fn(shape, generator)`` draws the forward process's noise for the global batch (Gaussian,
    or AnoDDPM's simplex noise). With ``p_uncond`` > 0 each label is replaced by ``null_class`` with
    that probability (label dropout of classifier-free guidance, Ho & Salimans 2022). With ``patch_size``
    > 0 only one patch per image, drawn from the grid of ``patch_size`` squares that tile it, is noised
    and the loss is that patch's (pDDPM, Behrendt et al. 2023: the network learns to reconstruct a patch
    from its clean context)."""

    kind = "model"

    def __init__(self, model, diffusion, ema_rate: str = "0.9999", schedule_sampler=None,
                 noise_fn: Callable = gaussian_noise, p_uncond: float = 0.0, null_class: int = NULL_CLASS,
                 patch_size: int = 0):
        if not 0.0 <= p_uncond < 1.0:
            raise UserError(f"--p_uncond {p_uncond}: expected a probability, 0 <= p < 1")
        self.patch_size = patch_size
        self.model = self.net = model
        self.diffusion = diffusion
        self.ema_rate = _parse_rates(ema_rate)
        self.ema_params = [[p.detach().clone() for p in model.parameters()] for _ in self.ema_rate]
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.noise_fn = noise_fn
        self.p_uncond = p_uncond
        self.null_class = null_class

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        t, weights = self.schedule_sampler.sample(trainer.global_batch, trainer.device, generator=trainer.generator)
        noise = self.noise_fn((trainer.global_batch, *x.shape[1:]), trainer.generator)
        t, weights, noise = trainer.mine(t, weights, noise.to(trainer.device))
        if getattr(self.model, "num_classes", None) is None:
            cond = {k: v for k, v in cond.items() if k != "y"}  # an unconditional model takes no label
        if self.p_uncond:
            drop = trainer.rand() < self.p_uncond  # (B,) this rank's share of the global draw
            cond = {**cond, "y": th.where(drop, th.full_like(cond["y"], self.null_class), cond["y"])}
        mask = None
        if self.patch_size:  # pDDPM: one patch of the grid per image (drawn after the paper's draws)
            n_patches = len(patch_boxes(x.shape[2], x.shape[3], self.patch_size))
            mask = patch_masks(x.shape, self.patch_size, trainer.randint(n_patches))

        def loss(sl):
            kwargs = dict(noise=noise[sl], model_kwargs={k: v[sl] for k, v in cond.items()})
            if mask is None:
                losses = self.diffusion.training_losses(trainer.net, x[sl], t[sl], **kwargs)
            else:
                losses = patched_training_losses(self.diffusion, trainer.net, x[sl], t[sl], mask[sl], **kwargs)
            if isinstance(self.schedule_sampler, LossAwareSampler):
                self.schedule_sampler.update_with_local_losses(t[sl], losses["loss"].detach())
            return (losses["loss"] * weights[sl]).mean(), losses

        trainer.minimise("opt", loss, x.shape[0])

    def after_step(self, trainer: Trainer) -> None:
        params = [p.detach() for p in self.model.parameters()]
        for rate, ema in zip(self.ema_rate, self.ema_params):
            th._foreach_lerp_(ema, params, 1.0 - rate)  # ema <- rate * ema + (1 - rate) * p

    @staticmethod
    def ema_prefix(rate: float) -> str:
        return f"ema_{rate}_"

    def ema_state_dict(self, params) -> dict:
        state = self.model.state_dict()
        for (name, _), p in zip(self.model.named_parameters(), params):
            state[name] = p.detach().clone()
        return state

    def state_dicts(self):
        emas = {self.ema_prefix(rate): self.ema_state_dict(params)
                for rate, params in zip(self.ema_rate, self.ema_params)}
        return {**emas, "model": self.model.state_dict()}

    def check_state_dicts(self, states, paths):
        for prefix in states:
            what = "diffusion model" if prefix == "model" else "EMA weights of the diffusion model"
            check_state_dict(self.model, states[prefix], paths[prefix], what)

    def load_state_dicts(self, states):
        self.model.load_state_dict(states["model"], strict=True)
        names = [n for n, _ in self.model.named_parameters()]
        for rate, params in zip(self.ema_rate, self.ema_params):
            state = states[self.ema_prefix(rate)]
            for name, p in zip(names, params):
                p.copy_(state[name])


class ClassifierPiece(OneNetworkPiece):
    """The noise-aware classifier: cross entropy of classifier(q_sample(x, t), t) against the label,
    at timesteps from the schedule sampler (guided diffusion's classifier_train.py)."""

    kind = "classifier"

    def __init__(self, classifier, diffusion, noised: bool = True, schedule_sampler=None,
                 make_val_data: Callable[[], Iterator] | None = None, eval_interval: int = 0,
                 val_batches: int = 4, max_t: int = 0):
        if not 0 <= max_t <= diffusion.num_timesteps:
            raise UserError(f"--classifier_max_t {max_t}: expected 0 (all) or 1..{diffusion.num_timesteps}")
        self.max_t = max_t
        self.classifier = self.net = classifier
        self.diffusion = diffusion
        self.noised = noised
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.make_val_data = make_val_data
        self.eval_interval = eval_interval
        self.val_batches = val_batches
        self._val_cache: list | None = None

    def logits_and_terms(self, net, x, y, t, noise):
        if self.noised:
            x = self.diffusion.q_sample(x, t, noise=noise)
        else:
            t = th.zeros_like(t)
        logits = net(x, t)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        acc = (logits.argmax(dim=-1) == y).float()
        return loss, {"loss": loss, "acc": acc}

    def timesteps(self, n: int, generator: th.Generator, device) -> th.Tensor:
        """n training timesteps: the schedule sampler's, or uniform in [0, max_t) with ``max_t``."""
        if self.max_t:
            return th.randint(0, self.max_t, (n,), generator=generator, device=generator.device).to(device)
        return self.schedule_sampler.sample(n, device, generator=generator)[0]

    def step(self, trainer: Trainer, x: th.Tensor, cond: dict) -> None:
        t = self.timesteps(trainer.global_batch, trainer.generator, trainer.device)
        noise = th.randn((trainer.global_batch, *x.shape[1:]), generator=trainer.generator, device=trainer.device)
        t, noise = trainer.mine(t, noise)

        def loss(sl):
            per_image, terms = self.logits_and_terms(trainer.net, x[sl], cond["y"][sl], t[sl], noise[sl])
            return per_image.mean(), terms

        trainer.minimise("opt", loss, x.shape[0])

    def periodic(self, trainer: Trainer) -> None:
        if self.make_val_data is not None and self.eval_interval and trainer.step % self.eval_interval == 0:
            self.evaluate(trainer)

    def _held_out(self, device) -> list:
        """The first ``val_batches`` held-out batches, read once and kept on the device."""
        if self._val_cache is None:
            self._val_cache = []
            for i, (x, cond) in enumerate(self.make_val_data()):
                if i >= self.val_batches:
                    break
                self._val_cache.append((x.to(device), cond["y"].to(device)))
        return self._val_cache

    @th.no_grad()
    def evaluate(self, trainer: Trainer) -> dict:
        """Loss and accuracy on the held-out batches at random noise levels (seeded per step)."""
        self.classifier.eval()
        sums: dict[str, float] = {}
        n = 0
        gen = step_generator(trainer.cfg.run.seed + 1, trainer.step, trainer.device)
        for x, y in self._held_out(trainer.device):
            t = th.randint(0, self.max_t or self.diffusion.num_timesteps, (x.shape[0],), generator=gen,
                           device=trainer.device)
            noise = th.randn(x.shape, generator=gen, device=trainer.device)
            with trainer.autocast():
                _, terms = self.logits_and_terms(self.classifier, x, y, t, noise)
            for k, v in terms.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + v.float().sum().item()
            n += x.shape[0]
        self.classifier.train()
        values = {k: v / max(n, 1) for k, v in sums.items()}
        if trainer.is_main and values:
            for k, v in values.items():
                logger.logkv(k, v)
            if trainer.monitor is not None:
                trainer.monitor.line("classifier_accuracy", trainer.step, {"val_acc": values["val_acc"]},
                                     title="classifier accuracy")
        return values


class TrainLoop(Trainer):
    """guided diffusion's name: the scaffold training a :class:`DiffusionPiece`."""

    def __init__(self, model, diffusion, make_data, config: TrainConfig, ema_rate: str = "0.9999",
                 schedule_sampler=None, monitor=None, device: th.device | None = None):
        self.model = model
        super().__init__(DiffusionPiece(model, diffusion, ema_rate, schedule_sampler), make_data, config,
                         monitor=monitor, device=device)


class ClassifierTrainLoop(Trainer):
    """The scaffold training a :class:`ClassifierPiece`."""

    def __init__(self, classifier, diffusion, make_data, config: TrainConfig, noised: bool = True,
                 make_val_data: Callable[[], Iterator] | None = None, eval_interval: int = 0,
                 schedule_sampler=None, monitor=None, device: th.device | None = None):
        self.model = classifier
        super().__init__(ClassifierPiece(classifier, diffusion, noised, schedule_sampler, make_val_data, eval_interval),
                         make_data, config, monitor=monitor, device=device)

    def evaluate(self, max_batches: int = 4) -> dict:
        if max_batches != self.piece.val_batches:
            self.piece.val_batches, self.piece._val_cache = max_batches, None
        return self.piece.evaluate(self)


# ---------------------------------------------------------------------- configs and run functions


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


def run_translation(cfg: SampleConfig, monitor=None) -> dict | None:
    """scripts/classifier_sample_known.py: translate ``--data_dir`` and score it; the summary on rank 0."""
    return translate_with(diffusion_translator, cfg, monitor)


# ------------------------------------------------------------------------------ commands and demo


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
