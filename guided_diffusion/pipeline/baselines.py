"""Training and translation of the comparison methods (SPEC section 9): the VAE (cAAE,
:mod:`guided_diffusion.methods.vae`) and FixedPoint-GAN (:mod:`guided_diffusion.methods.fpgan`).

The scripts ``vae_train.py``, ``fpgan_train.py``, ``vae_translate.py`` and
``fpgan_translate.py`` are thin wrappers around :func:`train_baseline` and
:func:`translate_folder`.

Training (one process; these networks are small enough for one GPU):

- data: the training folder through :func:`image_datasets.create_dataset`; the VAE sees
  the healthy images (label 0) only, FixedPoint-GAN all of them (it needs both domains).
  Batches follow :class:`image_datasets.ShardedBatchSampler` from the current step, so a
  resumed run sees the batches an uninterrupted run would have seen;
- length: ``--iterations`` when > 0, else ``--epochs`` passes over the training images
  (ceil(epochs * N / batch_size) iterations; N counts the healthy images for the VAE);
- randomness: step k draws from a generator seeded by (``--seed``, k), and the networks
  are initialised from ``--seed``, so a resumed run reaches the same weights as an
  uninterrupted one;
- checkpoints, written atomically every ``--save_interval`` steps and at the end:
  VAE ``model%06d.pt`` (the auto-encoder's state dict), ``zdisc%06d.pt`` (the latent
  discriminator, adversarial prior only) and ``opt%06d.pt``; FixedPoint-GAN
  ``G%06d.pt``, ``D%06d.pt`` and ``opt%06d.pt``. ``opt`` holds the optimiser states and
  the step. The model (VAE) or G (FPGAN) file is written last and marks a complete
  checkpoint. ``--resume_checkpoint`` takes any file of a checkpoint, or ``auto`` (the
  newest complete one in ``--log_dir``);
- logging: the loss terms, averaged over ``--log_interval`` steps, go to the logger
  (``progress.csv``) and, with ``--visdom True``, to Visdom line plots.

Translation writes the files of SPEC section 6a (``<id>.npz``, ``<id>.png``,
``metrics.csv``, ``summary.json`` with ``method``, ``flags`` and
``seconds_per_image``), exactly like ``classifier_sample_known.py``, skipping images
already done.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import torch as th
from torch.utils.data import DataLoader, Subset

from ..anomaly import anomaly_map, otsu_mask
from ..datasets.images import ShardedBatchSampler, create_dataset
from ..evaluation.results import is_done, save_result, write_metrics
from ..methods.fpgan import Discriminator, FPGANStep, Generator, translate_to_healthy
from ..methods.vae import VAE, CAAEStep, LatentDiscriminator, latent_prior_check
from ..script_util import args_to_dict, in_channels_for
from ..util import checkpoint as ckpt
from ..util import dist_util, logger
from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write, ensure_writable_dir

METHODS = ("vae", "fpgan")
METHOD_NAMES = {"vae": "VAE", "fpgan": "FixedPoint-GAN"}
DEFAULT_EPOCHS = {"vae": 500, "fpgan": 150}  # SPEC section 9
# File of a checkpoint that is written last (a complete checkpoint has it) and that
# translation loads.
MARKER = {"vae": "model", "fpgan": "G"}
_ARCH_FLAGS = {
    "vae": "--vae_width, --vae_depth, --latent_dim, --latent_prior, --latent_disc_width, --image_size, --dataset",
    "fpgan": "--fpgan_width, --fpgan_res_blocks, --fpgan_d_width, --fpgan_d_depth, --image_size, --dataset",
}


# ---------------------------------------------------------------------------------
# Flags and factories


def vae_defaults() -> dict:
    """Network flags of the VAE baseline (see :mod:`guided_diffusion.methods.vae`)."""
    return dict(
        image_size=256,
        dataset="brats",
        vae_width=32,
        vae_depth=6,
        latent_dim=128,
        latent_prior="adversarial",
        latent_disc_width=256,
    )


def vae_loss_defaults() -> dict:
    """Loss weights of the VAE baseline (training only)."""
    return dict(kl_weight=1.0, lambda_adv=1.0, lambda_consistency=1.0)


def fpgan_defaults() -> dict:
    """Network flags of FixedPoint-GAN (see :mod:`guided_diffusion.methods.fpgan`)."""
    return dict(
        image_size=256,
        dataset="brats",
        fpgan_width=64,
        fpgan_res_blocks=6,
        fpgan_d_width=64,
        fpgan_d_depth=6,
    )


def fpgan_loss_defaults() -> dict:
    """Loss weights and critic steps of FixedPoint-GAN (training only; SPEC section 9)."""
    return dict(
        lambda_cls=1.0,
        lambda_gp=10.0,
        lambda_rec=10.0,
        lambda_id=10.0,
        n_critic=5,
    )


def baseline_train_defaults(method: str) -> dict:
    """Training flags (batch 10, lr 1e-4, epochs 500 (VAE) or 150 (FPGAN): SPEC section 9)."""
    _check_method(method)
    return dict(
        label_dir="",
        epochs=DEFAULT_EPOCHS[method],
        iterations=0,
        batch_size=10,
        lr=1e-4,
        log_interval=10,
        save_interval=1000,
        resume_checkpoint="",
        num_workers=0,
    )


def baseline_translate_defaults() -> dict:
    """Flags of the translation scripts besides the network flags."""
    return dict(
        label_dir="",
        output_dir="",
        model_path="",
        batch_size=8,
        num_samples=-1,
        protocol="paper",
        num_workers=0,
    )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")


def create_vae(*, image_size: int, dataset: str, vae_width: int, vae_depth: int, latent_dim: int,
               latent_prior: str, latent_disc_width: int) -> tuple[VAE, LatentDiscriminator | None]:
    """The VAE and, for the adversarial prior, its latent discriminator (else None)."""
    variational = latent_prior_check(latent_prior)
    model = VAE(in_channels_for(dataset), image_size, width=vae_width, depth=vae_depth,
                latent_dim=latent_dim, variational=variational)
    disc = None if variational else LatentDiscriminator(latent_dim, latent_disc_width)
    return model, disc


def create_fpgan(*, image_size: int, dataset: str, fpgan_width: int, fpgan_res_blocks: int,
                 fpgan_d_width: int, fpgan_d_depth: int) -> tuple[Generator, Discriminator]:
    """FixedPoint-GAN's generator and discriminator."""
    if image_size < 4 or image_size % 4:
        raise UserError(f"--image_size {image_size}: the FixedPoint-GAN generator needs a multiple of 4")
    channels = in_channels_for(dataset)
    gen = Generator(channels, width=fpgan_width, res_blocks=fpgan_res_blocks)
    disc = Discriminator(channels, image_size, width=fpgan_d_width, depth=fpgan_d_depth)
    return gen, disc


# ---------------------------------------------------------------------------------
# Checkpoints


def _checked_state(module: th.nn.Module, path: str, what: str, method: str) -> dict:
    """Read a state dict and check its keys and shapes against ``module``; a mismatch
    raises a :class:`checkpoint.CheckpointError` naming the file and the flags to check."""
    state = ckpt.load(path)
    ckpt.check_state_dict(module, state, path, what, hint=f"check {_ARCH_FLAGS[method]}")
    return state


@dataclass
class _Parts:
    """What a baseline trains: networks by file prefix (the marker last), optimisers, the step function."""

    method: str
    nets: dict[str, th.nn.Module]
    optimizers: dict[str, th.optim.Optimizer]
    step_fn: Callable[[th.Tensor, th.Tensor, int, th.Generator], dict]
    healthy_only: bool


def _checkpoint_files(parts: _Parts, folder: str, step: int) -> dict[str, str]:
    """prefix -> path of every file of the checkpoint at ``step`` (opt first, marker last)."""
    names = ["opt"] + list(parts.nets)
    return {name: os.path.join(folder, f"{name}{step:06d}.pt") for name in names}


def save_checkpoint(parts: _Parts, folder: str, step: int) -> None:
    """Write the checkpoint files of ``step``; the marker file last."""
    files = _checkpoint_files(parts, folder, step)
    opt_state = {"step": step, **{name: opt.state_dict() for name, opt in parts.optimizers.items()}}
    ckpt.save(opt_state, files["opt"])
    for name, net in parts.nets.items():
        ckpt.save(net.state_dict(), files[name])


def load_checkpoint(parts: _Parts, folder: str, step: int) -> None:
    """Load every file of the checkpoint at ``step``; a bad file leaves ``parts`` untouched."""
    files = _checkpoint_files(parts, folder, step)
    what = METHOD_NAMES[parts.method]
    # read and check everything first, then apply
    states = {name: _checked_state(net, files[name], f"{what} {name}", parts.method)
              for name, net in parts.nets.items()}
    opt_state = ckpt.load(files["opt"])
    if not isinstance(opt_state, dict) or any(not isinstance(opt_state.get(name), dict)
                                              for name in parts.optimizers):
        raise ckpt.CheckpointError(f"{files['opt']}: expected the optimiser states "
                                   f"{', '.join(parts.optimizers)} of a {what} run")
    before = {name: copy.deepcopy(opt.state_dict()) for name, opt in parts.optimizers.items()}
    try:
        for name, opt in parts.optimizers.items():
            opt.load_state_dict(opt_state[name])
    except (ValueError, KeyError, TypeError) as e:
        for name, opt in parts.optimizers.items():
            opt.load_state_dict(before[name])
        raise ckpt.CheckpointError(f"{files['opt']}: the optimiser states do not fit the flags ({e})") from None
    for name, net in parts.nets.items():
        net.load_state_dict(states[name], strict=True)


def _resume(parts: _Parts, spec: str, log_dir: str) -> int:
    """Load the checkpoint named by ``--resume_checkpoint``; return its step (0 if none)."""
    if not spec:
        return 0
    marker = MARKER[parts.method]
    if spec == "auto":
        pattern = re.compile(rf"^{marker}(\d{{6,}})\.pt$")
        steps = sorted((int(m.group(1)) for m in map(pattern.match, os.listdir(log_dir)) if m), reverse=True)
        for step in steps:
            try:
                load_checkpoint(parts, log_dir, step)
                logger.log(f"resumed from step {step} in {log_dir}")
                return step
            except ckpt.CheckpointError as e:
                logger.warn(f"skipping checkpoint: {e}")
        if steps:
            logger.warn(f"no usable checkpoint in {log_dir}; starting from scratch")
        return 0
    if not os.path.isfile(spec):
        raise MissingInputError(f"--resume_checkpoint {spec}: no such file")
    name = os.path.basename(spec)
    prefixes = ["opt"] + list(parts.nets)
    m = re.match(r"^([A-Za-z]+)(\d{6,})\.pt$", name)
    if not m or m.group(1) not in prefixes:
        raise UserError(f"--resume_checkpoint {spec}: expected a file named "
                         f"{' or '.join(p + 'NNNNNN.pt' for p in prefixes)} of a {METHOD_NAMES[parts.method]} run")
    step = int(m.group(2))
    load_checkpoint(parts, os.path.dirname(spec) or ".", step)
    logger.log(f"resumed from {spec} (step {step})")
    return step


# ---------------------------------------------------------------------------------
# Training


def _collate(items):
    images = th.stack([image for image, _ in items])  # (B, C, S, S)
    labels = th.tensor([info["y"] for _, info in items], dtype=th.long)  # (B,)
    return images, labels


def _collate_labels(items):
    return [int(info["y"]) for _, info in items]


def dataset_labels(dataset, num_workers: int = 0) -> list[int]:
    """Label of every item (0 healthy, 1 diseased); read from the items when the data set
    does not list them (BRATS: the label comes from the ground truth)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(y) for y in labels]
    loader = DataLoader(dataset, batch_size=16, num_workers=num_workers, collate_fn=_collate_labels)
    return [y for batch in loader for y in batch]


def _batches(dataset, indices: list[int], batch_size: int, seed: int, start_step: int, num_workers: int):
    sampler = ShardedBatchSampler(len(indices), batch_size, seed=seed, start_step=start_step)
    loader = DataLoader(Subset(dataset, indices), batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=num_workers > 0)
    while True:
        yield from loader


def _step_generator(seed: int, step: int, device: th.device) -> th.Generator:
    gen = th.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step + 1) % (2**63 - 1))
    return gen


def _build(args, method: str, device: th.device) -> _Parts:
    if args.lr <= 0:
        raise UserError(f"--lr {args.lr}: expected a positive learning rate")
    th.manual_seed(args.seed)  # initial weights are a function of --seed
    if method == "vae":
        model, disc = create_vae(**args_to_dict(args, vae_defaults().keys()))
        nets = {"model": model} if disc is None else {"zdisc": disc, "model": model}
        for net in nets.values():
            net.to(device).train()
        stepper = CAAEStep(model, disc, lr=args.lr, kl_weight=args.kl_weight, lambda_adv=args.lambda_adv,
                           lambda_consistency=args.lambda_consistency)
        return _Parts(method, nets, stepper.optimizers(), lambda x, y, step, gen: stepper(x, gen),
                      healthy_only=True)
    gen_net, disc_net = create_fpgan(**args_to_dict(args, fpgan_defaults().keys()))
    gen_net.to(device).train()
    disc_net.to(device).train()
    stepper = FPGANStep(gen_net, disc_net, lr=args.lr, lambda_cls=args.lambda_cls, lambda_gp=args.lambda_gp,
                        lambda_rec=args.lambda_rec, lambda_id=args.lambda_id, n_critic=args.n_critic)
    return _Parts(method, {"D": disc_net, "G": gen_net}, stepper.optimizers(), stepper, healthy_only=False)


def _total_steps(args, n_images: int) -> int:
    if args.iterations < 0:
        raise UserError(f"--iterations {args.iterations}: expected 0 (use --epochs) or more")
    if args.iterations > 0:
        return args.iterations
    if args.epochs <= 0:
        raise UserError(f"--epochs {args.epochs}: expected a positive number (or set --iterations)")
    return math.ceil(args.epochs * n_images / args.batch_size)


def _write_flags(args, method: str) -> None:
    with atomic_write(os.path.join(args.log_dir, f"flags_{method}_train.json"), "w") as f:
        json.dump(vars(args), f, indent=2, sort_keys=True, default=str)


def train_baseline(args, method: str, monitor=None) -> dict:
    """Train the VAE (``method="vae"``) or FixedPoint-GAN (``"fpgan"``) from parsed flags.

    :return: ``{"step": final step, "checkpoint": path of the final marker file,
        "last": the last logged loss means}``.
    """
    _check_method(method)
    if not args.data_dir:
        raise UserError("--data_dir: required (the training folder)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive integer")
    if args.log_interval < 1 or args.save_interval < 1:
        raise UserError(f"--log_interval {args.log_interval} / --save_interval {args.save_interval}: "
                         "expected positive step counts")
    device = dist_util.dev(args.device or None)
    dataset = create_dataset(args.data_dir, args.dataset, args.image_size, label_dir=args.label_dir or None)
    parts = _build(args, method, device)
    labels = dataset_labels(dataset, args.num_workers)
    if parts.healthy_only:
        indices = [i for i, y in enumerate(labels) if y == 0]
        if not indices:
            raise UserError(f"--data_dir {args.data_dir}: no healthy (label 0) images to train the "
                             f"{METHOD_NAMES[method]} on")
    else:
        indices = list(range(len(dataset)))
        if len(set(labels)) < 2:
            logger.warn(f"--data_dir {args.data_dir}: only one class present; FixedPoint-GAN needs "
                        "healthy and diseased images to learn the translation")
    total = _total_steps(args, len(indices))
    step = _resume(parts, args.resume_checkpoint, args.log_dir)
    _write_flags(args, method)
    params = sum(p.numel() for net in parts.nets.values() for p in net.parameters())
    logger.log(f"training {METHOD_NAMES[method]} on {len(indices)} of {len(dataset)} images "
               f"({'healthy only' if parts.healthy_only else 'both classes'}), {params} parameters, "
               f"{total} iterations (batch {args.batch_size}), device {device}, from step {step}")

    data = _batches(dataset, indices, args.batch_size, args.seed, step, args.num_workers)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    last: dict[str, float] = {}
    bar = None
    if getattr(args, "progress", True) and step < total:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=step, desc=f"train {method}", dynamic_ncols=True)

    def log_now():
        nonlocal sums, counts, last
        if not sums:
            return
        last = {k: sums[k] / counts[k] for k in sums}
        for k, v in sorted(last.items()):
            logger.logkv(k, v)
        logger.logkv("step", step)
        logger.logkv("epoch", step * args.batch_size / len(indices))
        logger.dumpkvs()
        if monitor is not None:
            monitor.line(f"{method}_loss", step, last, title=f"{METHOD_NAMES[method]} training losses")
        sums, counts = {}, {}

    try:
        while step < total:
            x, y = next(data)
            x, y = x.to(device), y.to(device)
            terms = parts.step_fn(x, y, step, _step_generator(args.seed, step, device))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            step += 1
            if bar is not None:
                bar.update(1)
            if step % args.log_interval == 0:
                log_now()
                if monitor is not None and monitor.enabled:
                    _show(monitor, parts, x, method)
            if step % args.save_interval == 0:
                save_checkpoint(parts, args.log_dir, step)
        log_now()
    finally:
        if bar is not None:
            bar.close()
    marker = os.path.join(args.log_dir, f"{MARKER[method]}{step:06d}.pt")
    if not os.path.isfile(marker):
        save_checkpoint(parts, args.log_dir, step)
    logger.log(f"saved {marker}")
    return {"step": step, "checkpoint": marker, "last": last}


@th.no_grad()
def _show(monitor, parts: _Parts, x: th.Tensor, method: str) -> None:
    """Visdom: the first image of the batch and its healthy translation."""
    net = parts.nets[MARKER[method]]
    net.eval()
    healthy = _healthy(net, x[:1], method)
    net.train()
    monitor.images("input", x[0], title="training input")
    monitor.images("healthy", healthy[0], title=f"{METHOD_NAMES[method]}: healthy translation")


# ---------------------------------------------------------------------------------
# Translation


def _healthy(net: th.nn.Module, x: th.Tensor, method: str) -> th.Tensor:
    if method == "vae":
        return net.reconstruct(x)
    return translate_to_healthy(net, x)


def load_translator(args, method: str, device: th.device) -> th.nn.Module:
    """The network that translates to healthy (the VAE, or FPGAN's G) with ``--model_path`` loaded."""
    _check_method(method)
    if not args.model_path:
        raise UserError(f"--model_path: required (a {MARKER[method]}NNNNNN.pt checkpoint of "
                         f"{method}_train.py)")
    if method == "vae":
        net, _ = create_vae(**args_to_dict(args, vae_defaults().keys()))
    else:
        net, _ = create_fpgan(**args_to_dict(args, fpgan_defaults().keys()))
    net.load_state_dict(_checked_state(net, args.model_path, METHOD_NAMES[method], method), strict=True)
    net.to(device).eval()
    net.requires_grad_(False)
    return net


def translate_folder(args, method: str, monitor=None) -> dict:
    """Translate ``--data_dir`` to healthy with the VAE or FPGAN and score it into ``--output_dir``.

    Writes ``<id>.npz``/``<id>.png`` per image (skipping finished ones), then
    ``metrics.csv`` and ``summary.json`` (with ``method``, ``flags``, ``device`` and
    ``seconds_per_image``, the network time per image). Returns the summary.
    """
    _check_method(method)
    if not args.data_dir:
        raise UserError("--data_dir: required (the test folder)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive integer")
    if not args.output_dir:
        raise UserError("--output_dir: required (the folder for the results)")
    device = dist_util.dev(args.device or None)
    net = load_translator(args, method, device)
    ensure_writable_dir(args.output_dir, "--output_dir")
    dataset = create_dataset(args.data_dir, args.dataset, args.image_size, label_dir=args.label_dir or None)
    n = len(dataset) if args.num_samples < 0 else min(args.num_samples, len(dataset))
    ids = dataset.ids
    todo = [i for i in range(n) if not is_done(args.output_dir, ids[i])]
    logger.log(f"{METHOD_NAMES[method]}: {len(todo)} of {n} images to translate ({n - len(todo)} done)")

    loader = DataLoader(Subset(dataset, todo), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers)
    seconds, count = 0.0, 0
    for x, info in loader:
        x = x.to(device)
        start = time.perf_counter()
        with th.no_grad():
            healthy = _healthy(net, x, method)
        if device.type == "cuda":
            th.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        count += x.shape[0]
        amaps = anomaly_map(x.float(), healthy.float()).cpu().numpy()  # (B, H, W)
        x_cpu, healthy_cpu = x.float().cpu().numpy(), healthy.float().cpu().numpy()
        for j, image_id in enumerate(info["id"]):
            gt = info["gt"][j].numpy() if bool(info["has_gt"][j]) else None
            save_result(args.output_dir, image_id, input=x_cpu[j], healthy=healthy_cpu[j], anomaly=amaps[j],
                        mask=otsu_mask(amaps[j]), label=int(info["y"][j]), ground_truth=gt)
        if monitor is not None and monitor.enabled:
            monitor.images("input", x_cpu[0], title=f"{info['id'][0]}: input channels")
            monitor.images("sample", healthy_cpu[0], title=f"{info['id'][0]}: healthy translation")
            monitor.heatmap("anomaly", amaps[0], title=f"{info['id'][0]}: anomaly map")
    flags = {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (str, int, float, bool))}
    extra = {"method": METHOD_NAMES[method], "flags": flags, "device": str(device)}
    if count:
        extra["seconds_per_image"] = seconds / count
        extra["images_timed"] = count
    return write_metrics(args.output_dir, args.protocol, extra_summary=extra)
