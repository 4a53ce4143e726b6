"""One folder-translation loop for every method (SPEC sections 6 and 6a).

A translator (:mod:`guided_diffusion.pipeline.translators`) turns a batch of images into their
healthy reconstructions: guided DDIM (the paper), DDPM, the VAE, FixedPoint-GAN and the
others. :func:`translate_folder` owns everything around it:

* sharding: rank r of N takes images r, r + N, ...; each image is written once;
* resume: images whose ``<id>.npz`` and ``<id>.png`` are complete are skipped (the caller has checked
  that the folder's results were made with the same settings: :mod:`.settings`);
* the progress bar (rank 0), closed before any error reaches the user;
* Visdom: the input channels, the ground truth, intermediate states every ``visdom_every``
  steps, the healthy reconstruction and the anomaly heat map of each batch's first image;
* the anomaly map of each image, made with the loop's map options (``--map_*``,
  :mod:`guided_diffusion.maps`) unless the translator makes its own (an ensemble, with the same options);
* timing (the translator's time per image, synchronised on CUDA), saving
  (:func:`evaluation.results.save_result`), the barrier and, on rank 0, ``metrics.csv``,
  ``summary.json``, the panels with the evaluated masks and ``report.html`` over the whole folder.

:func:`remap_folder` writes a folder whose settings differ from an earlier one's only in the map
options from that folder's saved inputs and healthy reconstructions, translating nothing.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch as th
from torch.utils.data import DataLoader, Dataset, Subset

from ..datasets.loaders import resolve_num_workers
from ..evaluation.protocols import Scoring
from ..evaluation.report import write_run
from ..evaluation.results import SUMMARY_JSON, is_done, load_result, result_map, save_result
from ..maps import MapOptions
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import ensure_writable_dir
from ..util.flags import MapFlags, MonitorFlags, RunFlags, TranslateFlags

Callback = Callable[[dict], None]


class Translator(Protocol):
    """What the loop calls per batch: a batch in, its healthy reconstruction out.

    ``name`` is the method's name in ``summary.json`` and the comparison tables.
    ``__call__(x, ids, callback)``: ``x`` (B, C, H, W) in [0, 1] on the device, ``ids`` the
    images' names (for per-image seeding), ``callback`` an optional function that iterative
    translators call with each step's dict (``sample``, ``t``, ``phase``). Returns the healthy
    reconstruction (B, C, H, W), or (healthy, anomaly (B, H, W)) for a translator that makes its
    own anomaly map (an ensemble's mean map) instead of the loop's map of (x, healthy).
    """

    name: str

    def __call__(self, x: th.Tensor, ids: Sequence[str], callback: Callback | None = None):
        ...


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs besides the translator and the images (defaults: the flag registry's)."""

    output_dir: str
    num_samples: int = TranslateFlags.num_samples
    batch_size: int = 1
    num_workers: int = 0
    scoring: Scoring = field(default_factory=Scoring)  # how metrics.csv and summary.json score the folder
    progress: bool = RunFlags.progress
    visdom_every: int = MonitorFlags.visdom_every
    maps: MapOptions = field(default_factory=MapOptions)  # how each image's anomaly map is made


def map_options(flags: MapFlags) -> MapOptions:
    """The map options of the ``--map_*`` flags."""
    return MapOptions(residual=flags.map_residual, normalise=flags.map_normalise, smooth=flags.map_smooth)


def translate_folder(translator: Translator, dataset: Dataset, cfg: LoopConfig, *, device: th.device, monitor=None,
                     summary: Mapping[str, Any] | None = None) -> dict | None:
    """Translate ``dataset`` with ``translator`` into ``cfg.output_dir`` and score it.

    :param summary: extra keys for ``summary.json`` (the flags); ``method``, ``device``,
        ``images_per_rank`` (the images each rank translated in this run) and ``seconds_per_image``
        are added here.
    :return: the summary on rank 0, None on the other ranks.
    """
    if cfg.batch_size < 1:
        raise UserError(f"--batch_size {cfg.batch_size}: expected a positive integer")
    ensure_writable_dir(cfg.output_dir, "--output_dir")
    n = len(dataset) if cfg.num_samples < 0 else min(cfg.num_samples, len(dataset))
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    ids = dataset.ids
    todo = [i for i in range(rank, n, world) if not is_done(cfg.output_dir, ids[i])]
    logger.log(f"{translator.name}: rank {rank}: {len(todo)} of {n} images to translate "
               f"({n - len(todo) if world == 1 else '-'} done)")
    loader = DataLoader(Subset(dataset, todo), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=resolve_num_workers(cfg.num_workers), pin_memory=device.type == "cuda")
    show = monitor is not None and monitor.enabled
    seconds, count = 0.0, 0
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="translate", dynamic_ncols=True)
    try:
        for x, info in loader:
            x = x.to(device, non_blocking=True)
            batch_ids = list(info["id"])
            callback = _show_inputs(monitor, x, info, cfg.visdom_every) if show else None
            start = time.perf_counter()
            out = translator(x, batch_ids, callback)
            healthy, amaps = out if isinstance(out, tuple) else (out, None)
            if device.type == "cuda":
                th.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            count += len(batch_ids)
            x_cpu, healthy_cpu = x.float().cpu(), healthy.float().cpu()
            first = None
            for j, image_id in enumerate(batch_ids):
                # the map of the stored float32 arrays, so remap_folder makes the same map from the files
                amap = result_map(x_cpu[j].numpy(), healthy_cpu[j].numpy(),
                                  None if amaps is None else amaps[j].float().cpu().numpy(), cfg.maps)
                first = amap if first is None else first
                save_result(cfg.output_dir, image_id, input=x_cpu[j].numpy(), healthy=healthy_cpu[j].numpy(),
                            anomaly=amap, label=int(info["y"][j]),
                            ground_truth=info["gt"][j].numpy() if bool(info["has_gt"][j]) else None,
                            patient=info["patient"][j] or None,
                            slice=int(info["slice"][j]) if int(info["slice"][j]) >= 0 else None)
            if show:
                monitor.images("sample", healthy_cpu[0].clamp(0, 1), title=f"{batch_ids[0]}: healthy reconstruction")
                monitor.heatmap("anomaly", th.from_numpy(first), title=f"{batch_ids[0]}: anomaly map")
            if bar is not None:
                bar.update(len(batch_ids) * world)
    finally:
        if bar is not None:
            bar.close()
    per_rank = dist_util.all_gather_object(count)  # also waits for every rank's files
    if rank != 0:
        return None
    extra = {"method": translator.name, **(summary or {}), "device": str(device), "images_per_rank": per_rank}
    if count:
        extra["seconds_per_image"] = seconds / count
        extra["images_timed"] = count
    return write_run(cfg.output_dir, cfg.scoring, extra)


def _show_inputs(monitor, x: th.Tensor, info: dict, every: int) -> Callback:
    """Show the batch's first input and ground truth; return the callback that shows its states."""
    first = info["id"][0]
    monitor.images("input", x[0], title=f"{first}: input channels")
    if bool(info["has_gt"][0]):
        monitor.image("ground_truth", info["gt"][0], title=f"{first}: ground truth")
    every = max(1, int(every))

    def callback(out: dict) -> None:
        if out["t"] % every == 0:
            monitor.images("x_t", out["sample"][0].clamp(0, 1), title=f"{first}: {out['phase']} t={out['t']}")

    return callback


def remap_folder(source: str, cfg: LoopConfig, *, summary: Mapping[str, Any] | None = None) -> dict | None:
    """Write ``cfg.output_dir``'s results from ``source``'s: each ``<id>.npz``'s input and healthy
    reconstruction, its anomaly map made again with ``cfg.maps``, and score the folder like
    :func:`translate_folder`. For settings that differ from ``source``'s only in the map options (the
    caller checks that, and that ``source`` holds per-image healthy reconstructions, not an ensemble's
    mean), this gives the files a translation would have written, translating nothing.

    :param summary: extra keys for ``summary.json`` (the flags); ``method`` and ``device`` are the
        source's, ``maps_from`` is ``source`` and ``images_per_rank`` the images each rank wrote; there is
        no ``seconds_per_image``, since nothing was translated.
    :return: the summary on rank 0, None on the other ranks.
    """
    ensure_writable_dir(cfg.output_dir, "--output_dir")
    paths = sorted((p for p in Path(source).glob("*.npz") if p.is_file()), key=lambda p: p.stem)
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    count = 0
    for path in paths[rank::world]:
        if is_done(cfg.output_dir, path.stem):
            continue
        r = load_result(path)
        save_result(cfg.output_dir, path.stem, input=r["input"], healthy=r["healthy"],
                    anomaly=result_map(r["input"], r["healthy"], None, cfg.maps), label=r["label"],
                    ground_truth=r["ground_truth"], patient=r["patient"], slice=r["slice"])
        count += 1
    per_rank = dist_util.all_gather_object(count)  # also waits for every rank's files
    if rank != 0:
        return None
    logger.log(f"{cfg.output_dir}: {sum(per_rank)} of {len(paths)} maps made again from {source}'s translation")
    try:
        with open(os.path.join(source, SUMMARY_JSON)) as f:
            translated = json.load(f)
    except (OSError, ValueError):
        translated = {}
    extra = {"method": translated.get("method", ""), **(summary or {}), "device": translated.get("device", ""),
             "maps_from": os.path.abspath(source), "images_per_rank": per_rank}
    return write_run(cfg.output_dir, cfg.scoring, extra)
