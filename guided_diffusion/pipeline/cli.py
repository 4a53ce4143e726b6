"""The scripts' entry point: flags to a typed config, the process group, the log folder, the logger,
Visdom, and one-line errors.

    def main(argv=None):
        return run_script(ImageTrainConfig, train_diffusion_model, argv, __doc__)

    if __name__ == "__main__":
        sys.exit(run_main(main))

:func:`run_main` prints a :class:`~guided_diffusion.util.errors.UserError` (a bad flag or
file) as the one last line ``error: <message>`` and returns 2; every other exception keeps
its traceback. Progress bars are closed (``finally``) before the message is printed.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

from ..util import dist_util, logger
from ..util.errors import Stopped, UserError
from ..util.fileio import ensure_writable_dir
from ..util.flagspec import parse_command, parse_flags
from ..util.monitor import Monitor
from .networks import complete_from_checkpoints


def log_dir_of(cfg, script: str) -> tuple[str, str]:
    """The run's log folder and the flag it comes from: ``--log_dir``; else, for a translation, its
    ``--output_dir`` (the log beside the results); else ``$OPENAI_LOGDIR``; else
    ``results/<script>-<timestamp>``."""
    if cfg.run.log_dir:
        return cfg.run.log_dir, "--log_dir"
    output_dir = getattr(getattr(cfg, "translation", None), "output_dir", "")
    if output_dir:
        return output_dir, "--output_dir"
    return os.environ.get("OPENAI_LOGDIR") or os.path.join(
        "results", f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"), "--log_dir"


def resolve_log_dir(log_dir: str, flag: str = "--log_dir") -> list[str]:
    """Create ``log_dir`` (checked writable); returns the folders created for it, deepest first."""
    created = []
    path = os.path.abspath(log_dir)
    while not os.path.exists(path) and path != os.path.dirname(path):
        created.append(path)
        path = os.path.dirname(path)
    ensure_writable_dir(log_dir, flag)
    return created


def _remove_if_empty(folders: list[str]) -> None:
    """Remove the folders this run created (deepest first) where it left them empty."""
    for folder in folders:
        try:
            os.rmdir(folder)  # only an empty folder goes
        except OSError:
            return


def _description(doc: str | None) -> str:
    return (doc or "").strip()


def run_script(config_cls, run: Callable[..., Any], argv: Sequence[str] | None = None, doc: str | None = None):
    """Parse ``argv`` into ``config_cls``, take the flags it did not give from its checkpoints
    (:func:`~.networks.complete_from_checkpoints`), and call ``run(cfg, monitor=...)`` inside the launch's
    process group (torchrun or mpiexec), with the log folder resolved and the logger configured
    (rank 0 writes). Returns what ``run`` returns."""
    script = config_cls.SCRIPT
    cfg, given = parse_command(config_cls, argv, _description(doc), prog=f"{script}.py")
    cfg = complete_from_checkpoints(cfg, given)  # the network flags not given are the checkpoints'
    dist_util.setup_dist()
    created: list[str] = []
    previous = logger.get_current()
    try:
        main_process = dist_util.is_main_process()
        log_dir, flag = dist_util.broadcast_object(log_dir_of(cfg, script) if main_process else None)  # rank 0's
        created = resolve_log_dir(log_dir, flag)
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, log_dir=log_dir))
        logger.configure(log_dir, enabled=main_process)
        monitor = None
        if main_process and hasattr(cfg, "monitoring"):
            monitor = Monitor.from_flags(cfg.monitoring, env=getattr(config_cls, "VISDOM_ENV", script))
        return run(cfg, monitor=monitor)
    finally:
        logger.set_current(previous)  # the run's log folder is the run's: nothing after it writes there
        if dist_util.is_main_process():
            _remove_if_empty(created)  # a run that stopped before writing leaves no empty folder behind
        dist_util.cleanup()


def run_tool(config_cls, run: Callable[[Any], Any], argv: Sequence[str] | None = None, doc: str | None = None):
    """Parse ``argv`` into ``config_cls`` and call ``run(cfg)``: for the scripts that only read and
    write files (evaluate.py, compare.py, the data preparations), with no process group or log folder."""
    return run(parse_flags(config_cls, argv, _description(doc), prog=f"{config_cls.SCRIPT}.py"))


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's main; a user error prints ``error: ...`` as one line and returns 2; a run stopped by
    a signal after saving its state (:class:`~guided_diffusion.util.errors.Stopped`) says so and returns
    128 + the signal's number."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Stopped as e:  # a signal asked the run to stop, and it saved its state
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
