"""The benchmarks' --strict mode, which benchmarks/gpu_check.sh relies on to fail on a wrong fast path."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_translate(*flags):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_translate.py"), "--tiny", "--device", "cpu",
           "--paths", "base,batch", "--n_images", "2", "--noise_level", "2", "--warmup_level", "1", "--strict", "True",
           *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_strict_benchmark_passes_within_tolerance_and_fails_beyond_it():
    ok = bench_translate()
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "FAILED" not in ok.stdout
    # batch 2 differs from batch 1 by rounding only (measured 3e-7): with every tolerance at 0 it fails
    bad = bench_translate("--tolerance_scale", "0")
    assert bad.returncode == 1
    assert "FAILED path batch: max|diff|" in bad.stdout


def test_data_benchmark_reports_every_path_and_the_wait(tmp_path):
    out = tmp_path / "data.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_data.py"), "--device", "cpu", "--n_slices", "4",
           "--batch_size", "2", "--workers", "0,1", "--min_seconds", "0.01", "--nets", "classifier",
           "--wait_workers", "0,1", "--steps", "1", "--warmup", "1", "--threads", "1", "--json_out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["path"], r["workers"]) for r in result["throughput"]] == [("nifti", 0), ("store", 0), ("store", 1)]
    assert all(r["samples_s"] > 0 for r in result["throughput"]) and result["throughput"][0]["x_nifti"] == 1
    assert [(r["net"], r["workers"]) for r in result["wait"]] == [("classifier", 0), ("classifier", 1)]
    assert all(0 <= r["wait_pct"] <= 100 and r["wait_ms"] <= r["step_ms"] for r in result["wait"])
    assert "x nifti" in run.stdout and "% waiting" in run.stdout
