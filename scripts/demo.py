"""The whole method on the bundled synthetic example, on a CPU in minutes (``make demo``).

Trains a small noise-aware classifier and a small class-conditional diffusion model on
data/brats/training, translates the test slices to healthy with guided DDIM, evaluates,
and writes <out>/ with the panels, metrics.csv, summary.json and report.md. Each stage
runs the real command-line script, exactly as a user would.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from guided_diffusion.pipeline.presets import DEMO_CLASSIFIER_FLAGS as CLASSIFIER_FLAGS
from guided_diffusion.pipeline.presets import DEMO_DIFFUSION_FLAGS as DIFFUSION_FLAGS
from guided_diffusion.pipeline.presets import DEMO_MODEL_FLAGS as MODEL_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(stage: str, script: str, flags: str, log: list) -> float:
    cmd = [sys.executable, os.path.join("scripts", script), *shlex.split(flags)]
    print(f"\n== {stage}: python scripts/{script} {flags}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {stage} failed (exit status {proc.returncode})")
    log.append((stage, f"python scripts/{script} {flags}", seconds))
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/demo")
    p.add_argument("--data", default="data/brats")
    p.add_argument("--model_steps", type=int, default=800)
    p.add_argument("--classifier_steps", type=int, default=300)
    p.add_argument("--noise_level", type=int, default=30, help="in steps of the ddim100 process")
    p.add_argument("--classifier_scale", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out
    log: list = []
    common = f"--dataset brats --seed {args.seed} --progress False"
    run("1/4 classifier", "classifier_train.py",
        f"--data_dir {args.data}/training {common} {CLASSIFIER_FLAGS} {DIFFUSION_FLAGS} --lr 3e-4 --batch_size 8 "
        f"--iterations {args.classifier_steps} --save_interval {args.classifier_steps} --log_interval 100 "
        f"--eval_interval 100 --log_dir {out}/classifier", log)
    run("2/4 diffusion model", "image_train.py",
        f"--data_dir {args.data}/training {common} {MODEL_FLAGS} {DIFFUSION_FLAGS} --lr 3e-4 --batch_size 8 "
        f"--lr_anneal_steps {args.model_steps} --save_interval {args.model_steps} --log_interval 100 "
        f"--ema_rate 0.999 --log_dir {out}/model", log)
    steps = f"{args.model_steps:06d}"
    run("3/4 translate (guided DDIM)", "classifier_sample_known.py",
        f"--data_dir {args.data}/testing --label_dir {args.data}/test_labels {common} {MODEL_FLAGS} "
        f"{DIFFUSION_FLAGS} {CLASSIFIER_FLAGS} --timestep_respacing ddim100 --use_ddim True --batch_size 8 "
        f"--model_path {out}/model/model{steps}.pt --classifier_path {out}/classifier/model{args.classifier_steps:06d}.pt "
        f"--classifier_scale {args.classifier_scale} --noise_level {args.noise_level} --output_dir {out}/samples "
        f"--log_dir {out}/translate", log)
    run("4/4 evaluate", "evaluate.py", f"{out}/samples", log)
    write_report(out, log)


def chance_dice(folder: str, ids: list) -> float:
    """Expected Dice of a random mask with as many pixels as the Otsu mask, averaged over ``ids``."""
    import numpy as np

    values = []
    for image_id in ids:
        with np.load(os.path.join(folder, f"{image_id}.npz")) as z:
            m, g, n = float(z["mask"].sum()), float(z["ground_truth"].sum()), z["mask"].size
        values.append(2 * m * g / (n * (m + g)) if m + g else 1.0)
    return float(np.mean(values)) if values else float("nan")


def write_report(out: str, log: list) -> None:
    from guided_diffusion.evaluation.results import (
        format_table,
        read_metrics,
        read_summary,
    )
    from guided_diffusion.util.fileio import atomic_write

    summary = read_summary(f"{out}/samples")
    rows = read_metrics(f"{out}/samples")
    diseased = [r for r in rows if r["label"] == 1]
    lines = ["# Demo: guided-DDIM anomaly detection on the synthetic BRATS-like example", "",
             "Tiny networks trained for minutes on a CPU; see the README for the paper-scale commands.", "",
             format_table(summary), "",
             f"Chance level: a mask of the same size as each Otsu mask, placed at random, has an expected "
             f"Dice of {chance_dice(f'{out}/samples', [r['id'] for r in diseased]):.3f} on these diseased slices "
             f"(2|M||G| / (N(|M|+|G|)), averaged); see summary.json for all numbers.", "", "## Panels", "",
             "Rows: input channels (t1, t1ce, t2, flair); healthy reconstruction; anomaly map, Otsu mask, "
             "ground truth.", ""]
    for r in diseased[:4] + [r for r in rows if r["label"] == 0][:1]:
        lines += [f"### {r['id']} (label {r['label']}, Dice {r['dice']:.3f})", "",
                  f"![{r['id']}](samples/{r['id']}.png)", ""]
    lines += ["## What ran", "", "| stage | seconds | command |", "| --- | --- | --- |"]
    lines += [f"| {stage} | {sec:.0f} | `{cmd}` |" for stage, cmd, sec in log]
    total = sum(sec for _, _, sec in log)
    lines += ["", f"Total: {total:.0f} s.", ""]
    with atomic_write(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    with atomic_write(os.path.join(out, "timings.json"), "w") as f:
        json.dump({stage: sec for stage, _, sec in log}, f, indent=2)
    print(f"\nwrote {out}/report.md (total {total:.0f} s)")


if __name__ == "__main__":
    main()
