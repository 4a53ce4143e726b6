r"""Bundle a trained model: weights, every flag, the preprocessing, the method and its threshold in one folder.

    python scripts/export_bundle.py --tune_dir runs/tune --out bundles/brats_ddim
        (tune.py's choice: its best.json, the validation translation's flags and threshold)
    python scripts/export_bundle.py --out bundles/brats_ddim --method classifier_sample_known \
        $MODEL_FLAGS $DIFFUSION_FLAGS $CLASSIFIER_FLAGS --model_path runs/model/ema_0.9999_080000.pt \
        --classifier_path runs/classifier/model020000.pt --use_ddim True --noise_level 500 \
        --classifier_scale 100 --threshold 0.35
        (a fixed setting: --method's flags follow; --threshold T, or otsu for the paper's per-slice rule)

Writes OUT/model.pt (EMA or raw weights, as bundle.json says), OUT/classifier.pt (classifier
guidance), and OUT/bundle.json: the method and its settings, every flag, the preprocessing
(release naming, normalisation, slice range, image size and padding; read from prepare_brats.py's
split.json beside --data_dir when there is one, else --normalise and --slice_range), the threshold
with its rule and validation scores, and each file's SHA-256. detect.py applies a bundle.
"""
import sys

from guided_diffusion.pipeline.bundle import export_bundle, parse_export
from guided_diffusion.pipeline.cli import run_main


def export(argv=None):
    cfg, rest = parse_export(argv, __doc__)
    record = export_bundle(cfg, rest)
    print(f"{cfg.output.out}: {record['method']['name']} ({', '.join(record['files']) or 'no weights'}), "
          f"threshold {record['threshold']['rule']} {record['threshold']['value']}")
    return record


def main(argv=None) -> int:
    return run_main(export, argv)


if __name__ == "__main__":
    sys.exit(main())
