"""The benchmarks' --strict mode, which benchmarks/gpu_check.sh relies on to fail on a wrong fast path."""
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
