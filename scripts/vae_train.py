"""Train the VAE baseline (cAAE, Chen & Konukoglu 2018) on the healthy training images.

Example (SPEC section 9: 500 epochs, batch 10, lr 1e-4):
    python scripts/vae_train.py --data_dir data/brats/training --dataset brats --image_size 256 \
        --log_dir results/vae
Stops after --iterations N when N > 0, else after --epochs passes over the healthy images.
Writes model%06d.pt, opt%06d.pt (and zdisc%06d.pt with --latent_prior adversarial) to --log_dir.
"""
import sys

from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.baselines import baseline_train_defaults, train_baseline, vae_defaults, vae_loss_defaults
from guided_diffusion.util import logger
from guided_diffusion.util.monitor import Monitor


def create_argparser():
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(), vae_defaults(),
                            vae_loss_defaults(), baseline_train_defaults("vae"))


def main(argv=None):
    args = create_argparser().parse_args(argv)
    cli.resolve_log_dir(args, "vae_train")
    logger.configure(args.log_dir)
    return train_baseline(args, "vae", monitor=Monitor.from_args(args, env="vae_train"))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
