"""One table over training seeds: each method's volume Dice with the threshold chosen on validation and with
the oracle threshold, mean and spread (sample std) over the runs, and its difference to the FLAIR intensity
of the same run (mean and spread of the paired differences).

Each run folder holds ``compare.py`` outputs (``comparison.csv``) under ``--val`` and ``--best`` (relative
paths); a method is matched across runs by its name up to the first ``:`` (the setting chosen per run follows
the colon). ``--baseline`` names the FLAIR row.

    python benchmarks/seed_table.py --runs results/s0 results/s1 results/s2
"""
import argparse
import csv
import os

import numpy as np


def read(path: str) -> dict[str, dict]:
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not found (expected compare.py's comparison.csv; see --val and --best)")
    with open(path) as f:
        return {row["method"].split(":")[0].strip(): row for row in csv.DictReader(f)}


def spread(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.3f} ± {sd:.3f}"


def table(runs: list[str], val: str, best: str, baseline: str) -> str:
    per_run = [(read(os.path.join(r, val)), read(os.path.join(r, best))) for r in runs]
    methods = [m for m in per_run[0][0] if all(m in v for v, _ in per_run)]
    lines = [f"| method | volume Dice, val threshold (n={len(runs)} seeds) | oracle | minus {baseline} (paired) | "
             "per seed (val) | image AUROC |", "| --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        vals = [float(v[m]["dice_mean"]) for v, _ in per_run]
        oracle = [float(b[m]["dice_mean"]) for _, b in per_run]
        diff = [float(v[m]["dice_mean"]) - float(v[baseline]["dice_mean"]) for v, _ in per_run]
        auroc = [float(v[m]["image_auroc"]) for v, _ in per_run if v[m].get("image_auroc")]
        lines.append(f"| {m} | {spread(vals)} | {spread(oracle)} | {spread(diff) if m != baseline else '-'} | "
                     f"{', '.join(f'{x:.3f}' for x in vals)} | {spread(auroc) if auroc else 'n/a'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--val", default="levers/compare_val/comparison.csv")
    p.add_argument("--best", default="levers/compare_best/comparison.csv")
    p.add_argument("--baseline", default="FLAIR intensity")
    args = p.parse_args(argv)
    print(table(args.runs, args.val, args.best, args.baseline))


if __name__ == "__main__":
    main()
