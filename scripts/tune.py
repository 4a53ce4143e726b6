r"""Choose the checkpoint, the noise level L and the guidance scale on a labelled validation folder.

    python scripts/tune.py --data_dir brats2020/validation --dataset brats $MODEL_FLAGS $DIFFUSION_FLAGS \
        $CLASSIFIER_FLAGS --timestep_respacing ddim1000 --use_ddim True \
        --model_path runs/model/model060000.pt runs/model/model080000.pt \
        --classifier_path runs/classifier/model020000.pt --noise_levels 200,350,500 \
        --classifier_scales 50,100,300 --protocol volume --threshold val --out runs/tune

Translates the validation folder once per (checkpoint, L, s) into OUT/<setting>/ (a rerun resumes),
scores each with evaluate.py's flags, writes OUT/tune.csv (one row per setting, every summary number)
and OUT/best.json (the setting with the best mean Dice, and its threshold under --threshold val), and
prints the classifier_sample_known.py and evaluate.py command lines that apply it to the test set.
An item of --noise_levels may be an ensemble, levels joined by + (--noise_levels 350,200+350+500).
With --guidance cfg the scales tried are --guidance_scales; with --guidance none only L is tuned.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.tune import TuneConfig, tune


def main(argv=None):
    best = run_script(TuneConfig, tune, argv, __doc__)
    if best:
        print(f"best: {best['setting']} (mean Dice {best['dice']:.3f} on the validation folder)")
        print(best["translate"])
        print(best["evaluate"])
    return best


if __name__ == "__main__":
    sys.exit(run_main(main))
