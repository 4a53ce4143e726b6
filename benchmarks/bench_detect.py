"""Benchmark: detect.py's seconds per patient with a bundle (whole raw volumes in, NIfTI maps and masks out).

    python benchmarks/bench_detect.py                       # the CPU, a demo-sized bundle (make demo's networks)
    python benchmarks/bench_detect.py --preset readme --device cuda --precision bf16   # README presets, a GPU

Makes a bundle of seeded random networks with ``export_bundle``'s library call (weights are random: the
time does not depend on them), writes ``--patients`` + 1 raw patients in the 2021 release's layout
(``datasets.synthetic.generate_volumes``: 155 slices; 64 x 64 for ``demo``, 240 x 240 for ``readme``),
warms up on one batch, then times :func:`pipeline.detect.process_patient` (reading and
normalising the volumes, translating the slice range in batches, thresholding, writing the NIfTI
files) on each of the others; every patient's maps are copied to the host before its files are
written, which synchronises the device. Prints the device, the flags, seconds per patient and per slice.

Presets (guided DDIM with classifier guidance, the method; Otsu per slice):

* ``demo``: make demo's networks (pipeline/presets.py DEMO_*) at 64 x 64, ddim50, L = 15, s = 100;
* ``readme``: the original README's networks at 256 x 256, ddim1000, L = 100 (bench_translate.py's), s = 100.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import torch as th

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import _redraw_zero_layers, machine_info, pick_device, write_json  # noqa: E402

from guided_diffusion.datasets.synthetic import generate_volumes  # noqa: E402
from guided_diffusion.pipeline import presets  # noqa: E402
from guided_diffusion.pipeline.bundle import export_bundle, load_bundle, parse_export  # noqa: E402
from guided_diffusion.pipeline.detect import find_patients, process_patient  # noqa: E402
from guided_diffusion.pipeline.networks import create_classifier_net, create_unet_and_diffusion  # noqa: E402
from guided_diffusion.pipeline.methods.diffusion import SampleConfig  # noqa: E402
from guided_diffusion.util import checkpoint as ckpt  # noqa: E402
from guided_diffusion.util.flags import SpeedFlags  # noqa: E402
from guided_diffusion.util.flagspec import parse_flags  # noqa: E402

PRESETS = {
    "demo": (f"{presets.preset_text(presets.DEMO_MODEL, presets.DEMO_DIFFUSION, presets.DEMO_CLASSIFIER)} "
             f"--timestep_respacing ddim{presets.DEMO_RESPACING} --noise_level 15", 64),
    "readme": (f"{presets.MODEL_FLAGS} {presets.DIFFUSION_FLAGS} {presets.CLASSIFIER_FLAGS} "
               "--timestep_respacing ddim1000 --noise_level 100", 240),
}


def make_bundle(folder: str, preset: str, seed: int, slice_range: str) -> str:
    flags, _ = PRESETS[preset]
    argv = shlex.split(flags) + ["--use_ddim", "True", "--classifier_scale", "100", "--dataset", "brats",
                                 "--seed", str(seed), "--progress", "False"]
    cfg = parse_flags(SampleConfig, argv)
    th.manual_seed(seed)
    model, _ = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)
    classifier, _ = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
    for net in (model, classifier):
        _redraw_zero_layers(net)
    paths = (os.path.join(folder, "ema_0.9999_000000.pt"), os.path.join(folder, "model000000.pt"))
    ckpt.save(model.state_dict(), paths[0])
    ckpt.save(classifier.state_dict(), paths[1])
    out = os.path.join(folder, "bundle")
    export, rest = parse_export(["--out", out, *argv, "--model_path", paths[0], "--classifier_path", paths[1],
                                 "--threshold", "otsu", "--slice_range", slice_range])
    export_bundle(export, rest)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patients", type=int, default=2, help="timed patients (a batch of noise warms up first)")
    parser.add_argument("--slice_range", default="80,128", help="the bundle's slices (default: 49, the paper's)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the result as one JSON line here")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bundle_dir = make_bundle(tmp, args.preset, args.seed, args.slice_range)
        folders = generate_volumes(os.path.join(tmp, "raw"), release="2021", n_patients=args.patients,
                                   size=PRESETS[args.preset][1], seed=args.seed)
        setup = time.perf_counter() - start
        t0 = time.perf_counter()
        bundle = load_bundle(bundle_dir)
        method = bundle.build_method(device, SpeedFlags(precision=args.precision, compile=args.compile))
        load_seconds = time.perf_counter() - t0
        first, last = bundle.slice_range
        patients = find_patients([os.path.dirname(folders[0])], bundle.slice_range)
        out = os.path.join(tmp, "out")
        os.makedirs(os.path.join(out, ".detect"))
        t0 = time.perf_counter()
        size = int(bundle.record["preprocessing"]["image_size"])
        method(th.rand(args.batch_size, 4, size, size, device=device), [f"w{i}" for i in range(args.batch_size)])
        if device.type == "cuda":
            th.cuda.synchronize(device)
        warmup = time.perf_counter() - t0  # one batch: compilation, allocator, caches
        seconds = []
        for patient in patients:
            t0 = time.perf_counter()
            process_patient(bundle, method, patient, out, device, args.batch_size)
            seconds.append(time.perf_counter() - t0)
    n_slices = last - first + 1
    per_patient = sum(seconds) / len(seconds)
    result = {"benchmark": "detect", **machine_info(device), "preset": args.preset, "flags": PRESETS[args.preset][0],
              "slice_range": [first, last], "slices_per_patient": n_slices, "batch_size": args.batch_size,
              "precision": args.precision, "compile": args.compile, "volume": [PRESETS[args.preset][1]] * 2 + [155],
              "setup_seconds": setup, "bundle_load_seconds": load_seconds, "warmup_seconds": warmup,
              "seconds_per_patient": per_patient, "seconds_each": seconds,
              "seconds_per_slice": per_patient / n_slices}
    print(f"device {result['device']} ({result['cpu']}, {result['threads']} threads, load {result['loadavg_1m']:.1f}), "
          f"torch {result['torch']}")
    print(f"preset {args.preset}: {PRESETS[args.preset][0]}")
    print(f"{args.patients} patients of {result['volume']} voxels, slices {first}..{last} ({n_slices}), batch "
          f"{args.batch_size}, {args.precision}{', compiled' if args.compile else ''}")
    print(f"bundle load {load_seconds:.2f} s, warm-up batch {warmup:.1f} s")
    print(f"seconds per patient: {per_patient:.1f} (each: {', '.join(f'{s:.1f}' for s in seconds)}); "
          f"per slice {per_patient / n_slices:.3f} s")
    write_json(result, args.json)


if __name__ == "__main__":
    main()
