"""Translate a test folder to "healthy" and score the anomaly maps (the paper's pipeline).

For every image: DDIM encoding to noise level L and classifier-guided DDIM decoding
(``--use_ddim True``) or noising plus guided DDPM sampling (``--use_ddim False``),
then the anomaly map |x - x_healthy| summed over channels, its Otsu mask, and the
files of SPEC section 6a (``<id>.npz``, ``<id>.png``, ``metrics.csv``, ``summary.json``).

Reproducibility: each image's noise comes from its own generator seeded by
(``--seed``, image id), so a result does not depend on the batch size, on which
other images share its batch, or on how many processes split the folder.
Images already finished in the output folder are skipped (a rerun resumes).
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable

import torch as th
from torch.utils.data import DataLoader, Subset

from ..anomaly import anomaly_map, otsu_mask
from ..datasets.images import create_dataset
from ..evaluation.results import is_done, save_result, write_metrics
from ..guidance import make_cond_fn
from ..script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from ..util import checkpoint as ckpt
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import ensure_writable_dir
from .train import autocast_for

HEALTHY = 0


def sampling_defaults() -> dict:
    """Flags of the translation script besides the model/classifier/diffusion flags."""
    return dict(
        data_dir="",
        label_dir="",
        output_dir="",
        model_path="",
        classifier_path="",
        classifier_scale=100.0,
        noise_level=500,
        use_ddim=False,
        clip_denoised=True,
        num_samples=-1,
        batch_size=1,
        protocol="paper",
        precision="fp32",
        compile=False,
        channels_last=False,
        num_workers=0,
    )


def image_seed(seed: int, image_id: str) -> int:
    """A stable 62-bit seed per (run seed, image id)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _generators(seed: int, ids, device) -> list[th.Generator]:
    gens = []
    for image_id in ids:
        g = th.Generator(device=device)
        g.manual_seed(image_seed(seed, image_id))
        gens.append(g)
    return gens


def _draw(gens: list[th.Generator], shape, device) -> th.Tensor:
    """One standard-normal draw per image from its own generator: (B, *shape)."""
    return th.stack([th.randn(shape, generator=g, device=device) for g in gens])


def wrap_network(net: th.nn.Module, autocast: Callable, channels_last: bool = False):
    """Call ``net`` under ``autocast`` (and channels-last layout) and return float32 outputs."""

    def call(x, t, **kwargs):
        if channels_last:
            x = x.contiguous(memory_format=th.channels_last)
        with autocast():
            out = net(x, t, **kwargs)
        return out.float()

    return call


def compile_network(net, device: th.device):
    """``torch.compile`` for sampling. On the CPU with inductor freezing: the weights, fixed while
    translating, are folded in as constants and pre-packed for oneDNN (1.19x over eager at 64x64
    with channels-last; benchmarks/RESULTS.md). The compiled network must be called under no_grad.

    Shapes are static (``dynamic=False``): a last, smaller batch gets its own compiled graph instead
    of a dynamic-shape one, which is slower and, with torch 2.13's inductor, can fail to compile."""
    if device.type == "cpu":
        return th.compile(net, dynamic=False, options={"freezing": True})
    return th.compile(net, dynamic=False)


def load_networks(args, device):
    """Build the UNet, its diffusion and the classifier from the flags and load the checkpoints."""
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
    for net, path, flag, what in ((model, args.model_path, "--model_path", "diffusion model"),
                                  (classifier, args.classifier_path, "--classifier_path", "classifier")):
        if not path:
            raise UserError(f"{flag}: required (a {what} checkpoint, e.g. model010000.pt)")
        ckpt.load_state_dict_into(net, path, what)
    for net in (model, classifier):
        net.to(device).eval()
        net.requires_grad_(False)
        if args.channels_last:
            net.to(memory_format=th.channels_last)
    return model, diffusion, classifier


def translate_batch(model_fn, diffusion, cond_fn, x: th.Tensor, ids, *, seed: int, noise_level: int,
                    use_ddim: bool, clip_denoised: bool = True, callback=None, progress: bool = False):
    """Healthy reconstructions of a batch ``x`` (B, C, H, W) in [0, 1]; returns (B, C, H, W)."""
    device = x.device
    gens = _generators(seed, ids, device)
    noise = _draw(gens, x.shape[1:], device)
    kwargs = dict(clip_denoised=clip_denoised, cond_fn=cond_fn, progress=progress, callback=callback,
                  model_kwargs={"y": th.full((x.shape[0],), HEALTHY, dtype=th.long, device=device)},
                  noise_level=noise_level, noise=noise)
    if use_ddim:
        sample, _, _ = diffusion.ddim_sample_loop_known(model_fn, tuple(x.shape), x, **kwargs)
    else:
        sample, _, _ = diffusion.p_sample_loop_known(
            model_fn, tuple(x.shape), x, noise_fn=lambda x_t, t: _draw(gens, x_t.shape[1:], device), **kwargs)
    return sample


def run_translation(args, monitor=None) -> dict | None:
    """Translate ``--data_dir`` into ``--output_dir``; returns the summary on rank 0."""
    if not args.data_dir:
        raise UserError("--data_dir: required (the test folder)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive integer")
    device = dist_util.dev(getattr(args, "device", "") or None)
    model, diffusion, classifier = load_networks(args, device)
    # validate the noise level before any work
    if not 1 <= args.noise_level <= diffusion.num_timesteps:
        raise UserError(f"--noise_level {args.noise_level}: expected 1..{diffusion.num_timesteps} "
                         f"(steps of the process with --timestep_respacing {args.timestep_respacing or 'none'})")
    ensure_writable_dir(args.output_dir, "--output_dir")
    dataset = create_dataset(args.data_dir, args.dataset, args.image_size, label_dir=args.label_dir or None)
    n = len(dataset) if args.num_samples < 0 else min(args.num_samples, len(dataset))
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    ids = dataset.ids
    todo = [i for i in range(rank, n, world) if not is_done(args.output_dir, ids[i])]
    logger.log(f"rank {rank}: {len(todo)} of {n} images to translate ({n - len(todo) if world == 1 else '-'} done)")

    autocast = autocast_for(device, args.precision)
    model_fn = wrap_network(compile_network(model, device) if args.compile else model, autocast, args.channels_last)
    cond_fn = make_cond_fn(classifier, args.classifier_scale, autocast=autocast)
    loader = DataLoader(Subset(dataset, todo), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    every = max(1, int(getattr(args, "visdom_every", 50)))
    seconds, count = 0.0, 0
    bar = None
    if getattr(args, "progress", True) and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="translate", dynamic_ncols=True)
    for x, info in loader:
        x = x.to(device, non_blocking=True)
        batch_ids = list(info["id"])
        callback = None
        if monitor is not None and monitor.enabled:
            monitor.images("input", x[0], title=f"{batch_ids[0]}: input channels")
            if bool(info["has_gt"][0]):
                monitor.image("ground_truth", info["gt"][0], title=f"{batch_ids[0]}: ground truth")

            def callback(out, _id=batch_ids[0]):
                if out["t"] % every == 0:
                    monitor.images("x_t", out["sample"][0].clamp(0, 1),
                                   title=f"{_id}: {out['phase']} t={out['t']}")
        start = time.perf_counter()
        healthy = translate_batch(model_fn, diffusion, cond_fn, x, batch_ids, seed=args.seed,
                                  noise_level=args.noise_level, use_ddim=args.use_ddim,
                                  clip_denoised=args.clip_denoised, callback=callback)
        if device.type == "cuda":
            th.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        count += len(batch_ids)
        amaps = anomaly_map(x.float(), healthy.float()).cpu()  # (B, H, W)
        x_cpu, healthy_cpu = x.float().cpu(), healthy.float().cpu()
        for j, image_id in enumerate(batch_ids):
            amap = amaps[j].numpy()
            gt = info["gt"][j].numpy() if bool(info["has_gt"][j]) else None
            save_result(args.output_dir, image_id, input=x_cpu[j].numpy(), healthy=healthy_cpu[j].numpy(),
                        anomaly=amap, mask=otsu_mask(amap), label=int(info["y"][j]), ground_truth=gt)
        if monitor is not None and monitor.enabled:
            monitor.images("sample", healthy_cpu[0].clamp(0, 1), title=f"{batch_ids[0]}: healthy reconstruction")
            monitor.heatmap("anomaly", amaps[0], title=f"{batch_ids[0]}: anomaly map")
        if bar is not None:
            bar.update(len(batch_ids) * world)
    if bar is not None:
        bar.close()
    dist_util.barrier()
    if rank != 0:
        return None
    flags = {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (str, int, float, bool))}
    extra = {"flags": flags, "device": str(device)}
    if count:
        extra["seconds_per_image"] = seconds / count
        extra["images_timed"] = count
    return write_metrics(args.output_dir, args.protocol, extra_summary=extra)
