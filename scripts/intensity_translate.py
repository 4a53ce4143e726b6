r"""The intensity baseline: one channel's intensity as the anomaly map (Meissen et al.: thresholding FLAIR
alone is a strong baseline on BraTS).

    python scripts/intensity_translate.py --data_dir data/brats/testing --label_dir data/brats/test_labels \
        --dataset brats --image_size 64 --channel flair --output_dir results/flair

Writes the result files every translation script writes (method "FLAIR intensity"): the "healthy"
image is the input with that channel set to 0, so the anomaly map is the channel's intensity, and
evaluate.py and compare.py score it under every protocol.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods import METHODS


def main(argv=None):
    command = METHODS["intensity"].commands["intensity_translate"]
    return run_script(command.config, command.run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
