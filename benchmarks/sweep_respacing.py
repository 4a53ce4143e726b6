"""Dice and time per slice for fewer sampling steps (--timestep_respacing ddimN) on the synthetic set.

Uses the networks trained by ``make demo`` (results/demo/train/model, results/demo/train/classifier) and
translates data/brats/testing once per respacing, keeping the noise level at the same
fraction of the process (L = N * --fraction), through the real sampling script.
Prints one row per choice: steps, L, seconds per slice, Dice, pixel AUROC.

    python benchmarks/sweep_respacing.py --demo results/demo --choices 25,50,100,250
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from guided_diffusion.pipeline.presets import DEMO_CLASSIFIER, DEMO_DIFFUSION, DEMO_MODEL, preset_text

MODEL_FLAGS, DIFFUSION_FLAGS, CLASSIFIER_FLAGS = map(preset_text, (DEMO_MODEL, DEMO_DIFFUSION, DEMO_CLASSIFIER))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="results/demo")
    p.add_argument("--data", default="data/brats")
    p.add_argument("--choices", default="25,50,100,250")
    p.add_argument("--fraction", type=float, default=0.3, help="noise level as a fraction of the steps")
    p.add_argument("--classifier_scale", type=float, default=100.0)
    p.add_argument("--out", default="results/sweep")
    args = p.parse_args(argv)
    model = sorted(f for f in os.listdir(f"{args.demo}/train/model") if f.startswith("model"))[-1]
    clf = sorted(f for f in os.listdir(f"{args.demo}/train/classifier") if f.startswith("model"))[-1]
    rows = []
    for n in [int(c) for c in args.choices.split(",")]:
        level = max(1, round(n * args.fraction))
        out = f"{args.out}/ddim{n}"
        flags = (f"--data_dir {args.data}/testing --label_dir {args.data}/test_labels --dataset brats {MODEL_FLAGS} "
                 f"{DIFFUSION_FLAGS} {CLASSIFIER_FLAGS} --timestep_respacing ddim{n} --use_ddim True --batch_size 8 "
                 f"--model_path {args.demo}/train/model/{model} --classifier_path {args.demo}/train/classifier/{clf} "
                 f"--classifier_scale {args.classifier_scale} --noise_level {level} --output_dir {out} "
                 f"--log_dir {out}-log --progress False")
        subprocess.run(["rm", "-rf", out])
        start = time.perf_counter()
        subprocess.run([sys.executable, "scripts/classifier_sample_known.py", *shlex.split(flags)], cwd=ROOT,
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        summary = json.load(open(os.path.join(ROOT, out, "summary.json")))
        rows.append(dict(steps=n, noise_level=level, seconds_per_slice=summary["seconds_per_image"],
                         wall_seconds=wall, dice=summary["dice"]["mean"], auroc=summary["auroc"]["mean"]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| respacing | L | s per slice | Dice | pixel AUROC |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| ddim{r['steps']} | {r['noise_level']} | {r['seconds_per_slice']:.2f} | {r['dice']:.3f} | "
              f"{r['auroc']:.3f} |")


if __name__ == "__main__":
    main()
