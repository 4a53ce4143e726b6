"""Checkpoint files: atomic saves, safe loads, and finding the newest complete checkpoint.

Files in a log dir, as guided diffusion names them (SPEC section 6a):
``model%06d.pt`` (the network's state dict, loadable by the original code),
``ema_<rate>_%06d.pt`` (EMA weights) and ``opt%06d.pt`` (optimizer state plus
``"step"`` and training state). Everything loads with ``weights_only=True``:
a pickle that would run code is refused. Whether a state dict fits a network, and which flags
its tensor shapes tell, is :mod:`guided_diffusion.unet_forensics`.
"""
from __future__ import annotations

import io
import os
import re
import warnings
import zipfile

import torch as th

from .errors import UserError
from .fileio import atomic_save_bytes


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file."""


_NAME_RE = re.compile(r"^(?P<prefix>.*?)(?P<step>\d{6,})\.pt$")


def save(obj, path: str) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a partial checkpoint."""
    buf = io.BytesIO()
    th.save(obj, buf)
    atomic_save_bytes(path, buf.getvalue())


def load(path: str, map_location="cpu"):
    """Load a checkpoint safely (``weights_only=True``) with a clear error naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return th.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects, not just tensors "
                "(only weights_only checkpoints are accepted, since unpickling can run code)") from None
        if isinstance(e, (zipfile.BadZipFile, EOFError, RuntimeError, OSError)) or "zip" in text.lower():
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                                  f"{text.splitlines()[0] if text else ''})") from None
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(e).__name__}: {text})") from None


def checkpoint_name(prefix: str, step: int) -> str:
    """The one naming scheme: ``<prefix><step:06d>.pt`` (``model000100.pt``, ``ema_0.9999_000100.pt``)."""
    return f"{prefix}{step:06d}.pt"


def parse_checkpoint_name(name: str) -> tuple[str, int] | None:
    """``(prefix, step)`` of a name made by :func:`checkpoint_name` (a path's folder is ignored), else None."""
    match = _NAME_RE.match(os.path.basename(name))
    if match is None:
        return None
    return match["prefix"], int(match["step"])


def list_checkpoints(log_dir: str, prefix: str = "model") -> list[tuple[int, str]]:
    """(step, path) of every ``<prefix>NNNNNN.pt`` in ``log_dir``, newest first."""
    if not os.path.isdir(log_dir):
        return []
    found = []
    for name in os.listdir(log_dir):
        parsed = parse_checkpoint_name(name)
        if parsed is not None and parsed[0] == prefix:
            found.append((parsed[1], os.path.join(log_dir, name)))
    return sorted(found, reverse=True)


def remove_stale_temporaries(log_dir: str) -> list[str]:
    """Delete temporary files that a killed run left half-written (``.<name>.<random>.tmp``)."""
    removed = []
    if os.path.isdir(log_dir):
        for name in os.listdir(log_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(log_dir, name))
                removed.append(name)
    return removed
