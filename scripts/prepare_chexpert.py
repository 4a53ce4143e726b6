"""Turn CheXpert as published (CheXpert-v1.0-small: its CSV and images) into the CheXpert layout.

--csv is the release's CSV (e.g. CheXpert-v1.0-small/train.csv, header Path,Sex,Age,
Frontal/Lateral,AP/PA,No Finding,...,Pleural Effusion,...; labels 1.0, 0.0, -1.0 or empty);
--image_root is the folder that holds CheXpert-v1.0-small/, which the Path column is
relative to. The patient and study come from the Path (.../patientNNNNN/studyK/view1_frontal.jpg).

Frontal views only. Healthy: "No Finding" = 1 and "Pleural Effusion" not positive;
diseased: "Pleural Effusion" = 1. Uncertain (-1) rows are dropped, or an uncertain
effusion counts as diseased with --keep_uncertain True; rows both healthy and diseased
(conflicts) or neither are skipped and counted, as are extra frontal views of a study.
A missing image file is an error naming it. Images are read with Pillow, converted to
8-bit grayscale and resized to --image_size x --image_size (bilinear, aspect ratio not kept).

Output: OUT/{training,validation,testing}/{healthy,diseased}/<patient>_<study>.npy
(uint8, H x W x 1; validation/ only with --val_fraction > 0) and OUT/split.json (the
patients of each part, the healthy and diseased images per part, the skipped rows); the
split is by patient. Running twice with the same flags rewrites identical files;
nothing is written when an input is bad.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import (
    PrepareChexpertConfig,
    format_part_counts,
    run_prepare_chexpert,
)


def prepare(argv=None):
    summary = run_tool(PrepareChexpertConfig, run_prepare_chexpert, argv, __doc__)
    for line in format_part_counts(summary, "images"):
        print(line)
    print("skipped rows: " + ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items()))


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
