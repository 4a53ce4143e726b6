"""Benchmark: translation to "healthy" (SPEC section 3) with several execution paths, side by side.

Every path translates the same ``--n_images`` random slices in [0, 1] with the same networks
(seeded random weights, or checkpoints) through ``translate.translate_batch``, so every image
gets the same noise on every path. Paths (``--paths``, comma-separated):

    base      fp32, eager, one image per call: the original's way (the baseline of every ratio)
    batch     fp32, eager, ``--batch_size`` images per call
    cl        batch + channels-last memory layout
    bf16      batch + bfloat16 autocast (UNet and classifier)
    fp16      batch + float16 autocast
    compile   batch + torch.compile of the UNet (``--compile_mode``, as --compile in the script)
    graphs    batch + torch.compile(mode="reduce-overhead"): CUDA graphs (CUDA only)

For each path it prints seconds per slice, images/s, peak memory, the largest |difference| of
the healthy output from the baseline's, the fraction of pixels whose Otsu mask (of the anomaly
map) differs from the baseline's, and the speed ratio to the baseline; then one JSON line.

    python benchmarks/bench_translate.py --tiny                      # a minute on a CPU
    python benchmarks/bench_translate.py --timestep_respacing ddim100 --noise_level 10 --n_images 8
    python benchmarks/bench_translate.py --device cuda               # 256x256, L=500 of ddim1000
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import numpy as np
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

from guided_diffusion.anomaly import anomaly_map, otsu_mask  # noqa: E402
from guided_diffusion.guidance import classifier_guided  # noqa: E402
from guided_diffusion.pipeline.devices import autocast_for, wrap_network  # noqa: E402
from guided_diffusion.pipeline.translators import TranslationOptions, image_noise, translate_batch  # noqa: E402
from guided_diffusion.script_util import str2bool  # noqa: E402

ALL_PATHS = ("base", "batch", "cl", "bf16", "fp16", "compile", "compile_cl", "graphs")
# --strict: the most a path may differ from the base path (max |diff| of the healthy output, fraction of
# Otsu-mask pixels that differ); fp32 paths allow for TF32 convolutions on CUDA and other kernels
TOLERANCES = {"batch": (2e-2, 0.01), "cl": (2e-2, 0.01), "compile": (2e-2, 0.01), "compile_cl": (2e-2, 0.01),
              "graphs": (2e-2, 0.01), "bf16": (0.15, 0.05), "fp16": (0.15, 0.05)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_flags(p)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--paths", default="", help=f"comma-separated subset of {','.join(ALL_PATHS)} "
                   "(default: base,batch,cl,bf16 on the CPU; all but compile_cl on CUDA)")
    p.add_argument("--n_images", type=int, default=0, help="slices to translate per path (default 8; 4 with --tiny)")
    p.add_argument("--batch_size", type=int, default=0, help="images per call of the batched paths "
                   "(default: n_images)")
    p.add_argument("--noise_level", type=int, default=0, help="L (default 500 on CUDA, 10 on the CPU)")
    p.add_argument("--classifier_scale", type=float, default=100.0)
    p.add_argument("--use_ddim", type=str2bool, default=True, help="False: the DDPM variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup_level", type=int, default=3,
                   help="noise level of the untimed warm-up translation of every path (and batch shape)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed rounds over all paths (interleaved); the fastest time of each path is kept")
    p.add_argument("--compile_mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode of the 'compile' path (e.g. default, max-autotune-no-cudagraphs)")
    p.add_argument("--freezing", type=str2bool, default=False,
                   help="compile path: inductor freezing (weights folded in as constants and pre-packed; "
                   "inference only, the UNet's parameters need no gradient)")
    p.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                   help="CUDA: TensorFloat-32 for fp32 convolutions/matmuls (default: torch's own setting, "
                   "convolutions on, matmuls off)")
    p.add_argument("--compile_classifier", type=str2bool, default=False,
                   help="also compile the classifier in the compile/graphs paths (the script does not)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU); 0 leaves the default")
    p.add_argument("--profile", default="", help="run this one path once under torch.profiler and print "
                   "the top operators instead of timing")
    p.add_argument("--overhead", action="store_true",
                   help="time the diffusion loop alone: trivial networks (eps = 0.1 x, a linear classifier), "
                   "microseconds per step at batch 1 and --batch_size")
    p.add_argument("--strict", type=str2bool, default=False,
                   help="exit with status 1 when a path failed or differs from base beyond its tolerance")
    p.add_argument("--tolerance_scale", type=float, default=1.0, help="multiply every tolerance (tests use 0)")
    p.add_argument("--json_out", default="", help="also write the JSON result to this file")
    args = p.parse_args(argv)
    return args


def resolve(args: argparse.Namespace, device: th.device) -> argparse.Namespace:
    """Fill the device-dependent defaults."""
    cuda = device.type == "cuda"
    if not args.timestep_respacing:
        # SAMPLE_FLAGS use ddim1000; on a CPU that is hours, so a 100-step process by default
        args.timestep_respacing = "ddim1000" if cuda else "ddim100"
    if not args.noise_level:
        args.noise_level = 500 if cuda else (5 if args.tiny else 10)
    if not args.n_images:
        args.n_images = 4 if args.tiny else 8
    if not args.batch_size:
        args.batch_size = args.n_images
    if not args.paths:
        args.paths = ",".join(p for p in ALL_PATHS if p != "compile_cl") if cuda else "base,batch,cl,bf16"
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = [s for s in paths if s not in ALL_PATHS]
    if unknown:
        raise SystemExit(f"--paths {args.paths}: unknown {unknown}; expected a subset of {','.join(ALL_PATHS)}")
    if "graphs" in paths and not cuda:
        print("note: skipping path 'graphs' (CUDA graphs need a CUDA device)")
        paths.remove("graphs")
    if "base" not in paths:
        paths.insert(0, "base")  # every ratio and difference is against it
    args.path_list = paths
    return args


class _GraphedModel:
    """Calls a torch.compile(mode="reduce-overhead") network: marks each call as a new CUDA-graph
    step and copies the output out of the graph's static buffer before the next replay."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, t, **kwargs):
        th.compiler.cudagraph_mark_step_begin()
        return self.net(x, t, **kwargs).clone()


def make_path(name: str, model, classifier, args, device):
    """(the classifier-guided network, images per call, description) of one path."""
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(name, "fp32")
    autocast = autocast_for(device, precision)
    channels_last = name in ("cl", "compile_cl")
    net, clf = model, classifier
    if channels_last:
        net = copy.deepcopy(model).to(memory_format=th.channels_last)
        clf = copy.deepcopy(classifier).to(memory_format=th.channels_last)
    desc = f"{precision}, {'eager' if name not in ('compile', 'compile_cl', 'graphs') else 'compiled'}"
    if name in ("compile", "compile_cl"):
        options = {"freezing": True} if args.freezing else None
        net = th.compile(net, mode=None if options else args.compile_mode, options=options)
        if args.compile_classifier:
            clf = th.compile(clf, mode=args.compile_mode)
        also = ", classifier too" if args.compile_classifier else ""
        desc += f" ({'freezing' if options else args.compile_mode}{also})"
    elif name == "graphs":
        net = _GraphedModel(th.compile(model, mode="reduce-overhead"))
        if args.compile_classifier:
            clf = th.compile(classifier, mode="max-autotune-no-cudagraphs")
        desc += " (reduce-overhead: CUDA graphs)"
    if channels_last:
        desc += ", channels_last"
    guided = classifier_guided(wrap_network(net, autocast, channels_last), clf, args.classifier_scale,
                               autocast=autocast)
    per_call = 1 if name == "base" else args.batch_size
    return guided, per_call, desc


def translate_all(guided, diffusion, x, ids, per_call, args, noise_level):
    out = []
    options = TranslationOptions(noise_level, use_ddim=args.use_ddim)
    for i in range(0, x.shape[0], per_call):
        noise = image_noise(args.seed, ids[i:i + per_call], x.device)
        out.append(translate_batch(guided, diffusion, x[i:i + per_call], noise, options))
    return th.cat(out)


def masks_of(x: th.Tensor, healthy: th.Tensor) -> np.ndarray:
    amaps = anomaly_map(x.float().cpu(), healthy.float().cpu()).numpy()  # (B, H, W)
    return np.stack([otsu_mask(a) for a in amaps])


def prepare_path(name, model, classifier, diffusion, x, ids, args, device) -> dict:
    """Build a path and warm it up: every distinct batch shape once, at a low noise level
    (this compiles, autotunes and records CUDA graphs)."""
    guided, per_call, desc = make_path(name, model, classifier, args, device)
    shapes = sorted({min(per_call, x.shape[0] - i) for i in range(0, x.shape[0], per_call)})
    start = now(device)
    for b in shapes:
        translate_all(guided, diffusion, x[:b], ids[:b], b, args, min(args.warmup_level, args.noise_level))
    return {"path": name, "desc": desc, "images_per_call": per_call, "warmup_s": now(device) - start,
            "guided": guided, "times": []}


def time_path(p: dict, diffusion, x, ids, args, device):
    """One timed translation of all images: (seconds, healthy (N, C, H, W), PeakMemory)."""
    with PeakMemory(device) as mem:
        start = now(device)
        healthy = translate_all(p["guided"], diffusion, x, ids, p["images_per_call"], args, args.noise_level)
        seconds = now(device) - start
    return seconds, healthy, mem


class _TrivialModel(th.nn.Module):
    """eps = 0.1 x and a zero variance channel: a network that costs (almost) nothing."""

    def forward(self, x, t, y=None):
        return th.cat([0.1 * x, th.zeros_like(x)], dim=1)


class _TrivialClassifier(th.nn.Module):
    def __init__(self, n_in: int):
        super().__init__()
        self.weight = th.nn.Parameter(th.randn(n_in, 2) * 0.01, requires_grad=False)

    def forward(self, x, t):
        return x.flatten(1) @ self.weight


def loop_overhead(diffusion, x, ids, args, device) -> dict:
    """Microseconds per diffusion step of translate_batch with trivial networks: the cost of the loop,
    the schedule arithmetic and the guidance plumbing, without the networks' own work."""
    guided = classifier_guided(_TrivialModel(), _TrivialClassifier(x[0].numel()).to(device), args.classifier_scale)
    steps = 2 * (args.noise_level - 1)
    out = {}
    for b in sorted({1, args.batch_size}):
        translate_batch(guided, diffusion, x[:b], image_noise(args.seed, ids[:b], device),
                        TranslationOptions(3, use_ddim=args.use_ddim))
        best = float("inf")
        for _ in range(max(3, args.repeats)):
            start = now(device)
            translate_batch(guided, diffusion, x[:b], image_noise(args.seed, ids[:b], device),
                            TranslationOptions(args.noise_level, use_ddim=args.use_ddim))
            best = min(best, now(device) - start)
        out[f"batch_{b}_us_per_step"] = 1e6 * best / max(steps, 1)
        print(f"loop overhead, batch {b}: {out[f'batch_{b}_us_per_step']:.0f} us per step "
              f"({steps} steps, the fastest of {max(3, args.repeats)})")
    return out


def profile_path(name, model, classifier, diffusion, x, ids, args, device) -> None:
    from torch.profiler import ProfilerActivity, profile

    guided, per_call, desc = make_path(name, model, classifier, args, device)
    translate_all(guided, diffusion, x[:per_call], ids[:per_call], per_call, args, 2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        translate_all(guided, diffusion, x, ids, per_call, args, args.noise_level)
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of path {name} ({desc}), {x.shape[0]} images, L={args.noise_level}")
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        th.set_num_threads(args.threads)
    args = resolve(args, device)
    if device.type == "cuda" and args.tf32 != "default":
        th.backends.cuda.matmul.allow_tf32 = th.backends.cudnn.allow_tf32 = args.tf32 == "on"
    flags = network_flags(args, device)
    model, diffusion, classifier = build_networks(flags, device, seed=args.seed)
    if not 1 <= args.noise_level <= diffusion.num_timesteps:
        raise SystemExit(f"--noise_level {args.noise_level}: expected 1..{diffusion.num_timesteps} "
                         f"(steps of --timestep_respacing {args.timestep_respacing})")
    C, S = model.in_channels, flags["image_size"]
    gen = th.Generator().manual_seed(args.seed)
    x = th.rand((args.n_images, C, S, S), generator=gen).to(device)  # (N, C, H, W) in [0, 1]
    ids = [f"bench{i:04d}" for i in range(args.n_images)]
    info = machine_info(device)
    n_model = sum(p.numel() for p in model.parameters())
    n_clf = sum(p.numel() for p in classifier.parameters())
    steps = f"{args.noise_level - 1} encoding + {max(args.noise_level - 1, 0)} guided decoding steps"
    print(f"translation benchmark on {info['device']}"
          + (f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else "")
          + f"; CPU {info['cpu']}, {info['cpu_count']} cores, {info['threads']} threads; torch {info['torch']}; "
          f"load {info['loadavg_1m']}")
    print(f"networks: {'tiny' if args.tiny else 'README presets'}, image {S}x{S}x{C}, UNet {n_model / 1e6:.1f} M "
          f"params (num_channels {flags['num_channels']}), classifier {n_clf / 1e6:.2f} M params; "
          f"{'checkpoints' if flags['model_path'] else 'random seeded weights'}")
    print(f"process: {diffusion.num_timesteps} steps ({args.timestep_respacing}), L = {args.noise_level}: {steps}; "
          f"{'DDIM' if args.use_ddim else 'DDPM'}, s = {args.classifier_scale}; {args.n_images} slices, "
          f"batched paths {args.batch_size} per call")
    if args.profile:
        profile_path(args.profile, model, classifier, diffusion, x, ids, args, device)
        return {}
    if args.overhead:
        result = {"benchmark": "translate_loop_overhead", **info, "image_size": S, "noise_level": args.noise_level,
                  **loop_overhead(diffusion, x, ids, args, device)}
        print(json.dumps(result))
        return result

    result = {"benchmark": "translate", **info, "image_size": S, "channels": C, "tiny": args.tiny,
              "num_channels": flags["num_channels"], "timestep_respacing": args.timestep_respacing,
              "noise_level": args.noise_level, "use_ddim": args.use_ddim, "n_images": args.n_images,
              "batch_size": args.batch_size, "paths": []}
    rows = result["paths"]
    n = args.n_images
    base = base_masks = None
    done: list[dict] = []

    def record():
        """Rows from what has been measured so far (fastest repetition of each path)."""
        rows.clear()
        for p in done:
            if "error" in p:
                rows.append({"path": p["path"], "error": p["error"]})
                continue
            best = min(p["times"])
            r = {k: v for k, v in p.items() if k not in ("guided",)}
            r.update(seconds=best, s_per_slice=best / n, images_per_s=n / best,
                     speedup=min(done[0]["times"]) / best)
            rows.append(r)
        result["loadavg_1m_end"] = os.getloadavg()[0]
        write_json(result, args.json_out)  # after every timing: a run cut short keeps what it measured

    # round 1: each path is built, warmed up and timed in turn (peak memory and differences come from it);
    # further rounds (--repeats) time every path again, interleaved, and the fastest time is kept
    for rnd in range(max(1, args.repeats)):
        for i, name in enumerate(args.path_list):
            if rnd and (i >= len(done) or "error" in done[i]):
                continue
            try:
                if rnd == 0:
                    done.append(prepare_path(name, model, classifier, diffusion, x, ids, args, device))
                p = done[i]
                seconds, healthy, mem = time_path(p, diffusion, x, ids, args, device)
            except Exception as e:  # a path that cannot run here (e.g. fp16 kernels) does not stop the others
                if name == "base":
                    raise
                print(f"path {name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                if rnd == 0 and len(done) == i:
                    done.append({"path": name})
                done[i] = {"path": name, "error": f"{type(e).__name__}: {e}"[:300]}
                record()
                continue
            p["times"].append(seconds)
            if rnd == 0:
                masks = masks_of(x, healthy)
                if base is None:
                    base, base_masks = healthy.float(), masks
                p.update(peak_mib=mem.peak_mib, memory_kind=mem.kind,
                         max_abs_diff=(healthy.float() - base).abs().max().item(),
                         mask_diff_frac=float((masks != base_masks).mean()))
            record()
            print(f"  round {rnd + 1}, {name}: {seconds / n:.3f} s/slice"
                  + (f" (warm-up {p['warmup_s']:.1f} s)" if rnd == 0 else "")
                  + f", load {os.getloadavg()[0]:.2f}", flush=True)
    ok = [r for r in rows if "error" not in r]
    print()
    print_table(ok, [("path", "path", "s"), ("desc", "dtype, mode", "s"), ("images_per_call", "batch", "d"),
                     ("s_per_slice", "s/slice", ".4f"), ("images_per_s", "images/s", ".3f"),
                     ("peak_mib", "peak MiB", ".0f"), ("max_abs_diff", "max|diff|", ".2e"),
                     ("mask_diff_frac", "mask diff", ".5f"), ("speedup", "x base", ".2f")])
    if ok:
        print(f"s/slice: the fastest of {max(1, args.repeats)} interleaved round(s); peak memory: "
              f"{ok[0]['memory_kind']}; input ({args.n_images}, {C}, {S}, {S}); differences against path base "
              f"(fp32, batch 1); load average {info['loadavg_1m']:.2f} at the start, "
              f"{result['loadavg_1m_end']:.2f} at the end")
    failures = [f"path {r['path']}: {r['error']}" for r in rows if "error" in r]
    for r in ok:
        if r["path"] in TOLERANCES:
            max_diff, mask_frac = (t * args.tolerance_scale for t in TOLERANCES[r["path"]])
            if r["max_abs_diff"] > max_diff or r["mask_diff_frac"] > mask_frac:
                failures.append(f"path {r['path']}: max|diff| {r['max_abs_diff']:.2e} (at most {max_diff:.2e}), "
                                f"mask diff {r['mask_diff_frac']:.4f} (at most {mask_frac:.4f})")
    result["failures"] = failures
    write_json(result, args.json_out)
    print(json.dumps(result))
    for line in failures:
        print(f"FAILED {line}")
    if failures and args.strict:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
