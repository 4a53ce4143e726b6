"""Recompute the metrics of a results folder from its ``<id>.npz`` files alone.

    python scripts/evaluate.py OUTPUT_DIR [--protocol paper|all]

Rewrites ``metrics.csv`` and ``summary.json`` (keeping the ``flags`` and
``seconds_per_image`` the sampling script stored there), writes the Markdown table to
``table.md`` and prints it. The protocols are described in
:mod:`guided_diffusion.evaluation.results`. Needs no GPU and no Visdom.
"""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.evaluation import results


def create_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Recompute metrics.csv, summary.json and table.md from the .npz files "
        "of a results folder."
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder holding <id>.npz files")
    parser.add_argument(
        "--protocol",
        choices=results.PROTOCOLS,
        default="paper",
        help="paper: Dice over diseased images, AUROC/AUPRC over images with more than "
        f"{results.MIN_TUMOUR_PIXELS} ground-truth pixels; all: every image with ground "
        "truth (default: paper)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = create_argparser().parse_args(argv)
    try:
        summary = results.write_metrics(args.output_dir, protocol=args.protocol)
        table = results.write_table(args.output_dir, summary)
    except (OSError, ValueError) as e:
        message = " ".join(str(e).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
