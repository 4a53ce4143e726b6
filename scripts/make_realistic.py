"""Generate the realistic BRATS-like set: the MNI152 template's tissue maps (shipped inside the nilearn
wheel; pip install '.[realistic]') under a random deformation per patient, four contrasts, a bias field,
noise and a tumour whose intensities overlap normal tissue in every channel
(guided_diffusion/datasets/realistic.py). --tumour_fraction counts patients here (each has 4 slices);
whether a slice is diseased follows from its seg.

    python scripts/make_realistic.py --out results/realistic

writes results/realistic/brats/{training,validation,testing,test_labels}/ in the layout of data/brats/
(48 training, 16 validation and 16 test slices of 64 x 64 by default); `make compare-realistic` runs
make compare's plan on it.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import RealisticConfig, run_make_realistic


def make(argv=None):
    counts = run_tool(RealisticConfig, run_make_realistic, argv, __doc__)
    print(f"wrote {counts['brats']} BRATS slices ({counts['diseased']} with tumour)")


def main(argv=None) -> int:
    return run_main(make, argv)


if __name__ == "__main__":
    sys.exit(main())
