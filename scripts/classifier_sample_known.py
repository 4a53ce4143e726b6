"""Translate diseased images to healthy ones and score the anomaly maps (SPEC section 6a).

Example (the original README's presets):
    python scripts/classifier_sample_known.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats $MODEL_FLAGS $DIFFUSION_FLAGS $CLASSIFIER_FLAGS $SAMPLE_FLAGS \
        --model_path results/.../model080000.pt --classifier_path results/.../model020000.pt \
        --classifier_scale 100 --noise_level 500 --output_dir results/brats_ddim
Writes <id>.npz, <id>.png, metrics.csv and summary.json into --output_dir.
"""
import os
import sys

from guided_diffusion.evaluation.results import format_table
from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.translate import run_translation, sampling_defaults
from guided_diffusion.script_util import classifier_defaults, model_and_diffusion_defaults
from guided_diffusion.util import dist_util, logger
from guided_diffusion.util.monitor import Monitor


def create_argparser():
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(),
                            model_and_diffusion_defaults(), classifier_defaults(), sampling_defaults())


def main(argv=None):
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist()
    try:
        cli.resolve_log_dir(args, "classifier_sample_known")
        if not args.output_dir:
            args.output_dir = os.path.join(args.log_dir, "samples")
        logger.configure(args.log_dir, enabled=dist_util.is_main_process())
        monitor = Monitor.from_args(args, env="translate") if dist_util.is_main_process() else None
        summary = run_translation(args, monitor=monitor)
        if summary is not None:
            logger.log(format_table(summary))
    finally:
        dist_util.cleanup()


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
