"""Recompute the metrics of a results folder from its ``<id>.npz`` files alone.

    python scripts/evaluate.py OUTPUT_DIR [--protocol paper|slice|volume]
        [--threshold otsu|best|val|fpr] [--val_dir DIR] [--fpr 0.01]
        [--brain_mask True] [--median K] [--min_component N] [--bootstrap N --seed S]

Rewrites ``metrics.csv`` and ``summary.json`` (keeping the ``flags`` and
``seconds_per_image`` the sampling script stored there; ``metrics_volume.csv`` too for
``--protocol volume``), writes the Markdown table to ``table.md`` and prints it. With no
flags it is the paper's evaluation (Dice of per-slice Otsu masks over the diseased slices).
Held-out thresholds, as reviewers ask for today:

    --protocol volume --threshold val --val_dir VAL_OUT   Dice per patient, threshold from validation
    --protocol volume --threshold best                    the same with the oracle threshold
    --protocol slice --threshold fpr --fpr 0.01 --val_dir VAL_OUT

The protocols, rules and post-processing are described in
:mod:`guided_diffusion.evaluation.protocols`. Reads the result files only: no GPU, no
network, no Visdom.
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
