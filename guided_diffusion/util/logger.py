"""Run logging: key/value diagnostics per log step, one line on stdout and in ``log.txt``, a row of
``progress.csv``.

Keeps guided diffusion's public calls (``configure``, ``logkv``, ``logkv_mean``,
``dumpkvs``, ``log``, ``get_dir``) but nothing happens at import: ``configure``
is called from a script's ``main()``; before that, the calls print to stdout only.
Only the process that configures with ``enabled=True`` writes files (rank 0).
"""
from __future__ import annotations

import csv
import os
import sys
import time
from collections import defaultdict


class Logger:
    def __init__(self, dir: str | None = None, enabled: bool = True, stdout: bool = True):
        self.dir = dir
        self.enabled = enabled
        self.stdout = stdout and enabled
        self.name2val: dict = {}
        self.name2cnt: dict = defaultdict(int)
        self._csv_keys: list[str] = []
        if dir is not None and enabled:
            os.makedirs(dir, exist_ok=True)

    # -- key/values
    def logkv(self, key: str, val) -> None:
        self.name2val[key] = val

    def logkv_mean(self, key: str, val) -> None:
        n = self.name2cnt[key]
        old = self.name2val.get(key, 0.0)
        self.name2val[key] = old * n / (n + 1) + float(val) / (n + 1)
        self.name2cnt[key] = n + 1

    def dumpkvs(self) -> dict:
        """Write the values logged since the last call as one line (``step 20 | loss 0.0412 | ...``,
        the step first) to stdout and ``log.txt``, and as a row of ``progress.csv``; return them."""
        row = dict(self.name2val)
        if self.enabled and row:
            line = " | ".join(f"{k} {_fmt(row[k])}" for k in sorted(row, key=lambda k: (k != "step", k)))
            if self.stdout:
                print(line, flush=True)
            if self.dir is not None:
                self._append_text(line)
                self._append_csv(row)
        self.name2val.clear()
        self.name2cnt.clear()
        return row

    def _append_csv(self, row: dict) -> None:
        path = os.path.join(self.dir, "progress.csv")
        new_keys = [k for k in sorted(row) if k not in self._csv_keys]
        if new_keys or not os.path.exists(path):
            # header changed: rewrite the file with the union of columns
            old_rows = []
            if os.path.exists(path) and self._csv_keys:
                with open(path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self._csv_keys += new_keys
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._csv_keys)
                w.writeheader()
                w.writerows(old_rows)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_keys).writerow({k: row.get(k, "") for k in self._csv_keys})

    # -- free text
    def log(self, *args) -> None:
        if not self.enabled:
            return
        msg = " ".join(str(a) for a in args)
        if self.stdout:
            print(msg, flush=True)
        if self.dir is not None:
            self._append_text(msg)

    def _append_text(self, msg: str) -> None:
        with open(os.path.join(self.dir, "log.txt"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


_current: Logger | None = None


def configure(dir: str | None = None, enabled: bool = True, stdout: bool = True) -> Logger:
    """Make a logger writing to ``dir`` the current one and return it."""
    global _current
    _current = Logger(dir, enabled=enabled, stdout=stdout)
    return _current


def set_current(current: Logger | None) -> None:
    """Make ``current`` the current logger again (a script's run hands back the one it replaced)."""
    global _current
    _current = current


def get_current() -> Logger:
    global _current
    if _current is None:
        _current = Logger(None)
    return _current


def get_dir() -> str | None:
    return get_current().dir


def logkv(key, val):
    get_current().logkv(key, val)


def logkv_mean(key, val):
    get_current().logkv_mean(key, val)


def dumpkvs():
    return get_current().dumpkvs()


def log(*args):
    get_current().log(*args)


def warn(*args):
    print("warning:", *args, file=sys.stderr, flush=True)
