"""What the training scripts do, as functions of their parsed flags (scripts stay thin)."""
from __future__ import annotations

import json
import os

import torch as th
from torch.utils.data import DataLoader, Subset

from ..datasets.images import ShardedBatchSampler, collate_training_batch, create_dataset
from ..datasets.prepare import split_patients
from ..resample import create_named_schedule_sampler
from ..script_util import (
    args_to_dict,
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.monitor import Monitor
from .train import ClassifierTrainLoop, TrainConfig, TrainLoop


def train_defaults() -> dict:
    """Flags shared by both training scripts (besides network and diffusion flags)."""
    return dict(
        label_dir="",
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        batch_size=1,
        microbatch=-1,
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        precision="fp32",
        use_fp16=False,
        compile=False,
        num_workers=0,
    )


def _precision(args) -> str:
    # the legacy --use_fp16 / --classifier_use_fp16 flags mean fp16 autocast
    if args.precision == "fp32" and (getattr(args, "use_fp16", False) or getattr(args, "classifier_use_fp16", False)):
        return "fp16"
    return args.precision


def _batches(dataset, args, start_step: int, seed: int, device):
    sampler = ShardedBatchSampler(len(dataset), args.batch_size, seed=seed, start_step=start_step,
                                  shard=dist_util.get_rank(), num_shards=dist_util.get_world_size())
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0,
                        collate_fn=collate_training_batch)
    while True:
        yield from loader


def _config(args, total_steps: int, anneal: bool) -> TrainConfig:
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive integer")
    if total_steps < 0:
        raise ValueError(f"total steps {total_steps}: expected 0 (no limit) or more")
    return TrainConfig(batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr,
                       weight_decay=args.weight_decay, total_steps=total_steps, anneal_lr=anneal,
                       log_interval=max(1, args.log_interval), save_interval=max(1, args.save_interval),
                       precision=_precision(args), seed=args.seed, resume_checkpoint=args.resume_checkpoint,
                       log_dir=args.log_dir, use_compile=args.compile, progress=args.progress)


def _write_flags(args, name: str) -> None:
    if dist_util.is_main_process():
        from ..util.fileio import atomic_write
        with atomic_write(os.path.join(args.log_dir, name), "w") as f:
            json.dump(vars(args), f, indent=2, sort_keys=True, default=str)


def train_diffusion_model(args) -> TrainLoop:
    """scripts/image_train.py: train the class-conditional diffusion UNet."""
    device = dist_util.dev(args.device or None)
    th.manual_seed(args.seed)  # identical initial weights on every rank
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model.to(device)
    if not args.data_dir:
        raise UserError("--data_dir: required (the training folder)")
    dataset = create_dataset(args.data_dir, args.dataset, args.image_size, label_dir=args.label_dir or None)
    sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)
    _write_flags(args, "flags_image_train.json")
    monitor = Monitor.from_args(args, env="image_train") if dist_util.is_main_process() else None
    loop = TrainLoop(model, diffusion, lambda start: _batches(dataset, args, start, args.seed, device),
                     _config(args, args.lr_anneal_steps, anneal=bool(args.lr_anneal_steps)),
                     ema_rate=args.ema_rate, schedule_sampler=sampler, monitor=monitor, device=device)
    logger.log(f"training the diffusion model on {len(dataset)} images, {sum(p.numel() for p in model.parameters())} "
               f"parameters, device {device}, world size {dist_util.get_world_size()}")
    loop.run_loop()
    return loop


def split_by_patient(patients: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed, seeded held-out split of the items (train, val) that keeps every patient on one side:
    ``fraction`` of the patients (at least one), with all their slices, are held out, as
    :func:`prepare.split_patients` splits train from test. Empty val when there is one patient."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction {fraction}: expected 0 <= fraction < 1")
    train_patients, val_patients = split_patients(sorted(set(patients)), fraction, seed)
    if not train_patients or not val_patients:
        return list(range(len(patients))), []
    held_out = set(val_patients)
    return ([i for i, p in enumerate(patients) if p not in held_out],
            [i for i, p in enumerate(patients) if p in held_out])


def train_noisy_classifier(args) -> ClassifierTrainLoop:
    """scripts/classifier_train.py: train the noise-aware classifier (held-out accuracy logged)."""
    device = dist_util.dev(args.device or None)
    th.manual_seed(args.seed)
    classifier, diffusion = create_classifier_and_diffusion(
        **args_to_dict(args, classifier_and_diffusion_defaults().keys()))
    classifier.to(device)
    if not args.data_dir:
        raise UserError("--data_dir: required (the training folder)")
    dataset = create_dataset(args.data_dir, args.dataset, args.image_size, label_dir=args.label_dir or None)
    if args.val_data_dir:
        train_set = dataset
        val_set = create_dataset(args.val_data_dir, args.dataset, args.image_size,
                                 label_dir=args.val_label_dir or None)
    else:
        train_idx, val_idx = split_by_patient(dataset.patients, args.val_fraction, args.seed)
        train_set, val_set = Subset(dataset, train_idx), (Subset(dataset, val_idx) if val_idx else None)

    def make_val():
        return iter(DataLoader(val_set, batch_size=args.batch_size, shuffle=False,
                               collate_fn=collate_training_batch))

    sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)
    _write_flags(args, "flags_classifier_train.json")
    monitor = Monitor.from_args(args, env="classifier_train") if dist_util.is_main_process() else None
    loop = ClassifierTrainLoop(classifier, diffusion, lambda start: _batches(train_set, args, start, args.seed, device),
                               _config(args, args.iterations, anneal=args.anneal_lr), noised=args.noised,
                               make_val_data=make_val if val_set is not None else None,
                               eval_interval=args.eval_interval, schedule_sampler=sampler, monitor=monitor,
                               device=device)
    logger.log(f"training the classifier on {len(train_set)} images "
               f"({len(val_set) if val_set is not None else 0} held out), device {device}")
    loop.run_loop()
    return loop
