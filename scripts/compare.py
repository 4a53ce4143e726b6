"""Compare methods: the table (Dice, AUROC, AUPRC, image AUROC) and a figure of examples.

    python scripts/compare.py RUN_DIR [RUN_DIR ...] [--names A,B,...] [--out DIR] [--examples N]

Each RUN_DIR is the output folder of a translation script (classifier_sample_known.py,
vae_translate.py, fpgan_translate.py) with its summary.json. Writes comparison.md,
comparison.csv and comparison.png into --out and prints the table. See
guided_diffusion/evaluation/compare.py for the layout.
"""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.evaluation.compare import load_runs, write_comparison
from guided_diffusion.pipeline import cli


def create_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="translation output folders")
    parser.add_argument("--names", default="", help="comma-separated method names, one per RUN_DIR "
                        "(default: each summary's method, or the folder name)")
    parser.add_argument("--out", default="results/compare", help="output folder (default: results/compare)")
    parser.add_argument("--examples", type=int, default=4,
                        help="example slices in comparison.png (ids common to all runs, diseased first; "
                        "0: no figure; default 4)")
    return parser


def main(argv=None):
    args = create_argparser().parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names and not all(names):
        raise ValueError(f"--names {args.names!r}: expected non-empty names separated by commas")
    runs = load_runs(args.run_dirs, names)
    written = write_comparison(runs, args.out, examples=args.examples)
    print(written["table"], end="")
    if args.examples and not written["examples"]:
        print("warning: the runs have no <id>.npz file in common: no comparison.png", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written["files"]))
    return written


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
