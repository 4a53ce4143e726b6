"""Benchmark: training steps of the diffusion UNet and of the noise-aware classifier.

The measured step is the product's step: ``TrainLoop.run_step`` / ``ClassifierTrainLoop.run_step``
(forward, hybrid or cross-entropy loss, backward, AdamW, EMA for the UNet) of trainers built
exactly as the training scripts build them, fed by an in-memory iterator of random batches
(images in [0, 1], labels 0/1). Paths (``--paths``):

    fp32      float32, eager (the baseline of every ratio)
    bf16      bfloat16 autocast
    fp16      float16 autocast + GradScaler
    cl        float32, channels-last memory layout (weights and batches)
    compile   float32, torch.compile of the network (``--compile`` of the scripts)

Every path starts from the same initial weights and sees the same batches, timesteps and noise,
so the loss of its first step is comparable with the fp32 one ("loss diff").

    python benchmarks/bench_train.py --tiny                   # seconds on a CPU
    python benchmarks/bench_train.py                           # README presets, 64x64 on a CPU
    python benchmarks/bench_train.py --device cuda             # 256x256, batch 10
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile

import torch as th

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _common, and guided_diffusion without an install

from _common import (  # noqa: E402
    PeakMemory,
    add_network_flags,
    build_networks,
    machine_info,
    network_flags,
    now,
    pick_device,
    print_table,
    write_json,
)

import torch.nn.functional as F  # noqa: E402

from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainLoop, TrainLoop  # noqa: E402
from guided_diffusion.pipeline.train import TrainConfig, dropout_seed  # noqa: E402
from guided_diffusion.util.flags import ClassifierTrainFlags, RunFlags, SpeedFlags, TrainFlags  # noqa: E402

ALL_PATHS = ("fp32", "bf16", "fp16", "cl", "compile")
# --strict: the most a path's first-step loss may differ from the fp32 one, relative to it
TOLERANCES = {"cl": 1e-3, "compile": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_flags(p)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--nets", default="model,classifier", help="which trainers to time: model, classifier")
    p.add_argument("--paths", default="", help=f"comma-separated subset of {','.join(ALL_PATHS)} "
                   "(default: fp32,bf16,cl on the CPU; all on CUDA)")
    p.add_argument("--batch_size", type=int, default=0, help="default 10 on CUDA (TRAIN_FLAGS), 2 on the CPU")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=0, help="timed steps per path (default 20 on CUDA, 3 on the CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5 on CUDA, 1 on the CPU; "
                   "at least 1, 3 with compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU); 0 leaves the default")
    p.add_argument("--overhead", default="True", help="also measure the scaffold against the bare step (True/False)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the scaffold-overhead measurement")
    p.add_argument("--strict", default="False", help="True: exit with status 1 when a path failed, its loss "
                   "differs beyond its tolerance, or the scaffold costs more than 3 %% over the bare step")
    p.add_argument("--json_out", default="", help="also write the JSON result to this file")
    return p.parse_args(argv)


def resolve(args, device):
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (10 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup or (5 if cuda else 1)
    if not args.paths:
        args.paths = ",".join(ALL_PATHS) if cuda else "fp32,bf16,cl"
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = [s for s in paths if s not in ALL_PATHS]
    if unknown:
        raise SystemExit(f"--paths {args.paths}: unknown {unknown}; expected a subset of {','.join(ALL_PATHS)}")
    if "fp32" not in paths:
        paths.insert(0, "fp32")
    args.path_list = paths
    nets = [s.strip() for s in args.nets.split(",") if s.strip()]
    if not nets or any(n not in ("model", "classifier") for n in nets):
        raise SystemExit(f"--nets {args.nets}: expected model, classifier or both")
    args.net_list = nets
    return args


def random_batches(n_channels: int, size: int, batch_size: int, device, seed: int):
    """``make_data`` for the trainers: an endless iterator of (images (B, C, H, W) in [0, 1], {"y": (B,)}).

    A few fixed batches are cycled so that the data costs nothing and every path sees the same ones."""
    gen = th.Generator().manual_seed(seed)
    bank = [(th.rand((batch_size, n_channels, size, size), generator=gen),
             th.randint(0, 2, (batch_size,), generator=gen)) for _ in range(4)]
    bank = [(x.to(device), y.to(device)) for x, y in bank]

    def make_data(start: int):
        i = start
        while True:
            x, y = bank[i % len(bank)]
            yield x, {"y": y}
            i += 1

    return make_data


def run_path(kind: str, name: str, net0, diffusion, args, device, log_dir: str) -> dict:
    net = copy.deepcopy(net0).train().requires_grad_(True)
    channels_last = name == "cl"
    if channels_last:
        net = net.to(memory_format=th.channels_last)
    precision = name if name in ("bf16", "fp16") else "fp32"
    cfg = TrainConfig(TrainFlags(lr=args.lr, log_interval=10**9, save_interval=10**9),
                      RunFlags(log_dir=log_dir, seed=args.seed, progress=False),
                      SpeedFlags(precision=precision, compile=name == "compile"), batch_size=args.batch_size)
    make_data = random_batches(net0.in_channels, args.image_size, args.batch_size, device, args.seed)
    if kind == "model":
        trainer = TrainLoop(net, diffusion, make_data, cfg, ema_rate="0.9999", device=device)
    else:
        trainer = ClassifierTrainLoop(net, diffusion, make_data, cfg, device=device)

    def step():
        batch, cond = next(trainer.data)
        if channels_last:
            batch = batch.contiguous(memory_format=th.channels_last)
        th.manual_seed(dropout_seed(args.seed, trainer.step, 0))  # as run_loop does (dropout)
        trainer.run_step(batch, cond)
        trainer.step += 1

    warmup = max(args.warmup, 3 if name == "compile" else 1)
    start = now(device)
    step()
    first_loss = (trainer._sums["loss"] / trainer._counts["loss"]).item()  # the product's device-side sums
    for _ in range(warmup - 1):
        step()
    warmup_s = now(device) - start
    with PeakMemory(device) as mem:
        start = now(device)
        for _ in range(args.steps):
            step()
        seconds = now(device) - start
    ms = 1000 * seconds / args.steps
    return {"net": kind, "path": name, "desc": f"{precision}{', channels_last' if channels_last else ''}"
            f"{', compiled' if name == 'compile' else ''}", "ms_per_step": ms,
            "images_per_s": args.batch_size * 1000 / ms, "peak_mib": mem.peak_mib, "memory_kind": mem.kind,
            "first_loss": first_loss, "warmup_s": warmup_s}


def bare_step_fn(kind: str, net, diffusion, args, device):
    """The bare training step, written out here without the scaffold: forward, loss, backward and
    the AdamW step (and the EMA update of the UNet), on the trainer's data and draws."""
    opt = th.optim.AdamW(net.parameters(), lr=args.lr, fused=device.type == "cuda")
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    gen = th.Generator(device=device).manual_seed(args.seed)
    make_data = random_batches(net.in_channels, args.image_size, args.batch_size, device, args.seed)(0)

    def step():
        x, cond = next(make_data)
        t = th.randint(0, diffusion.num_timesteps, (x.shape[0],), generator=gen, device=device)
        noise = th.randn(x.shape, generator=gen, device=device)
        if kind == "model":
            loss = diffusion.training_losses(net, x, t, model_kwargs=cond, noise=noise)["loss"].mean()
        else:
            loss = F.cross_entropy(net(diffusion.q_sample(x, t, noise=noise), t), cond["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kind == "model":
            th._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.9999)

    return step


def scaffold_overhead(kind: str, net0, diffusion, args, device, log_dir: str) -> dict:
    """ms per step of the bare step and of the scaffold's loop (Trainer.run_loop on the same data),
    in interleaved rounds, and the share of the periodic work at the flags' default intervals:
    held-out evaluation (classifier), logging, checkpointing."""
    bare = bare_step_fn(kind, copy.deepcopy(net0).train().requires_grad_(True), diffusion, args, device)
    net = copy.deepcopy(net0).train().requires_grad_(True)
    cfg = TrainConfig(TrainFlags(lr=args.lr, log_interval=10**9, save_interval=10**9),
                      RunFlags(log_dir=log_dir, seed=args.seed, progress=False), batch_size=args.batch_size)
    make_data = random_batches(net0.in_channels, args.image_size, args.batch_size, device, args.seed)
    if kind == "model":
        trainer = TrainLoop(net, diffusion, make_data, cfg, ema_rate="0.9999", device=device)
    else:  # the held-out batches as classifier_train.py gives them: batches of --batch_size
        trainer = ClassifierTrainLoop(net, diffusion, make_data, cfg, make_val_data=lambda: make_data(10**6),
                                      eval_interval=0, device=device)
    for _ in range(args.warmup):
        bare()
    trainer.cfg = dataclasses.replace(trainer.cfg, total_steps=args.warmup)
    trainer.run_loop()
    bare_ms, loop_ms = [], []
    for _ in range(args.rounds):
        start = now(device)
        for _ in range(args.steps):
            bare()
        bare_ms.append(1000 * (now(device) - start) / args.steps)
        trainer.cfg = dataclasses.replace(trainer.cfg, total_steps=trainer.step + args.steps)
        start = now(device)
        trainer.run_loop()  # ends with a checkpoint: timed below and taken off
        loop_s = now(device) - start
        start = now(device)
        trainer.save()
        save_s = now(device) - start
        loop_ms.append(1000 * (loop_s - save_s) / args.steps)
    step_ms = sorted(loop_ms)[len(loop_ms) // 2]
    row = {"net": kind, "bare_ms": sorted(bare_ms)[len(bare_ms) // 2], "scaffold_ms": step_ms,
           "bare_rounds": bare_ms, "scaffold_rounds": loop_ms}
    row["scaffold_vs_bare"] = row["scaffold_ms"] / row["bare_ms"]
    # periodic work, each timed on its own and spread over its default interval
    for _ in range(TrainFlags.log_interval):  # what a log step averages
        trainer.run_step(*next(trainer.data))
    start = now(device)
    trainer.log_step()
    row["log_share"] = 1000 * (now(device) - start) / TrainFlags.log_interval / step_ms
    start = now(device)
    trainer.save()
    row["checkpoint_share"] = 1000 * (now(device) - start) / TrainFlags.save_interval / step_ms
    row["eval_share"] = 0.0
    if kind == "classifier":
        trainer.evaluate()  # the first reads the held-out batches once
        start = now(device)
        trainer.evaluate()
        row["eval_ms"] = 1000 * (now(device) - start)
        row["eval_share"] = row["eval_ms"] / ClassifierTrainFlags.eval_interval / step_ms
    row["scaffold_at_defaults_vs_bare"] = (row["scaffold_vs_bare"]
                                           * (1 + row["log_share"] + row["checkpoint_share"] + row["eval_share"]))
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        th.set_num_threads(args.threads)
    args = resolve(args, device)
    flags = network_flags(args, device)
    args.image_size = flags["image_size"]
    model, diffusion, classifier = build_networks(flags, device, seed=args.seed)
    info = machine_info(device)
    gpu = f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else ""
    print(f"training benchmark on {info['device']}{gpu}"
          + f"; CPU {info['cpu']}, {info['cpu_count']} cores, {info['threads']} threads; torch {info['torch']}; "
          f"load {info['loadavg_1m']}")
    print(f"networks: {'tiny' if args.tiny else 'README presets'}, batch ({args.batch_size}, {model.in_channels}, "
          f"{args.image_size}, {args.image_size}); UNet {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"params (hybrid loss, learn_sigma {flags['learn_sigma']}, EMA 0.9999), classifier "
          f"{sum(p.numel() for p in classifier.parameters()) / 1e6:.2f} M params; AdamW lr {args.lr}"
          f"{' (fused)' if device.type == 'cuda' else ''}; {args.warmup} warm-up + {args.steps} timed steps")
    result = {"benchmark": "train", **info, "image_size": args.image_size, "tiny": args.tiny,
              "num_channels": flags["num_channels"], "batch_size": args.batch_size, "steps": args.steps,
              "rows": []}
    rows = result["rows"]
    base = {}
    with tempfile.TemporaryDirectory() as log_dir:
        # paths outermost: the slow compile paths of both networks come last
        for name in args.path_list:
            for kind in args.net_list:
                net0 = model if kind == "model" else classifier
                try:
                    r = run_path(kind, name, net0, diffusion, args, device, log_dir)
                except Exception as e:  # a path that cannot run here does not stop the others
                    if name == "fp32":
                        raise
                    print(f"{kind} {name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    rows.append({"net": kind, "path": name, "error": f"{type(e).__name__}: {e}"[:300]})
                    write_json(result, args.json_out)
                    continue
                b = base.setdefault(kind, r)
                r["loss_diff"] = abs(r["first_loss"] - b["first_loss"])
                r["speedup"] = b["ms_per_step"] / r["ms_per_step"]
                rows.append(r)
                write_json(result, args.json_out)  # after every path: a run cut short keeps what it measured
                print(f"  {kind} {name}: {r['ms_per_step']:.1f} ms/step, x{r['speedup']:.2f}", flush=True)
        if args.overhead.lower() in ("true", "1", "yes"):
            result["overhead"] = []
            for kind in args.net_list:
                net0 = model if kind == "model" else classifier
                r = scaffold_overhead(kind, net0, diffusion, args, device, log_dir)
                result["overhead"].append(r)
                write_json(result, args.json_out)
            print("\nscaffold against the bare step (median of interleaved rounds; shares of a step at the "
                  f"default intervals: log every {TrainFlags.log_interval}, checkpoint every "
                  f"{TrainFlags.save_interval}, held-out evaluation every {ClassifierTrainFlags.eval_interval})")
            print_table(result["overhead"], [("net", "net", "s"), ("bare_ms", "bare ms", ".1f"),
                                             ("scaffold_ms", "scaffold ms", ".1f"),
                                             ("scaffold_vs_bare", "scaffold/bare", ".3f"),
                                             ("eval_share", "eval share", ".2%"), ("log_share", "log share", ".2%"),
                                             ("checkpoint_share", "ckpt share", ".3%"),
                                             ("scaffold_at_defaults_vs_bare", "all/bare", ".3f")])
    rows.sort(key=lambda r: args.net_list.index(r["net"]))
    ok = [r for r in rows if "error" not in r]
    print()
    print_table(ok, [("net", "net", "s"), ("path", "path", "s"), ("desc", "dtype, mode", "s"),
                     ("ms_per_step", "ms/step", ".1f"), ("images_per_s", "images/s", ".2f"),
                     ("peak_mib", "peak MiB", ".0f"), ("first_loss", "loss@1", ".5f"),
                     ("loss_diff", "loss diff", ".2e"), ("speedup", "x fp32", ".2f")])
    result["loadavg_1m_end"] = os.getloadavg()[0]
    if ok:
        print(f"peak memory: {ok[0]['memory_kind']}; loss diff: |first-step loss - fp32 first-step loss|; "
              f"load average {info['loadavg_1m']:.2f} at the start, {result['loadavg_1m_end']:.2f} at the end")
    failures = [f"{r['net']} {r['path']}: {r['error']}" for r in rows if "error" in r]
    for r in ok:
        tol = TOLERANCES.get(r["path"])
        if tol is not None and r["loss_diff"] > tol * abs(base[r["net"]]["first_loss"]):
            failures.append(f"{r['net']} {r['path']}: first-step loss differs by {r['loss_diff']:.2e} from fp32 "
                            f"(at most {tol:g} of it)")
    for r in result.get("overhead", []):
        if r["scaffold_at_defaults_vs_bare"] > 1.03:
            failures.append(f"{r['net']}: the scaffold step at the default intervals costs "
                            f"{r['scaffold_at_defaults_vs_bare']:.3f} x the bare step (at most 1.03)")
    result["failures"] = failures
    write_json(result, args.json_out)
    print(json.dumps(result))
    for line in failures:
        print(f"FAILED {line}")
    if failures and args.strict.lower() in ("true", "1", "yes"):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
