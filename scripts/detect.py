r"""Apply a bundle to BraTS scans as downloaded: NIfTI anomaly maps and masks in each scan's own space.

    python scripts/detect.py --bundle bundles/brats_ddim -i BraTS2021_00000 -o out
    python scripts/detect.py --bundle bundles/brats_ddim -i RSNA_ASNR_MICCAI_BraTS2021_TrainingData -o out
    python scripts/detect.py --bundle bundles/brats_ddim -i t1=a.nii.gz t1ce=b.nii.gz t2=c.nii.gz \
        flair=d.nii.gz -o out
    torchrun --nproc_per_node 4 scripts/detect.py ...   (patients shared among the processes)

--input: a patient folder of the 2020 (patient 355's seg name included), 2021 or 2023 release, a
folder of such folders, or the four volumes by modality. Per patient OUT/<patient>_anomaly.nii.gz
(float32) and OUT/<patient>_mask.nii.gz (uint8), with the input's shape, affine and orientation,
0 outside the bundle's slice range; with --overlay True OUT/<patient>_overlay.png. OUT/summary.csv:
lesion volume in mL, positive slices, the image score (the highest 99th percentile of a slice's
map) and, when the folder holds a seg, the 3-D Dice over the whole volume. A rerun skips finished
patients.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.detect import DetectConfig, detect


def run(argv=None):
    rows = run_tool(DetectConfig, detect, argv, __doc__)
    if rows is not None:
        print(f"{len(rows)} patients in summary.csv")
    return rows


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
