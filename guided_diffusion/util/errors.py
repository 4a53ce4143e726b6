"""The user-error family: bad flags and bad files.

Every script's entry point (:func:`guided_diffusion.pipeline.cli.run_main`) prints a
:class:`UserError` as one line, ``error: <message>``, and exits with status 2; any other
exception is a bug and keeps its traceback. A message names the flag or the file, what was
expected and what was found.
"""
from __future__ import annotations


class UserError(ValueError):
    """A flag or an input file that cannot be used; the message says which and why."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder named by a flag (or found through one) does not exist."""


class WriteError(UserError):
    """An output file could not be written (full disk, read-only file system); names the file."""


class Stopped(Exception):
    """A run stopped on request (a signal) after saving its state; not an error. The entry point
    prints the message and exits with status 128 + the signal's number, as a shell reports a signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
