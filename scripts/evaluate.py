"""Recompute the metrics of a results folder from its ``<id>.npz`` files alone.

    python scripts/evaluate.py OUTPUT_DIR [--protocol paper|all]

Rewrites ``metrics.csv`` and ``summary.json`` (keeping the ``flags`` and
``seconds_per_image`` the sampling script stored there), writes the Markdown table to
``table.md`` and prints it. The protocols are described in
:mod:`guided_diffusion.evaluation.results`. Needs no GPU and no Visdom.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.evaluate import EvaluateConfig, evaluate_folder


def evaluate(argv=None):
    print(run_tool(EvaluateConfig, evaluate_folder, argv, __doc__), end="")


def main(argv=None) -> int:
    return run_main(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
