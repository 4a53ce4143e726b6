"""Train the class-conditional diffusion UNet (stops after --lr_anneal_steps).

Example (the original README's presets):
    python scripts/image_train.py --data_dir data/brats/training --dataset brats \
        $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS --lr_anneal_steps 80000
Multi-GPU: `mpiexec -n 4 python scripts/image_train.py ...` or `torchrun --nproc_per_node 4 ...`.
"""
import sys

from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.runs import train_defaults, train_diffusion_model
from guided_diffusion.script_util import model_and_diffusion_defaults
from guided_diffusion.util import dist_util, logger


def create_argparser():
    extra = dict(ema_rate="0.9999", lr_anneal_steps=0)
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(),
                            model_and_diffusion_defaults(), train_defaults(), extra)


def main(argv=None):
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist()
    try:
        cli.resolve_log_dir(args, "image_train")
        logger.configure(args.log_dir, enabled=dist_util.is_main_process())
        train_diffusion_model(args)
    finally:
        dist_util.cleanup()


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
