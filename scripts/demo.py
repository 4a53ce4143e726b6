"""The method on the bundled synthetic example, on a CPU in minutes (``make demo``, ``make compare``).

``--plan demo`` trains a small noise-aware classifier and a small class-conditional diffusion
model on data/brats/training, chooses L and s on data/brats/validation with tune.py, translates
the test slices with that choice, scores them and the FLAIR-intensity baseline under four
evaluations, and writes <out>/ with the panels, metrics.csv, summary.json and report.md.
``--plan compare`` adds the levers on the paper's method, DDPM sampling, classifier-free guidance,
simplex diffusion, the denoising autoencoder, the VAE and FixedPoint-GAN, each chosen and
thresholded on the validation split, and writes the comparison table and figure. Each stage runs
the real command-line script, exactly as a user would (guided_diffusion/pipeline/driver.py).
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.driver import DemoConfig, run_demo


def demo(argv=None):
    run_tool(DemoConfig, run_demo, argv, __doc__)


def main(argv=None) -> int:
    return run_main(demo, argv)


if __name__ == "__main__":
    sys.exit(main())
