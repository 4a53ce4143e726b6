"""Suite-wide rules: the conformance check may only be skipped where ../shared is absent; the slice
stores of read-only data folders (the shared reference data) go to a cache folder of the session;
under pytest-xdist (``make test`` runs one worker per core) each worker and the scripts it starts
compute on one thread, so the workers do not fight over the cores."""
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
_skipped_conformance: list[str] = []


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"  # the processes a test starts (scripts, torchrun, mpiexec) inherit it


def pytest_runtest_logreport(report):
    if report.skipped and "test_conformance" in report.nodeid:
        _skipped_conformance.append(report.nodeid)


def _broken() -> bool:
    return bool(_skipped_conformance) and SHARED.is_dir()


def pytest_terminal_summary(terminalreporter):
    if _broken():
        terminalreporter.write_line(f"error: {', '.join(_skipped_conformance)} was skipped although {SHARED} exists: "
                                    "the conformance fixtures must run wherever they are present", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _broken():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    """$XDG_CACHE_HOME of the session (scripts the tests start inherit it), not the user's cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before
