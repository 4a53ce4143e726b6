r"""Train the VAE baseline (cAAE, Chen & Konukoglu 2018) on the healthy training images.

Example (the paper's settings: 500 epochs, batch 10, lr 1e-4):
    python scripts/vae_train.py --data_dir data/brats/training --dataset brats --image_size 256 \
        --log_dir results/vae
Stops after --iterations N when N > 0, else after --epochs passes over the healthy images.
Writes model%06d.pt, opt%06d.pt (and zdisc%06d.pt with --latent_prior adversarial) to --log_dir.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["vae"].commands["vae_train"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
