r"""Reconstruct a test folder with the trained denoising autoencoder and score the anomaly maps.

Example (the network flags of dae_train.py again):
    python scripts/dae_translate.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats --image_size 256 --num_channels 64 --channel_mult 1,2,4,8 --attention_resolutions "" \
        --model_path results/dae/model067200.pt --output_dir results/brats_dae
Writes <id>.npz, <id>.png, metrics.csv and summary.json (method "DAE") into --output_dir, the files
classifier_sample_known.py writes; finished images are skipped.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["dae"].commands["dae_translate"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
