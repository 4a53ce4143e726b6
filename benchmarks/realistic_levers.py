"""The levers of issue 20 on the realistic set, per training seed, each tuned on validation like L and s.

Input: the run folders of ``demo.py --plan demo --data_dir <realistic>/brats --seed N`` (one per training
seed; each holds its trained diffusion model and classifier and ``tune/ddim/best.json``, the paper's guided
DDIM tuned on validation). Per run, ``tune.py`` tries each family of levers with the demo's grid of L and s,
chooses on the validation split (volume protocol, the threshold fitted there) and translates the test split
with its choice:

* ``maps``: the anomaly map's residual (abs, ssim, abs+ssim), per-channel normalisation and smoothing;
* ``schedule``: the classifier scale over the decoding steps (linear, rising; constant is the paper's);
* ``autoddpm``: AutoDDPM's mask, stitch and resample;
* ``patches``: pDDPM's patch-wise noising (32 px patches) at the paper's chosen L and s (4 translations per
  image), with the model trained on whole images.

The FLAIR intensity is scored as it is and with the map smoothing (the same lever, so the baseline is not
handicapped). Then ``compare.py`` over every test folder, each thresholded on its own validation folder, and
with the oracle: ``<run>/levers/compare_val/`` and ``compare_best/``. ``seed_table.py`` makes the table.

    python benchmarks/realistic_levers.py --runs results/s0 results/s1 results/s2 --data results/realistic/brats
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from guided_diffusion.pipeline.driver import Stage  # noqa: E402
from guided_diffusion.pipeline.tune import TuneConfig  # noqa: E402
from guided_diffusion.util.flagspec import config_defaults, flag_dict  # noqa: E402

FAMILIES = {
    "maps": ["map_residual=abs,ssim,abs+ssim", "map_normalise=none,channel", "map_smooth=0,1"],
    "schedule": ["scale_schedule=linear"],
    "autoddpm": ["autoddpm=True"],
    "patches": ["patch_size=32"],
}
AT_CHOICE = ("patches",)  # families tried at the paper's chosen L and s only (their cost)


def run(command: str, flags: dict, log: str) -> None:
    """Run ``command`` (pipeline.commands) on ``flags``, typed by its config, its output in ``log``."""
    argv = Stage(command, command, flags).argv(flags)  # typed by the command's config, as the driver's stages
    print(f"== python scripts/{command}.py {shlex.join(argv)}", flush=True)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "guided_diffusion.pipeline.commands", command, *argv], cwd=ROOT,
                              stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{command} failed (exit {done.returncode}); see {log}")


def levers(run_dir: str, data: str, families: list[str]) -> None:
    best_json = os.path.join(run_dir, "tune", "ddim", "best.json")
    if not os.path.isfile(best_json):
        raise SystemExit(f"--runs {run_dir}: expected the folder of a finished demo.py run ({best_json} is missing)")
    with open(best_json) as f:
        best = json.load(f)
    takes = flag_dict(config_defaults(TuneConfig))
    base = {k: v for k, v in best["flags"].items() if k in takes and k not in ("val_dir", "threshold")}
    with open(os.path.join(run_dir, "tune", "ddim", "tune.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f if line.strip()]
    levels = sorted({r[header.index("noise_level")] for r in rows}, key=lambda t: [int(x) for x in t.split("+")])
    scales = sorted({float(r[header.index("scale")]) for r in rows})
    out = os.path.join(run_dir, "levers")
    os.makedirs(out, exist_ok=True)
    tests, vals, names = [os.path.join(run_dir, "ddim")], [best["validation_folder"]], ["DDIM (paper)"]
    for family in families:
        folder = os.path.join(out, family)
        chosen = family in AT_CHOICE
        flags = {**base, "data_dir": f"{data}/validation", "out": folder, "log_dir": folder, "progress": False,
                 "protocol": "volume", "threshold": "val",
                 "noise_levels": ((tuple(best["noise_level"]),) if chosen else
                                  tuple(tuple(int(x) for x in t.split("+")) for t in levels)),
                 "classifier_scales": (best["scale"],) if chosen else tuple(scales),
                 "grid": tuple(FAMILIES[family]), "test_dir": f"{data}/testing",
                 "test_label_dir": f"{data}/test_labels", "test_output_dir": os.path.join(folder, "test")}
        if not os.path.isfile(os.path.join(folder, "test", "summary.json")):
            run("tune", flags, os.path.join(out, f"{family}.log"))
        with open(os.path.join(folder, "best.json")) as f:
            choice = json.load(f)
        tests.append(os.path.join(folder, "test"))
        vals.append(choice["validation_folder"])
        names.append(f"DDIM + {family}: {choice['setting']}")
    for smooth in (0, 1):
        key = f"flair_smooth{smooth}"
        for split, labels in (("testing", f"{data}/test_labels"), ("validation", "")):
            folder = os.path.join(out, key, split)
            if not os.path.isfile(os.path.join(folder, "summary.json")):
                run("intensity_translate", {"data_dir": f"{data}/{split}", "label_dir": labels, "dataset": "brats",
                                            "image_size": 64, "channel": "flair", "map_smooth": float(smooth),
                                            "output_dir": folder, "log_dir": folder, "progress": False},
                    os.path.join(out, f"{key}_{split}.log"))
        tests.append(os.path.join(out, key, "testing"))
        vals.append(os.path.join(out, key, "validation"))
        names.append("FLAIR intensity" + (f", map_smooth {smooth}" if smooth else ""))
    for rule in ("val", "best"):
        flags = {"run_dirs": tuple(tests), "names": ",".join(n.replace(",", ";") for n in names),
                 "protocol": "volume", "threshold": rule, "out": os.path.join(out, f"compare_{rule}"), "examples": 0}
        if rule == "val":
            flags["val_dir"] = ",".join(vals)
        run("compare", flags, os.path.join(out, f"compare_{rule}.log"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="demo.py --plan demo run folders, one per training seed")
    p.add_argument("--data", required=True, help="the realistic set's brats folder (make_realistic.py --out X: X/brats)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    args = p.parse_args(argv)
    for run_dir in args.runs:
        levers(run_dir, args.data, args.families.split(","))


if __name__ == "__main__":
    main()
