r"""Train the FixedPoint-GAN baseline (Siddiquee et al. 2019) on healthy and diseased images.

Example (the paper's settings: 150 epochs, batch 10, lr 1e-4, lambda_cls 1, lambda_gp = lambda_rec = lambda_id = 10):
    python scripts/fpgan_train.py --data_dir data/brats/training --dataset brats --image_size 256 \
        --log_dir results/fpgan
Stops after --iterations N (critic steps) when N > 0, else after --epochs passes over the images.
Writes G%06d.pt, D%06d.pt and opt%06d.pt to --log_dir.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["fpgan"].commands["fpgan_train"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
