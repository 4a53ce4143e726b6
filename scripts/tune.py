r"""Choose the checkpoint, the noise level L, the guidance scale and further levers on a labelled validation folder.

    python scripts/tune.py --data_dir brats2020/validation --timestep_respacing ddim1000 --use_ddim True \
        --model_path runs/model/model060000.pt runs/model/model080000.pt \
        --classifier_path runs/classifier/model020000.pt --noise_levels 200,350,500 \
        --classifier_scales 50,100,300 --grid map_residual=abs,abs+ssim --grid map_smooth=0,2 \
        --protocol volume --threshold val --out runs/tune --test_dir brats2020/testing --test_output_dir runs/test

The network and diffusion flags not given are the checkpoints' (the flags saved beside them).
Translates the validation folder once per (checkpoint, L, s) into OUT/<setting>/ (a rerun resumes), and
writes a folder for each combination of the --grid levers' values (NAME=V1,V2,...: any on/off, choice or
number flag of classifier_sample_known.py; the anomaly map's levers reuse the translation),
scores each with evaluate.py's flags, writes OUT/tune.csv (one row per setting, every summary number)
and OUT/best.json (the setting with the best mean Dice, its flags, and its threshold under --threshold
val), and prints the classifier_sample_known.py and evaluate.py command lines that apply it to the test
set; with --test_dir it translates and scores the test folder itself. An item of --noise_levels may be
an ensemble, levels joined by + (--noise_levels 350,200+350+500). With --guidance cfg the scales tried
are W (--guidance_scales); with --guidance none only L is tuned.
"""
import sys

from guided_diffusion.pipeline.cli import run_main, run_script
from guided_diffusion.pipeline.tune import SCALE_NAMES, TuneConfig, tune


def main(argv=None):
    best = run_script(TuneConfig, tune, argv, __doc__)
    if best:
        print(f"best: {best['setting']} (mean Dice {best['dice']:.3f} on the validation folder)")
        print(best["translate"])
        print(best["evaluate"])
        test = best.get("test")
        if test is not None:
            scale = SCALE_NAMES.get(best["guidance"])
            dice = (test.get("dice") or {}).get("mean")
            levers = "".join(f", {name}={value}" for name, value in best.get("levers", {}).items())
            print(f"test: mean Dice {'n/a' if dice is None else f'{dice:.3f}'} with L="
                  + "+".join(map(str, best["noise_level"])) + (f", {scale}={best['scale']:g}" if scale else "")
                  + levers)
    return best


if __name__ == "__main__":
    sys.exit(run_main(main))
