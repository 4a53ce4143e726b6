"""Shared plumbing of the command-line scripts: parsers from defaults dicts, log dirs,
and one-line errors for user mistakes (no traceback)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Sequence

from ..script_util import add_dict_to_argparser
from ..util.errors import UserError
from ..util.fileio import ensure_writable_dir
from ..util.monitor import MONITOR_DEFAULTS


def common_defaults() -> dict:
    """Flags every script accepts (SPEC section 6a)."""
    return dict(
        data_dir="",
        dataset="brats",
        log_dir="",
        seed=0,
        device="",
        progress=True,
        **MONITOR_DEFAULTS,  # --visdom, --visdom_server, --visdom_port, --visdom_every
    )


def build_parser(description: str, *defaults: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    merged: dict = {}
    for d in defaults:
        merged.update(d)
    add_dict_to_argparser(parser, merged)
    return parser


def resolve_log_dir(args, script: str) -> str:
    """--log_dir, else $OPENAI_LOGDIR, else results/<script>-<timestamp>."""
    if not args.log_dir:
        args.log_dir = os.environ.get("OPENAI_LOGDIR") or os.path.join(
            "results", f"{script}-{time.strftime('%Y%m%d-%H%M%S')}")
    ensure_writable_dir(args.log_dir, "--log_dir")
    return args.log_dir


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's main; user errors print ``error: ...`` on one line and return 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
