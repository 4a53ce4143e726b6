"""Every command of the package by its script's name: the config it takes and the function that
runs it (:class:`.methods.Command`), read from the methods' registry plus the tools.
``scripts/<name>.py`` is each pair behind a command line; the example plans (:mod:`.driver`) hold a
stage as a command and its flags, and launch it with

    python -m guided_diffusion.pipeline.commands <name> [flags]

which is where a config becomes text.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from .bundle import ExportBundleConfig, export_bundle
from .cli import run_main, run_script, run_tool
from .detect import DetectConfig, detect
from .evaluate import CompareConfig, EvaluateConfig, compare_runs, evaluate_folder
from .methods import METHODS, Command
from .prepare import RealisticConfig, SyntheticConfig, run_make_realistic, run_make_synthetic
from .tune import TuneConfig, tune


def _export_tuned(cfg: ExportBundleConfig) -> dict:
    """export_bundle.py with its own flags only (``--tune_dir``: tune.py's choice)."""
    return export_bundle(cfg, [])


TOOLS: dict[str, Command] = {
    "tune": Command(TuneConfig, tune, True),
    "evaluate": Command(EvaluateConfig, evaluate_folder, False),
    "compare": Command(CompareConfig, compare_runs, False),
    "make_synthetic": Command(SyntheticConfig, run_make_synthetic, False),
    "make_realistic": Command(RealisticConfig, run_make_realistic, False),
    "export_bundle": Command(ExportBundleConfig, _export_tuned, False),
    "detect": Command(DetectConfig, detect, False),
}
"""The commands that belong to no one method: searching, scoring, data, bundles and detection."""

COMMANDS: dict[str, Command] = {**{name: command for method in METHODS.values()
                                   for name, command in method.commands.items()}, **TOOLS}
"""Every command: each method's (:data:`.methods.METHODS`), then the tools."""


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
