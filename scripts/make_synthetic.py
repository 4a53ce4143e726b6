"""Generate the small synthetic BRATS-like and CheXpert-like data sets.

Example (the command that made the repository's data/ folder is in data/README.md):

    python scripts/make_synthetic.py --out data --size 64 --n_train 48 --n_test 8
    python scripts/make_synthetic.py --out raw --size 64 --n_volumes 2 --release 2021 --n_train 0 --n_test 0 \
        --datasets brats      (two whole patients as the 2021 release ships them, for detect.py)
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import SyntheticConfig, run_make_synthetic


def make(argv=None):
    counts = run_tool(SyntheticConfig, run_make_synthetic, argv, __doc__)
    print(f"wrote {counts['brats']} BRATS slices and {counts['chexpert']} CheXpert images"
          + (f", and {counts['volumes']} raw BraTS patients in brats_raw/" if counts["volumes"] else ""))


def main(argv=None) -> int:
    return run_main(make, argv)


if __name__ == "__main__":
    sys.exit(main())
