r"""Train the denoising autoencoder baseline (Kascenas et al. 2022) on the healthy training images.

Example (the paper's coarse noise: 16 x 16 grid, std 0.2; batch 16):
    python scripts/dae_train.py --data_dir data/brats/training --dataset brats --image_size 256 \
        --num_channels 64 --channel_mult 1,2,4,8 --attention_resolutions "" --log_dir results/dae
Stops after --iterations N (default 67200, the paper's 2100 epochs of 32 batches), or --epochs with
--iterations 0. Writes model%06d.pt and opt%06d.pt to --log_dir.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["dae"].commands["dae_train"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
