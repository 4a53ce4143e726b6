"""Benchmark: scoring a BraTS2020-sized test split under the reviewers' protocol.

    python benchmarks/bench_evaluate.py                  # 40 test + 10 validation patients x 49 slices, 256x256
    python benchmarks/bench_evaluate.py --tiny           # a seconds-long smoke run
    python benchmarks/bench_evaluate.py --keep DIR       # keep the generated folders

Generates result files (the pinned ``<id>.npz`` keys of SPEC 6a; no PNG panels, which the
evaluation never reads) for a test split and a validation split into a temporary folder,
then runs the real entry point ``scripts/evaluate.py`` in a fresh process on the first 10,
20 and 40 test patients with

    --protocol volume --threshold val --val_dir VAL --median 5 --min_component 7 --bootstrap 1000

and prints, per run, the wall time of that process (start-up and imports included; the
generation is not), its peak resident set (``ru_maxrss`` of the child) and the time per
1000 slices, which shows how the time grows with the number of slices. Targets (issue 13):
under 2 minutes and 4 GiB for the 40 patients on 2 CPU cores.

The maps imitate a translation's: |residual| everywhere (small outside the brain, larger inside),
one ellipsoid tumour per patient brighter but overlapping the healthy tail, every value a
distinct float32 (the worst case for the exact threshold search and pooled AP).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--protocol", "volume", "--threshold", "val", "--median", "5", "--min_component", "7",
         "--bootstrap", "1000"]


def write_patient(folder: Path, patient: str, n_slices: int, size: int, rng: np.random.Generator) -> int:
    """Write one patient's slices; returns its tumour voxels."""
    from guided_diffusion.anomaly import otsu_mask

    yy, xx = np.mgrid[:size, :size] / size
    brain = ((yy - 0.5) / 0.40) ** 2 + ((xx - 0.5) / 0.33) ** 2 <= 1  # (H, W)
    cz = rng.uniform(0.25, 0.75) * n_slices
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    # BraTS whole tumours: about 100 cm^3, half of it in the 49 central slices
    rz, ry, rx = rng.uniform(0.15, 0.35) * n_slices, *(rng.uniform(0.07, 0.16, 2) * size)
    z, y, x = np.ogrid[:n_slices, :size, :size]
    tumour = (((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1) & brain  # (D, H, W)
    shape = (n_slices, size, size)
    residual = ndimage.gaussian_filter(rng.gamma(2.0, 0.04, shape), (0.5, 1.0, 1.0))
    residual += 0.08 * ndimage.gaussian_filter(rng.random(shape), (2, 6, 6)) ** 2 * 40  # smooth false hot spots
    residual = np.where(brain, residual, residual * 0.05)
    residual += tumour * ndimage.gaussian_filter(rng.gamma(2.0, 0.03, shape), 1.0)  # brighter, overlapping
    amap = residual.astype(np.float32)
    shade = np.round(np.clip(0.3 + 0.4 * yy, 0, 1) * 255) / 255  # an 8-bit-like input
    image = np.where(brain, shade, 0).astype(np.float32)
    x_in = np.repeat(image[None], 4, axis=0)  # (C, H, W)
    for k in range(n_slices):
        gt = tumour[k].astype(np.uint8)
        arrays = {"input": x_in, "healthy": x_in, "anomaly": amap[k], "mask": otsu_mask(amap[k]),
                  "label": np.asarray(int(gt.any()), dtype=np.int64), "ground_truth": gt,
                  "patient": np.asarray(patient), "slice": np.asarray(80 + k, dtype=np.int64)}
        np.savez_compressed(folder / f"{patient}_{80 + k:03d}.npz", **arrays)
    return int(tumour.sum())


def generate(root: Path, n_test: int, n_val: int, n_slices: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    info = {"test_voxels": 0, "val_voxels": 0}
    for split, n in (("val", n_val), ("test", n_test)):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(n):
            info[f"{split}_voxels"] += write_patient(folder, f"{split.upper()}{i:03d}", n_slices, size, rng)
    return info


def subset(root: Path, n_patients: int) -> Path:
    """A folder of symbolic links to the first ``n_patients`` test patients' files."""
    folder = root / f"test_{n_patients}"
    folder.mkdir()
    patients = sorted({p.name.split("_")[0] for p in (root / "test").glob("*.npz")})[:n_patients]
    for path in sorted((root / "test").glob("*.npz")):
        if path.name.split("_")[0] in patients:
            (folder / path.name).symlink_to(path)
    return folder


def run_evaluate(folder: Path, val: Path, extra: list[str]) -> dict:
    """scripts/evaluate.py in a fresh process: wall seconds and that process's peak RSS."""
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), str(folder), *FLAGS, "--val_dir", str(val),
               *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"evaluate.py failed ({process.returncode}):\n{err}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "table": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="10,20,40", help="test patients per run, comma-separated")
    parser.add_argument("--val_patients", type=int, default=10)
    parser.add_argument("--slices", type=int, default=49)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="3,6 patients (2 for validation), 8 slices of 64x64")
    parser.add_argument("--keep", default="", help="generate into this folder and keep it")
    parser.add_argument("--json", default="", help="also write the results as one JSON line here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.patients, args.val_patients, args.slices, args.size = "3,6", 2, 8, 64
    sizes = [int(n) for n in args.patients.split(",")]

    import torch as th

    info = machine_info(th.device("cpu"))
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, load {info['loadavg_1m']:.2f}; "
          f"{max(sizes)} test + {args.val_patients} validation patients x {args.slices} slices of "
          f"{args.size}x{args.size}; flags {' '.join(FLAGS)}")
    with tempfile.TemporaryDirectory(dir=args.keep or None) as tmp:
        root = Path(args.keep or tmp) / "bench_evaluate"
        start = time.perf_counter()
        voxels = generate(root, max(sizes), args.val_patients, args.slices, args.size, args.seed)
        print(f"generated {max(sizes) + args.val_patients} patients in {time.perf_counter() - start:.0f} s "
              f"(tumour voxels: test {voxels['test_voxels']}, validation {voxels['val_voxels']}; not timed)")
        startup = run_evaluate(subset(root, 1), root / "val", ["--help"])["seconds"]
        rows = []
        for n in sizes:
            result = run_evaluate(subset(root, n), root / "val", [])
            slices = n * args.slices
            rows.append({"patients": n, "slices": slices, "voxels_m": slices * args.size ** 2 / 1e6,
                         "seconds": result["seconds"], "per_1000_slices": result["seconds"] / slices * 1000,
                         "peak_mib": result["peak_mib"]})
            print(f"{n} patients: {result['seconds']:.1f} s, peak RSS {result['peak_mib']:.0f} MiB", flush=True)
        print(f"\nstart-up and imports of evaluate.py (--help): {startup:.1f} s, included below\n")
        print_table(rows, [("patients", "test patients", "d"), ("slices", "slices", "d"),
                           ("voxels_m", "voxels (M)", ".1f"), ("seconds", "evaluate.py s", ".1f"),
                           ("per_1000_slices", "s / 1000 slices", ".1f"), ("peak_mib", "peak RSS MiB", ".0f")])
        print("\nlast run's table:\n" + result["table"])
        write_json({"machine": info, "flags": FLAGS, "startup_seconds": startup, "runs": rows, **voxels}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
