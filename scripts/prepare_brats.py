"""Turn the BraTS2020 training release into the BRATS slice layout (SPEC section 5).

Input:  SRC/BraTS20_Training_XXX/BraTS20_Training_XXX_{t1,t1ce,t2,flair,seg}.nii.gz
Output: OUT/training/<leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz (4 modalities + seg),
        OUT/testing/<leaf>/... (4 modalities + seg as ground truth),
        OUT/test_labels/<leaf>-label.nii.gz (with --write_label_dir True), OUT/split.json.

Each modality volume is normalised on its own: negative values become 0, the volume
is clipped at the 99.5th percentile of its positive (brain) voxels and divided by
it, giving [0, 1]. Axial slices FIRST..LAST of --slice_range are kept, both ends
included; the default 80,128 keeps 49 of 155 slices, removing the lowest 80 and
the topmost 26 as in the paper. The train/test split is by patient. Leaves are
numbered 000001, ... in sorted patient and slice order. Running twice with the same
flags rewrites identical files; nothing is written when an input is bad.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_tool
from guided_diffusion.pipeline.prepare import PrepareBratsConfig, run_prepare_brats


def prepare(argv=None):
    summary = run_tool(PrepareBratsConfig, run_prepare_brats, argv, __doc__)
    patients, slices = summary["patients"], summary["slices"]
    print(f"{patients['training']} training and {patients['testing']} test patients: "
          f"{slices['training']} training and {slices['testing']} test slices "
          f"({slices['with_tumour']} with tumour)")


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
