"""The method on the bundled synthetic example, on a CPU in minutes (``make demo``, ``make compare``).

``--plan demo`` trains a small noise-aware classifier and a small class-conditional diffusion
model on data/brats/training, translates the test slices to healthy with guided DDIM,
evaluates, and writes <out>/ with the panels, metrics.csv, summary.json and report.md.
``--plan compare`` adds DDPM sampling, the VAE and FixedPoint-GAN and writes the comparison
table and figure. Each stage runs the real command-line script, exactly as a user would.
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
