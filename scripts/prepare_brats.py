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
from __future__ import annotations

import argparse
import sys

from guided_diffusion.datasets.prepare import DEFAULT_SLICE_RANGE, parse_slice_range, prepare_brats, str2bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder of BraTS20_Training_XXX/ patient folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--slice_range",
        type=parse_slice_range,
        default=DEFAULT_SLICE_RANGE,
        metavar="FIRST,LAST",
        help="axial slices kept, 0-based, both ends included (default: 80,128 = 49 slices)",
    )
    parser.add_argument("--test_fraction", type=float, default=0.2, help="fraction of patients in testing/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument(
        "--write_label_dir",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="also write OUT/test_labels/<leaf>-label.nii.gz, the original's test label layout",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_brats(
            args.src,
            args.out,
            slice_range=args.slice_range,
            test_fraction=args.test_fraction,
            seed=args.seed,
            write_label_dir=args.write_label_dir,
        )
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    patients, slices = summary["patients"], summary["slices"]
    print(
        f"{patients['training']} training and {patients['testing']} test patients: "
        f"{slices['training']} training and {slices['testing']} test slices "
        f"({slices['with_tumour']} with tumour) in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
