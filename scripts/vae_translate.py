"""Reconstruct a test folder with the trained VAE baseline and score the anomaly maps.

Example (the flags of vae_train.py again, so the network is rebuilt the same way):
    python scripts/vae_translate.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats --image_size 256 --model_path results/vae/model012000.pt --output_dir results/brats_vae
Writes <id>.npz, <id>.png, metrics.csv and summary.json (method "VAE") into --output_dir,
the files classifier_sample_known.py writes; finished images are skipped.
"""
import os
import sys

from guided_diffusion.evaluation.results import format_table
from guided_diffusion.pipeline import cli
from guided_diffusion.pipeline.baselines import baseline_translate_defaults, translate_folder, vae_defaults
from guided_diffusion.util import logger
from guided_diffusion.util.monitor import Monitor


def create_argparser():
    return cli.build_parser(__doc__.splitlines()[0], cli.common_defaults(), vae_defaults(),
                            baseline_translate_defaults())


def main(argv=None):
    args = create_argparser().parse_args(argv)
    cli.resolve_log_dir(args, "vae_translate")
    if not args.output_dir:
        args.output_dir = os.path.join(args.log_dir, "samples")
    logger.configure(args.log_dir)
    summary = translate_folder(args, "vae", monitor=Monitor.from_args(args, env="vae_translate"))
    logger.log(format_table(summary))
    return summary


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
