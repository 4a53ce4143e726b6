"""Train the FixedPoint-GAN baseline (Siddiquee et al. 2019) on healthy and diseased images.

Example (SPEC section 9: 150 epochs, batch 10, lr 1e-4, lambda_cls 1, lambda_gp = lambda_rec = lambda_id = 10):
    python scripts/fpgan_train.py --data_dir data/brats/training --dataset brats --image_size 256 \
        --log_dir results/fpgan
Stops after --iterations N (critic steps) when N > 0, else after --epochs passes over the images.
Writes G%06d.pt, D%06d.pt and opt%06d.pt to --log_dir.
"""
import sys

from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.baselines import (
    baseline_train_defaults,
    fpgan_defaults,
    fpgan_loss_defaults,
    train_baseline,
)
from guided_diffusion.util import logger
from guided_diffusion.util.monitor import Monitor


def create_argparser():
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(), fpgan_defaults(),
                            fpgan_loss_defaults(), baseline_train_defaults("fpgan"))


def main(argv=None):
    args = create_argparser().parse_args(argv)
    cli.resolve_log_dir(args, "fpgan_train")
    logger.configure(args.log_dir)
    return train_baseline(args, "fpgan", monitor=Monitor.from_args(args, env="fpgan_train"))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
