"""The shared conformance fixtures (made by running the original code) must all pass."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "conformance")
CHECKER = os.path.join(FIXTURES, "check_conformance.py")


@pytest.mark.skipif(not os.path.exists(CHECKER), reason="../shared/conformance is absent (run from a checkout "
                                                       "that has ../shared beside it)")
def test_conformance_fixtures_all_pass():
    proc = subprocess.run([sys.executable, CHECKER, FIXTURES, "--project", ROOT], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed, "\n".join(failed) + proc.stderr
    assert lines[-1].endswith(" passed, 0 failed"), lines[-1]
    assert int(lines[-1].split()[0]) >= 41
    assert proc.returncode == 0
