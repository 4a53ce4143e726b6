"""Turn a CheXpert CSV and its images into the CheXpert layout (SPEC section 5).

Frontal views only. Healthy: "No Finding" = 1; diseased: "Pleural Effusion" = 1
(uncertain -1 rows are dropped, or counted as diseased with --keep_uncertain True);
rows that are both or neither are skipped, as are extra frontal views of a study.
Images are read with Pillow, converted to 8-bit grayscale and resized to
--image_size x --image_size (bilinear, aspect ratio not kept).

Output: OUT/{training,testing}/{healthy,diseased}/<patient>_<study>.npy
(uint8, H x W x 1) and OUT/split.json; the split is by patient.
"""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.datasets.prepare import prepare_chexpert, str2bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, help="CheXpert CSV, e.g. CheXpert-v1.0-small/train.csv")
    parser.add_argument(
        "--image_root",
        required=True,
        help="folder the CSV's Path column is relative to (the one holding CheXpert-v1.0-small/)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--image_size", type=int, default=256, help="side of the square output images")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="fraction of patients in testing/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument(
        "--keep_uncertain",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="count uncertain (-1) pleural effusion as diseased instead of dropping the row",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_chexpert(
            args.csv,
            args.image_root,
            args.out,
            image_size=args.image_size,
            test_fraction=args.test_fraction,
            seed=args.seed,
            keep_uncertain=args.keep_uncertain,
        )
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = summary["images"]
    for split in ("training", "testing"):
        print(f"{split}: {images[split]['healthy']} healthy, {images[split]['diseased']} diseased")
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items())
    print(f"skipped rows: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
