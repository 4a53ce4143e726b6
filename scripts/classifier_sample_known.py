r"""Translate diseased images to healthy ones and score the anomaly maps .

Example:
    python scripts/classifier_sample_known.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --model_path results/.../model080000.pt --classifier_path results/.../model020000.pt \
        --timestep_respacing ddim1000 --use_ddim True --classifier_scale 100 --noise_level 500 \
        --output_dir results/brats_ddim
The network and diffusion flags not given are the checkpoints' (flags_image_train.json and
flags_classifier_train.json beside them; for a checkpoint without one, what its tensor shapes tell);
a given flag that contradicts a checkpoint is an error. The original README's presets work unchanged.
Writes <id>.npz, <id>.png, metrics.csv and summary.json into --output_dir.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods.diffusion import SampleConfig, run_translation


def main(argv=None):
    return run_script(SampleConfig, run_translation, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
