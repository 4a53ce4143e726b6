"""How far the FLAIR intensity alone gets on the realistic set (scripts/make_realistic.py), per generator seed.

For each seed: make_realistic.py writes a set (its defaults: make compare's 48 training slices, 4
validation and 4 test patients, 64 px), intensity_translate.py --channel flair translates the
validation and the test folders, and evaluate.py scores the test folder under the volume protocol
with the threshold chosen on the validation folder (``--threshold val``) and with the oracle
(``--threshold best``). Prints one row per seed and the mean and spread (population std) over seeds.

    python benchmarks/calibrate_realistic.py --out results/calibrate_realistic --seeds 0,1,2
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, args: str) -> None:
    command = [sys.executable, os.path.join(ROOT, "scripts", script), *shlex.split(args)]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def calibrate(out: str, seed: int, generator_flags: str) -> dict:
    data = os.path.join(out, f"seed{seed}")
    _run("make_realistic.py", f"--out {data} --seed {seed} {generator_flags}")
    brats = os.path.join(data, "brats")
    flair = f"--dataset brats --image_size 64 --channel flair --progress False --seed {seed}"
    val, test = os.path.join(data, "flair_val"), os.path.join(data, "flair_test")
    _run("intensity_translate.py", f"--data_dir {brats}/validation {flair} --output_dir {val} --log_dir {val}")
    _run("intensity_translate.py", f"--data_dir {brats}/testing --label_dir {brats}/test_labels {flair} "
                                   f"--output_dir {test} --log_dir {test}")
    row = {"seed": seed}
    for rule, extra in (("val", f"--val_dir {val}"), ("best", "")):
        _run("evaluate.py", f"{test} --protocol volume --threshold {rule} {extra}")
        with open(os.path.join(test, "summary.json")) as f:
            summary = json.load(f)
        row[rule] = summary["dice"]["mean"]
        row[f"{rule}_threshold"] = summary["threshold"]
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/calibrate_realistic")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--generator_flags", default="", help="more make_realistic.py flags, e.g. '--n_test 32'")
    a = p.parse_args(argv)
    rows = [calibrate(a.out, int(s), a.generator_flags) for s in a.seeds.split(",")]
    print("FLAIR intensity on the realistic set, volume protocol (Dice mean over test patients)")
    print("| generator seed | Dice, threshold chosen on validation | threshold | oracle Dice | oracle threshold |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['val']:.3f} | {r['val_threshold']:.3f} | {r['best']:.3f} | "
              f"{r['best_threshold']:.3f} |")
    for rule, what in (("val", "validation threshold"), ("best", "oracle")):
        values = np.array([r[rule] for r in rows])
        print(f"{what}: mean {values.mean():.3f}, std {values.std():.3f}, range {values.min():.3f}-{values.max():.3f} "
              f"over {len(values)} seeds")


if __name__ == "__main__":
    main()
