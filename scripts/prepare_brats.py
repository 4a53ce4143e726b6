"""Turn a BraTS training release (2020, 2021 or 2023 glioma) into the BRATS slice layout.

Input (--release auto tells them apart by the patient folders' names):
  2020: SRC/BraTS20_Training_XXX/BraTS20_Training_XXX_{t1,t1ce,t2,flair,seg}.nii[.gz]
        (patient 355's seg is W39_1998.09.19_Segm.nii; name_mapping.csv, survival_info.csv ignored)
  2021: SRC/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz
  2023: SRC/BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz
        (read as t1, t1ce, t2, flair; the scans YYY of one subject XXXXX stay in one part)
A validation release has no segmentations, hence no ground truth, and is refused.

Output: OUT/training/<leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz (4 modalities + seg),
        OUT/validation/<leaf>/... (with --val_fraction > 0; with seg, like training),
        OUT/testing/<leaf>/... (4 modalities + seg as ground truth),
        OUT/test_labels/<leaf>-label.nii.gz (with --write_label_dir True),
        OUT/split.json (the patients of each part, healthy and diseased slices per part, the leaves).

Each modality volume is normalised on its own to [0, 1]: --normalise percentile sets
negative values to 0 and clips at the 99.5th percentile of the positive (brain) voxels,
dividing by it; brainminmax min-max scales the non-zero (brain) voxels, background 0.
Axial slices FIRST..LAST of --slice_range are kept, both ends included; the default
80,128 keeps 49 of 155 slices, removing the lowest 80 and the topmost 26 as in the
paper. The split is by patient. A slice is diseased when its seg has a tumour voxel.
Leaves are numbered 000001, ... in sorted patient and slice order. Running twice with
the same flags rewrites identical files; nothing is written when an input is bad.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import PrepareBratsConfig, format_part_counts, run_prepare_brats


def prepare(argv=None):
    summary = run_tool(PrepareBratsConfig, run_prepare_brats, argv, __doc__)
    print(f"BraTS{summary['release']}:")
    for line in format_part_counts(summary, "slices"):
        print(f"  {line}")


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
