"""Suite-wide rules: the conformance check may only be skipped where ../shared is absent."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
_skipped_conformance: list[str] = []


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
