r"""Train the class-conditional diffusion UNet (stops after --lr_anneal_steps).

Example (the original README's presets):
    python scripts/image_train.py --data_dir data/brats/training --dataset brats \
        $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS --lr_anneal_steps 80000
Multi-GPU: `mpiexec -n 4 python scripts/image_train.py ...` or `torchrun --nproc_per_node 4 ...`.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.methods.diffusion import ImageTrainConfig, train_diffusion_model


def main(argv=None):
    return run_script(ImageTrainConfig, train_diffusion_model, argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
