"""The example runs on the bundled synthetic data: ``make demo`` and ``make compare``.

Both are plans of stages, each a real command-line script run as a user would run it
(so the examples exercise exactly what the README documents). A stage starts when the
stages it needs have finished; up to ``jobs`` stages run side by side, each then with
``cores / jobs`` threads. Every stage's output goes to ``<out>/logs/<stage>.log``; a failing
stage stops the run with the end of its log.

* ``demo``: the paper's method with tiny networks: classifier and diffusion model, guided
  DDIM translation of the test slices, evaluation, ``report.md`` with the panels;
* ``compare``: the demo's stages plus stochastic DDPM sampling, the VAE and FixedPoint-GAN,
  all translated and scored alike, and ``compare.py``'s table and figure.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from ..evaluation.results import format_table, read_metrics, read_summary
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import DataFlags, DriverFlags, OutputFlags, RunFlags, SamplingFlags
from ..util.flagspec import part
from .presets import DEMO_CLASSIFIER_FLAGS, DEMO_DIFFUSION_FLAGS, DEMO_MODEL_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the baselines' small networks on the 64x64 example
VAE_FLAGS = "--image_size 64 --dataset brats --vae_width 16 --vae_depth 4 --latent_dim 64 --latent_disc_width 128"
FPGAN_FLAGS = ("--image_size 64 --dataset brats --fpgan_width 16 --fpgan_res_blocks 3 --fpgan_d_width 16 "
               "--fpgan_d_depth 4")


@dataclass(frozen=True)
class DemoConfig:
    """scripts/demo.py"""

    driver: DriverFlags
    sampling: SamplingFlags = part("noise_level", "classifier_scale")
    data: DataFlags = part("data_dir")
    output: OutputFlags
    run: RunFlags = part("seed")
    SCRIPT: ClassVar[str] = "demo"
    DEFAULTS: ClassVar[dict] = {"out": "results/demo", "data_dir": "data/brats", "noise_level": (30,)}


@dataclass(frozen=True)
class Stage:
    """One script run: ``python scripts/<script> <args>`` once the stages in ``needs`` are done."""

    name: str
    script: str
    args: str
    needs: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, os.path.join("scripts", self.script), *shlex.split(self.args)]


def _levels(cfg: DemoConfig) -> str:
    return ",".join(map(str, cfg.sampling.noise_level))


def demo_stages(cfg: DemoConfig) -> list[Stage]:
    """Classifier and diffusion model, guided DDIM translation of the test slices, evaluation."""
    d, out, common = cfg.driver, cfg.output.out, f"--dataset brats --seed {cfg.run.seed} --progress False"
    data = cfg.data.data_dir
    model = f"{out}/model/model{d.model_steps:06d}.pt"
    classifier = f"{out}/classifier/model{d.classifier_steps:06d}.pt"
    sample = (f"--data_dir {data}/testing --label_dir {data}/test_labels {common} {DEMO_MODEL_FLAGS} "
              f"{DEMO_DIFFUSION_FLAGS} {DEMO_CLASSIFIER_FLAGS} --timestep_respacing ddim100 --batch_size 8 "
              f"--model_path {model} --classifier_path {classifier} "
              f"--classifier_scale {cfg.sampling.classifier_scale:g} --noise_level {_levels(cfg)}")
    return [
        Stage("classifier", "classifier_train.py",
              f"--data_dir {data}/training {common} {DEMO_CLASSIFIER_FLAGS} {DEMO_DIFFUSION_FLAGS} --lr 3e-4 "
              f"--batch_size 8 --iterations {d.classifier_steps} --save_interval {d.classifier_steps} "
              f"--log_interval 100 --eval_interval 100 --log_dir {out}/classifier"),
        Stage("diffusion_model", "image_train.py",
              f"--data_dir {data}/training {common} {DEMO_MODEL_FLAGS} {DEMO_DIFFUSION_FLAGS} --lr 3e-4 --batch_size 8 "
              f"--lr_anneal_steps {d.model_steps} --save_interval {d.model_steps} --log_interval 100 "
              f"--ema_rate 0.999 --log_dir {out}/model"),
        Stage("ddim", "classifier_sample_known.py",
              f"{sample} --use_ddim True --output_dir {out}/samples --log_dir {out}/translate",
              needs=("classifier", "diffusion_model")),
        Stage("evaluate", "evaluate.py", f"{out}/samples", needs=("ddim",)),
    ]


def compare_stages(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages plus DDPM sampling, the VAE and FixedPoint-GAN, and the comparison."""
    d, out, common = cfg.driver, cfg.output.out, f"--seed {cfg.run.seed} --progress False"
    data = cfg.data.data_dir
    test = f"--data_dir {data}/testing --label_dir {data}/test_labels"
    demo = demo_stages(cfg)
    ddim = next(s for s in demo if s.name == "ddim")
    stages = [s for s in demo if s.name != "evaluate"] + [
        Stage("ddpm", "classifier_sample_known.py",
              ddim.args.replace("--use_ddim True", "--use_ddim False").replace(f"{out}/samples", f"{out}/ddpm")
              .replace(f"{out}/translate", f"{out}/logs/ddpm"), needs=ddim.needs),
        Stage("vae", "vae_train.py",
              f"--data_dir {data}/training {VAE_FLAGS} {common} --batch_size 10 --lr 3e-4 --iterations {d.vae_steps} "
              f"--save_interval {d.vae_steps} --log_interval 50 --log_dir {out}/train/vae"),
        Stage("fpgan", "fpgan_train.py",
              f"--data_dir {data}/training {FPGAN_FLAGS} {common} --batch_size 10 --lr 3e-4 "
              f"--iterations {d.fpgan_steps} --save_interval {d.fpgan_steps} --log_interval 50 "
              f"--log_dir {out}/train/fpgan"),
        Stage("vae_translate", "vae_translate.py",
              f"{test} {VAE_FLAGS} {common} --model_path {out}/train/vae/model{d.vae_steps:06d}.pt "
              f"--output_dir {out}/vae --log_dir {out}/logs/vae_translate", needs=("vae",)),
        Stage("fpgan_translate", "fpgan_translate.py",
              f"{test} {FPGAN_FLAGS} {common} --model_path {out}/train/fpgan/G{d.fpgan_steps:06d}.pt "
              f"--output_dir {out}/fpgan --log_dir {out}/logs/fpgan_translate", needs=("fpgan",)),
    ]
    level, scale = _levels(cfg), f"{cfg.sampling.classifier_scale:g}"
    names = f"DDIM (ours; L={level}; s={scale}),DDPM (L={level}; s={scale}),VAE (cAAE),FixedPoint-GAN"
    stages.append(Stage("compare", "compare.py", f"{out}/samples {out}/ddpm {out}/vae {out}/fpgan "
                                                 f"--names '{names}' --out {out} --examples 4",
                        needs=("ddim", "ddpm", "vae_translate", "fpgan_translate")))
    return stages


def run_stages(stages: Sequence[Stage], logs: str, jobs: int = 1) -> dict[str, float]:
    """Run the plan; returns the wall seconds of each stage. ``jobs`` > 1 runs that many stages
    at once, each with an equal share of the cores."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected 1 or more")
    names = [s.name for s in stages]
    for s in stages:
        unknown = [n for n in s.needs if n not in names]
        if unknown:
            raise ValueError(f"stage {s.name} needs unknown stage(s) {unknown}")
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ)
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    pending, running, seconds = list(stages), {}, {}
    try:
        while pending or running:
            for stage in [s for s in pending if all(n in seconds for n in s.needs)][: jobs - len(running)]:
                pending.remove(stage)
                print(f"== {stage.name}: python scripts/{stage.script} {stage.args}", flush=True)
                log = open(os.path.join(logs, f"{stage.name}.log"), "w")
                proc = subprocess.Popen(stage.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[stage.name] = (proc, log, time.perf_counter())
            if not running:
                raise ValueError(f"stages {[s.name for s in pending]} wait for each other")
            time.sleep(0.2)
            for name, (proc, log, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode:
                    with open(log.name) as f:
                        tail = "".join(f.readlines()[-15:])
                    print(tail, file=sys.stderr, end="")
                    raise UserError(f"stage {name} failed (exit status {proc.returncode}); its output is in {log.name}")
                seconds[name] = time.perf_counter() - start
                print(f"   {name}: done in {seconds[name]:.0f} s", flush=True)
    finally:
        for proc, log, _ in running.values():
            proc.kill()
            proc.wait()
            log.close()
    return seconds


def chance_dice(folder: str, ids: Sequence[str]) -> float:
    """Expected Dice of a random mask with as many pixels as the Otsu mask, averaged over ``ids``:
    2|M||G| / (N(|M|+|G|)) per image."""
    values = []
    for image_id in ids:
        with np.load(os.path.join(folder, f"{image_id}.npz")) as z:
            m, g, n = float(z["mask"].sum()), float(z["ground_truth"].sum()), z["mask"].size
        values.append(2 * m * g / (n * (m + g)) if m + g else 1.0)
    return float(np.mean(values)) if values else float("nan")


def write_demo_report(out: str, stages: Sequence[Stage], seconds: dict[str, float]) -> str:
    """``<out>/report.md`` (the table, the chance level, panels, what ran) and ``timings.json``."""
    samples = os.path.join(out, "samples")
    summary, rows = read_summary(samples), read_metrics(samples)
    diseased = [r for r in rows if r["label"] == 1]
    lines = ["# Demo: guided-DDIM anomaly detection on the synthetic BRATS-like example", "",
             "Tiny networks trained for minutes on a CPU; see the README for the paper-scale commands.", "",
             format_table(summary), "",
             f"Chance level: a mask of the same size as each Otsu mask, placed at random, has an expected "
             f"Dice of {chance_dice(samples, [r['id'] for r in diseased]):.3f} on these diseased slices "
             f"(2|M||G| / (N(|M|+|G|)), averaged); see summary.json for all numbers.", "", "## Panels", "",
             "Each panel names its rows and columns: input channels (t1, t1ce, t2, flair); healthy "
             "reconstruction; anomaly map, Otsu mask, ground truth.", ""]
    for r in diseased[:4] + [r for r in rows if r["label"] == 0][:1]:
        lines += [f"### {r['id']} (label {r['label']}, Dice {r['dice']:.3f})", "",
                  f"![{r['id']}](samples/{r['id']}.png)", ""]
    lines += ["## What ran", "", "| stage | seconds | command |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | {seconds[s.name]:.0f} | `python scripts/{s.script} {s.args}` |" for s in stages]
    total = sum(seconds.values())
    lines += ["", f"Total: {total:.0f} s.", ""]
    path = os.path.join(out, "report.md")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    with atomic_write(os.path.join(out, "timings.json"), "w") as f:
        json.dump(seconds, f, indent=2)
    return path


# the folders of <out> a plan writes; removed before it runs, so no stale result is resumed
_WRITTEN = ("classifier", "model", "samples", "translate", "ddpm", "vae", "fpgan", "train", "logs")


def run_demo(cfg: DemoConfig) -> str:
    """``make demo`` (``--plan demo``) or ``make compare`` (``--plan compare``); returns the report's path."""
    out = cfg.output.out
    for name in _WRITTEN:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    jobs = cfg.driver.jobs or (1 if cfg.driver.plan == "demo" else 2)
    if cfg.driver.plan == "demo":
        stages = demo_stages(cfg)
        seconds = run_stages(stages, os.path.join(out, "logs"), jobs)
        report = write_demo_report(out, stages, seconds)
    else:
        stages = compare_stages(cfg)
        seconds = run_stages(stages, os.path.join(out, "logs"), jobs)
        report = os.path.join(out, "comparison.md")
        with atomic_write(os.path.join(out, "timings.json"), "w") as f:
            json.dump(seconds, f, indent=2)
    print(f"\nwrote {report} (total {sum(seconds.values()):.0f} s of stages)")
    return report
