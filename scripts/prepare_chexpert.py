"""Turn a CheXpert CSV and its images into the CheXpert layout (SPEC section 5).

Frontal views only. Healthy: "No Finding" = 1; diseased: "Pleural Effusion" = 1
(uncertain -1 rows are dropped, or counted as diseased with --keep_uncertain True);
rows that are both or neither are skipped, as are extra frontal views of a study.
Images are read with Pillow, converted to 8-bit grayscale and resized to
--image_size x --image_size (bilinear, aspect ratio not kept).

Output: OUT/{training,testing}/{healthy,diseased}/<patient>_<study>.npy
(uint8, H x W x 1) and OUT/split.json; the split is by patient.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import (
    PrepareChexpertConfig,
    run_prepare_chexpert,
)


def prepare(argv=None):
    summary = run_tool(PrepareChexpertConfig, run_prepare_chexpert, argv, __doc__)
    images = summary["images"]
    for split in ("training", "testing"):
        print(f"{split}: {images[split]['healthy']} healthy, {images[split]['diseased']} diseased")
    print("skipped rows: " + ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items()))


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
