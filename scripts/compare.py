"""Compare methods: the table (Dice, AUROC, AUPRC, image AUROC) and a figure of examples.

    python scripts/compare.py RUN_DIR [RUN_DIR ...] [--names A,B,...] [--out DIR] [--examples N]

Each RUN_DIR is the output folder of a translation script (classifier_sample_known.py,
vae_translate.py, fpgan_translate.py) with its summary.json. Writes comparison.md,
comparison.csv and comparison.png into --out and prints the table. See
guided_diffusion/evaluation/compare.py for the layout.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.evaluate import CompareConfig, compare_runs


def main(argv=None):
    written = run_tool(CompareConfig, compare_runs, argv, __doc__)
    print(written["table"], end="")
    if not written["examples"]:
        print("warning: the runs have no <id>.npz file in common (or --examples 0): no comparison.png",
              file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written["files"]))
    return written


if __name__ == "__main__":
    sys.exit(run_main(main))
