"""Suite-wide rules: the conformance check may only be skipped where ../shared is absent; the slice
stores of read-only data folders (the shared reference data) go to a cache folder of the session;
under pytest-xdist (``make test`` runs one worker per core) each worker and the scripts it starts
compute on one thread, so the workers do not fight over the cores; the longest files are collected first,
so that the workers finish together."""
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
_skipped_conformance: list[str] = []


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        # pytest-xdist would hand out the files with the most tests first (a file of one long test, such as
        # test_detection.py, last of all): keep the order of pytest_collection_modifyitems below instead
        config.option.loadscopereorder = False
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"  # the processes a test starts (scripts, torchrun, mpiexec) inherit it


# make test hands whole files to the pytest-xdist workers (--dist loadfile), each next file to the worker
# that frees up first. The longest files (measured, issue 21) go first, so that the many short ones fill
# in at the end and both workers finish together, instead of one running a long file alone at the end.
LONGEST_FIRST = ("test_distributed.py", "test_pipeline.py", "test_driver.py", "test_precision.py",
                 "test_detection.py", "test_conformance.py", "test_methods.py", "test_visdom_pipeline.py",
                 "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


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
