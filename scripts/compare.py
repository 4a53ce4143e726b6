"""Compare methods: the table (Dice, AUROC, AUPRC, image AUROC) and a figure of examples.

    python scripts/compare.py RUN_DIR [RUN_DIR ...] [--names A,B,...] [--out DIR] [--examples N]
        [evaluation flags of evaluate.py: --protocol, --threshold, --val_dir V1,V2,..., --median, ...]

Each RUN_DIR is the output folder of a translation script (classifier_sample_known.py,
vae_translate.py, fpgan_translate.py) with its summary.json. Every run is scored again from
its .npz files under the same evaluation flags, so all methods are scored alike (with
--threshold val|fpr each run takes its threshold from its own validation folder: --val_dir
lists one per RUN_DIR). Writes comparison.md, comparison.csv and comparison.png into --out
and prints the table; the run folders are not changed. See
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
