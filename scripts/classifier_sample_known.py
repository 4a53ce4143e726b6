r"""Translate diseased images to healthy ones and score the anomaly maps (SPEC section 6a).

Example (the original README's presets):
    python scripts/classifier_sample_known.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats $MODEL_FLAGS $DIFFUSION_FLAGS $CLASSIFIER_FLAGS $SAMPLE_FLAGS \
        --model_path results/.../model080000.pt --classifier_path results/.../model020000.pt \
        --classifier_scale 100 --noise_level 500 --output_dir results/brats_ddim
Writes <id>.npz, <id>.png, metrics.csv and summary.json into --output_dir.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.runs import SampleConfig, run_translation


def main(argv=None):
    return run_script(SampleConfig, run_translation, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
