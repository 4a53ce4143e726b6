"""Generate the small synthetic BRATS-like and CheXpert-like data sets (SPEC section 5).

Example (the command that made the repository's data/ folder is in data/README.md):

    python scripts/make_synthetic.py --out data --size 64 --n_train 48 --n_test 8
"""
from __future__ import annotations

import argparse
import sys

from guided_diffusion.datasets.synthetic import DATASET_CHOICES, generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder; brats/ and chexpert/ are written inside it")
    parser.add_argument("--seed", type=int, default=0, help="same seed and flags give byte-identical files")
    parser.add_argument("--size", type=int, default=240, help="side of the square images in pixels")
    parser.add_argument("--n_train", type=int, default=48, help="training slices (BRATS) / images (CheXpert)")
    parser.add_argument("--n_test", type=int, default=8, help="test slices (BRATS) / images (CheXpert)")
    parser.add_argument(
        "--tumour_fraction", type=float, default=0.5, help="fraction of each split with a tumour (BRATS) or effusion"
    )
    parser.add_argument("--dataset", choices=DATASET_CHOICES, default="both")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = generate(
            args.out,
            dataset=args.dataset,
            size=args.size,
            n_train=args.n_train,
            n_test=args.n_test,
            tumour_fraction=args.tumour_fraction,
            seed=args.seed,
        )
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {counts['brats']} BRATS slices and {counts['chexpert']} CheXpert images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
