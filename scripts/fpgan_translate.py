r"""Translate a test folder to healthy with the trained FixedPoint-GAN and score the anomaly maps.

Example (the flags of fpgan_train.py again, so the generator is rebuilt the same way):
    python scripts/fpgan_translate.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats --image_size 256 --model_path results/fpgan/G006000.pt --output_dir results/brats_fpgan
Writes <id>.npz, <id>.png, metrics.csv and summary.json (method "FixedPoint-GAN") into
--output_dir, the files classifier_sample_known.py writes; finished images are skipped.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["fpgan"].commands["fpgan_translate"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
