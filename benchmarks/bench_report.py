"""Benchmark: the page of a BraTS2020-sized test split (report.html) opened in headless Chromium.

    python benchmarks/bench_report.py                 # 40 patients x 49 slices (1,960), 64x64
    python benchmarks/bench_report.py --patients 4    # a quick run

Generates the result files of ``--patients`` patients with bench_evaluate.py's generator, runs
the real ``scripts/evaluate.py --protocol slice`` in a fresh process (the heaviest page: one row
and one thumbnail per slice) and prints the wall time of that process, the size of report.html,
then opens the page from disk in the system's Chromium (/usr/bin/chromium, driven by playwright)
and prints the time to its ``load`` event and to the first screenful of thumbnails decoded, the
number of images the browser fetched (lazy loading: the screenful, not all), and any console error.
The thumbnails are 64 pixels whatever the slices' size, so ``--size`` only changes the evaluation.
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
import torch as th

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _common import machine_info  # noqa: E402
from bench_evaluate import write_patient  # noqa: E402

REPO = Path(HERE).parent
CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--slices", type=int, default=49)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    info = machine_info(th.device("cpu"))
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, load {info['loadavg_1m']:.2f}; {args.patients} patients x "
          f"{args.slices} slices of {args.size}x{args.size}")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        for p in range(args.patients):
            write_patient(folder, f"BraTS20_Training_{p:03d}", args.slices, args.size, rng)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(folder), "--protocol", "slice"],
                       check=True, capture_output=True, env=env)
        evaluate_s = time.perf_counter() - start
        page_path = folder / "report.html"
        print(f"evaluate.py (panels, thumbnails, report.html included): {evaluate_s:.1f} s; report.html "
              f"{page_path.stat().st_size / 1e6:.2f} MB for {args.patients * args.slices} slices")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors, images = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: images.append(r.url) if r.url.endswith(".png") else None)
            start = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="load")
            loaded = time.perf_counter() - start
            page.evaluate("document.querySelector('table.cases').scrollIntoView()")
            page.wait_for_function("Array.from(document.querySelectorAll('table.cases img')).slice(0, 10)"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            shown = time.perf_counter() - start
            print(f"Chromium: load event {loaded:.2f} s, first thumbnails of the table decoded {shown:.2f} s; "
                  f"{len(images)} PNGs fetched of {args.patients * args.slices + 2}; console errors: {errors or 'none'}")
            browser.close()


if __name__ == "__main__":
    main()
