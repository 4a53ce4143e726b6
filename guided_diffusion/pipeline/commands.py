"""Every command of the package by its script's name: the config it takes and the function that
runs it. ``scripts/<name>.py`` is each pair behind a command line; the example plans
(:mod:`.driver`) hold a stage as a command and its flags, and launch it with

    python -m guided_diffusion.pipeline.commands <name> [flags]

which is where a config becomes text.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .bundle import ExportBundleConfig, export_bundle
from .cli import run_main, run_script, run_tool
from .detect import DetectConfig, detect
from .evaluate import CompareConfig, EvaluateConfig, compare_runs, evaluate_folder
from .prepare import RealisticConfig, SyntheticConfig, run_make_realistic, run_make_synthetic
from .runs import (
    ClassifierTrainConfig,
    DAETrainConfig,
    DAETranslateConfig,
    FPGANTrainConfig,
    FPGANTranslateConfig,
    ImageTrainConfig,
    IntensityConfig,
    SampleConfig,
    VAETrainConfig,
    VAETranslateConfig,
    run_translation,
    train_classifier,
    train_dae,
    train_fpgan,
    train_diffusion_model,
    translate_dae,
    translate_fpgan,
    translate_intensity,
    translate_vae,
    train_vae,
)
from .tune import TuneConfig, tune


def _export_tuned(cfg: ExportBundleConfig) -> dict:
    """export_bundle.py with its own flags only (``--tune_dir``: tune.py's choice)."""
    return export_bundle(cfg, [])


@dataclass(frozen=True)
class Command:
    """A script's config class and run function; ``networks``: it runs networks (a process group, a
    log folder, Visdom: :func:`.cli.run_script`), else it only reads and writes files (:func:`.cli.run_tool`)."""

    config: type
    run: Callable[..., Any]
    networks: bool


COMMANDS: dict[str, Command] = {
    "image_train": Command(ImageTrainConfig, train_diffusion_model, True),
    "classifier_train": Command(ClassifierTrainConfig, train_classifier, True),
    "classifier_sample_known": Command(SampleConfig, run_translation, True),
    "tune": Command(TuneConfig, tune, True),
    "vae_train": Command(VAETrainConfig, train_vae, True),
    "vae_translate": Command(VAETranslateConfig, translate_vae, True),
    "fpgan_train": Command(FPGANTrainConfig, train_fpgan, True),
    "fpgan_translate": Command(FPGANTranslateConfig, translate_fpgan, True),
    "dae_train": Command(DAETrainConfig, train_dae, True),
    "dae_translate": Command(DAETranslateConfig, translate_dae, True),
    "intensity_translate": Command(IntensityConfig, translate_intensity, True),
    "evaluate": Command(EvaluateConfig, evaluate_folder, False),
    "compare": Command(CompareConfig, compare_runs, False),
    "make_synthetic": Command(SyntheticConfig, run_make_synthetic, False),
    "make_realistic": Command(RealisticConfig, run_make_realistic, False),
    "export_bundle": Command(ExportBundleConfig, _export_tuned, False),
    "detect": Command(DetectConfig, detect, False),
}


def run_command(name: str, argv: Sequence[str]) -> Any:
    """Run command ``name`` on the flags ``argv``, as ``scripts/<name>.py`` would."""
    command = COMMANDS[name]
    launch = run_script if command.networks else run_tool
    return launch(command.config, command.run, argv, command.config.__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in COMMANDS:
        found = repr(words[0]) if words else "nothing"
        print(f"error: expected a command ({', '.join(COMMANDS)}) and its flags, found {found}", file=sys.stderr)
        return 2
    return run_main(lambda rest: run_command(words[0], rest), words[1:])


if __name__ == "__main__":
    sys.exit(main())
