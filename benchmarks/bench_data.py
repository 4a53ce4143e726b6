"""Benchmark: the input pipeline, and how long a training step waits for it.

Part ``throughput``: samples per second of the training batch stream (``training_batches``,
shuffled, the order of every trainer) at 256 x 256 x 4 from ``--n_slices`` synthetic BRATS slices
of 240 x 240 (``datasets.synthetic``; four gzipped NIfTI modalities and a seg per slice):

    nifti     the reader of the files (``BRATSDataset``: nibabel and gzip for every item), no workers
    store     the slice store of ``create_dataset``, with 0, 1 and 2 worker processes (``--workers``)

Each path is timed on its second pass over the data and later ones (the first warms the page cache
and starts the workers); the store is built beforehand (its build time is printed). ``x nifti`` is
the ratio to the NIfTI path of the same run. With 0 workers the stream runs in this one process
(with ``--threads 1``, on one core): ``samples/CPU s`` divides by the CPU time the process used,
the rate of one core whatever else the machine runs.

Part ``wait``: the share of a training step of the scaffold (``Trainer.run_loop``, the UNet's and
the classifier's pieces) spent in ``next()`` of its batch stream, i.e. waiting for data, with the
default ``--num_workers`` (-1: min(4, CPUs - 2)), with 0 and 1 worker (``--wait_workers``).
``--preset demo`` (the CPU's default): ``make demo``'s networks on 64 x 64 synthetic slices, batch 8;
``--preset readme`` (the default on CUDA): the original README's networks on 240 x 240 slices padded
to 256, batch 10, with pinned memory and non-blocking copies on CUDA.

    python benchmarks/bench_data.py                          # both parts on the CPU
    python benchmarks/bench_data.py --device cuda --parts wait
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch as th

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _common, and guided_diffusion without an install

from _common import machine_info, pick_device, print_table, write_json  # noqa: E402

from guided_diffusion.datasets.loaders import (  # noqa: E402
    create_dataset,
    create_reader,
    resolve_num_workers,
    training_batches,
)
from guided_diffusion.datasets.synthetic import generate  # noqa: E402
from guided_diffusion.pipeline import presets  # noqa: E402
from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainLoop, TrainLoop  # noqa: E402
from guided_diffusion.pipeline.train import TrainConfig  # noqa: E402
from guided_diffusion.script_util import (  # noqa: E402
    add_dict_to_argparser,
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.util import logger  # noqa: E402
from guided_diffusion.util.flags import RunFlags, TrainFlags  # noqa: E402

PRESETS = {
    "demo": dict(size=64, image_size=64, batch_size=8,
                 flags=presets.preset_text(presets.DEMO_MODEL, presets.DEMO_DIFFUSION, presets.DEMO_CLASSIFIER)),
    "readme": dict(size=240, image_size=256, batch_size=10,
                   flags=f"{presets.MODEL_FLAGS} {presets.DIFFUSION_FLAGS} {presets.CLASSIFIER_FLAGS}"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="throughput,wait", help="throughput, wait or both")
    p.add_argument("--device", default="", help="cpu, cuda (default: cuda when available); the wait part's device")
    p.add_argument("--n_slices", type=int, default=80, help="synthetic slices of each part (240 x 240 in the "
                   "throughput part)")
    p.add_argument("--batch_size", type=int, default=10, help="batch of the throughput part")
    p.add_argument("--workers", default="0,1,2", help="worker processes of the store's stream")
    p.add_argument("--min_seconds", type=float, default=2.0, help="time each store path at least this long")
    p.add_argument("--preset", default="", help="the wait part's networks and data: demo or readme "
                   "(default: demo on the CPU, readme on CUDA)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per network of the wait part "
                   "(default 20 on CUDA, 8 on the CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (workers start, caches warm)")
    p.add_argument("--nets", default="model,classifier", help="the wait part's trainers: model, classifier")
    p.add_argument("--wait_workers", default="-1,0,1", help="the wait part's --num_workers values (-1: the "
                   "default, min(4, CPUs - 2)); repeats after resolving are dropped")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads of this process (workers use 1); "
                   "0 leaves the default. On a shared machine 1 avoids intra-op threads fighting for cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json_out", default="", help="also write the JSON result to this file")
    return p.parse_args(argv)


def _slices(root: str, size: int, n: int) -> str:
    """A folder of ``n`` synthetic BRATS training slices of ``size`` x ``size``."""
    generate(root, dataset="brats", size=size, n_train=n, n_test=4, seed=0)
    return os.path.join(root, "brats", "training")


def _rate(stream, batch_size: int, n_items: int, min_seconds: float) -> tuple[float, float]:
    """Samples per second of wall time and per second of this process's CPU time, over whole passes
    after the first, for at least ``min_seconds``."""
    per_pass = -(-n_items // batch_size)
    for _ in range(per_pass):
        next(stream)
    batches, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        for _ in range(per_pass):
            next(stream)
        batches += per_pass
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return batches * batch_size / elapsed, batches * batch_size / (time.process_time() - cpu_start)


def throughput(args, tmp: str) -> list[dict]:
    folder = _slices(os.path.join(tmp, "throughput"), 240, args.n_slices)
    reader = create_reader(folder, "brats", 256)
    nifti, nifti_cpu = _rate(training_batches(reader, args.batch_size, seed=args.seed), args.batch_size, len(reader),
                             0.0)
    rows = [{"path": "nifti", "workers": 0, "samples_s": nifti, "samples_cpu_s": nifti_cpu}]
    start = time.perf_counter()
    store = create_dataset(folder, "brats", 256)
    build_s = time.perf_counter() - start
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        stream = training_batches(store, args.batch_size, seed=args.seed, num_workers=workers)
        rate, rate_cpu = _rate(stream, args.batch_size, len(store), args.min_seconds)
        del stream
        # with workers the loading runs in other processes: this process's CPU time does not count it
        rows.append({"path": "store", "workers": workers, "samples_s": rate, "build_s": build_s,
                     "samples_cpu_s": rate_cpu if workers == 0 else None})
    for row in rows:
        row["batch_ms"] = 1000 * args.batch_size / row["samples_s"]
        row["x_nifti"] = row["samples_s"] / nifti
        row["x_nifti_cpu"] = None if row["samples_cpu_s"] is None else row["samples_cpu_s"] / nifti_cpu
    return rows


class _Done(Exception):
    pass


class TimedStream:
    """An iterator that records when each ``next()`` started and how long it took; after ``steps``
    batches it stops the training loop (before it saves a checkpoint)."""

    def __init__(self, stream, steps: int):
        self.stream, self.steps, self.starts, self.waits = stream, steps, [], []

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        if len(self.starts) == self.steps:
            self.starts.append(start)
            raise _Done
        item = next(self.stream)
        self.starts.append(start)
        self.waits.append(time.perf_counter() - start)
        return item


def _networks(flags: str):
    defaults = {**model_and_diffusion_defaults(), **classifier_defaults()}
    parser = argparse.ArgumentParser()
    add_dict_to_argparser(parser, defaults)
    parsed = parser.parse_args(flags.split())
    th.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**args_to_dict(parsed, model_and_diffusion_defaults().keys()))
    classifier = create_classifier(**args_to_dict(parsed, classifier_defaults().keys()))
    return model, diffusion, classifier


def wait(args, tmp: str, device: th.device) -> list[dict]:
    preset = PRESETS[args.preset]
    folder = _slices(os.path.join(tmp, "wait"), preset["size"], args.n_slices)
    dataset = create_dataset(folder, "brats", preset["image_size"])
    model, diffusion, classifier = _networks(preset["flags"])
    batch = preset["batch_size"]
    rows = []
    counts = list(dict.fromkeys(resolve_num_workers(int(w)) for w in args.wait_workers.split(",") if w.strip()))
    for kind in [n.strip() for n in args.nets.split(",") if n.strip()]:
        for workers in counts:
            streams = []

            def make_data(start_step: int):
                stream = TimedStream(training_batches(dataset, batch, seed=args.seed, start_step=start_step,
                                                      num_workers=workers, pin_memory=device.type == "cuda"),
                                     args.warmup + args.steps)
                streams.append(stream)
                return stream

            cfg = TrainConfig(TrainFlags(lr=1e-4, log_interval=10**9, save_interval=10**9),
                              RunFlags(log_dir=os.path.join(tmp, f"log-{kind}-{workers}"), seed=args.seed,
                                       progress=False), batch_size=batch, total_steps=0)
            net = (model if kind == "model" else classifier).to(device)
            trainer = (TrainLoop(net, diffusion, make_data, cfg, ema_rate="0.9999", device=device) if kind == "model"
                       else ClassifierTrainLoop(net, diffusion, make_data, cfg, device=device))
            try:
                trainer.run_loop()
            except _Done:
                pass
            timed = streams[-1]
            first, last = args.warmup, args.warmup + args.steps  # step i runs from starts[i] to starts[i + 1]
            total = timed.starts[last] - timed.starts[first]
            waited = sum(timed.waits[first:last])
            steps = last - first
            rows.append({"net": kind, "workers": workers, "default": workers == resolve_num_workers(-1),
                         "step_ms": 1000 * total / steps,
                         "wait_ms": 1000 * waited / steps, "wait_pct": 100 * waited / total})
            del trainer, streams
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.preset = args.preset or ("readme" if device.type == "cuda" else "demo")
    if args.preset not in PRESETS:
        raise SystemExit(f"--preset {args.preset}: expected one of {', '.join(PRESETS)}")
    args.steps = args.steps or (20 if device.type == "cuda" else 8)
    if args.threads:
        th.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result = {"machine": machine_info(device), "args": vars(args)}
    print(f"machine: {result['machine']}")
    tmp = tempfile.mkdtemp(prefix="bench_data-")
    logger.configure(os.path.join(tmp, "log"), stdout=False)  # the trainers' logs stay out of the tables
    try:
        if "throughput" in parts:
            result["throughput"] = throughput(args, tmp)
            print(f"\nthroughput: {args.n_slices} synthetic 240x240 BRATS slices, 256x256x4 samples, batch "
                  f"{args.batch_size}, shuffled, passes after the first (store built in "
                  f"{result['throughput'][-1]['build_s']:.1f} s)")
            print_table(result["throughput"], [("path", "path", "s"), ("workers", "workers", "d"),
                                               ("samples_s", "samples/s", ".0f"), ("batch_ms", "ms/batch", ".2f"),
                                               ("x_nifti", "x nifti", ".1f"),
                                               ("samples_cpu_s", "samples/CPU s", ".0f"),
                                               ("x_nifti_cpu", "x nifti (CPU)", ".1f")])
            write_json(result, args.json_out)
        if "wait" in parts:
            result["wait"] = wait(args, tmp, device)
            preset = PRESETS[args.preset]
            print(f"\nwait: {args.preset} preset ({preset['image_size']}x{preset['image_size']}, batch "
                  f"{preset['batch_size']}) on {device}, {args.steps} steps after {args.warmup}; default workers: "
                  f"{resolve_num_workers(-1)}")
            for row in result["wait"]:
                row["default_text"] = "yes" if row["default"] else ""
            print_table(result["wait"], [("net", "net", "s"), ("workers", "workers", "d"),
                                         ("default_text", "default", "s"), ("step_ms", "ms/step", ".1f"),
                                         ("wait_ms", "waiting ms/step", ".2f"), ("wait_pct", "% waiting", ".2f")])
            write_json(result, args.json_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
