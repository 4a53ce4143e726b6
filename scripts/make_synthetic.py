"""Generate the small synthetic BRATS-like and CheXpert-like data sets.

Example (the command that made the repository's data/ folder is in data/README.md):

    python scripts/make_synthetic.py --out data --size 64 --n_train 48 --n_test 8
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import SyntheticConfig, run_make_synthetic


def make(argv=None):
    counts = run_tool(SyntheticConfig, run_make_synthetic, argv, __doc__)
    print(f"wrote {counts['brats']} BRATS slices and {counts['chexpert']} CheXpert images")


def main(argv=None) -> int:
    return run_main(make, argv)


if __name__ == "__main__":
    sys.exit(main())
