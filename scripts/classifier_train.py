"""Train the noise-aware healthy/diseased classifier (stops after --iterations).

Example (the original README's presets):
    python scripts/classifier_train.py --data_dir data/brats/training --dataset brats \
        $CLASSIFIER_FLAGS $TRAIN_FLAGS --iterations 20000
Held-out accuracy: --val_data_dir, or else a --val_fraction of the training folder's patients
(every slice of a held-out patient is held out, so none is seen in training).
"""
import sys

from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.runs import train_defaults, train_noisy_classifier
from guided_diffusion.script_util import classifier_and_diffusion_defaults
from guided_diffusion.util import dist_util, logger


def create_argparser():
    extra = dict(iterations=150000, noised=True, anneal_lr=False, eval_interval=50, val_data_dir="",
                 val_label_dir="", val_fraction=0.1)
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(),
                            classifier_and_diffusion_defaults(), train_defaults(), extra)


def main(argv=None):
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist()
    try:
        cli.resolve_log_dir(args, "classifier_train")
        logger.configure(args.log_dir, enabled=dist_util.is_main_process())
        train_noisy_classifier(args)
    finally:
        dist_util.cleanup()


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
