r"""Train the noise-aware healthy/diseased classifier (stops after --iterations).

Example (the original README's presets):
    python scripts/classifier_train.py --data_dir data/brats/training --dataset brats \
        $CLASSIFIER_FLAGS $TRAIN_FLAGS --iterations 20000
Held-out accuracy: --val_data_dir, or else a --val_fraction of the training folder's patients
(every slice of a held-out patient is held out, so none is seen in training).
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainConfig, train_classifier


def main(argv=None):
    return run_script(ClassifierTrainConfig, train_classifier, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
