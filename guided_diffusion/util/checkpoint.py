"""Checkpoint files: atomic saves, safe loads, and finding the newest complete checkpoint.

Files in a log dir, as guided diffusion names them (SPEC section 6a):
``model%06d.pt`` (the network's state dict, loadable by the original code),
``ema_<rate>_%06d.pt`` (EMA weights) and ``opt%06d.pt`` (optimizer state plus
``"step"`` and training state). Everything loads with ``weights_only=True``:
a pickle that would run code is refused.
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


def load_state_dict_into(module: th.nn.Module, path: str, what: str = "model") -> None:
    """Load a state-dict file into ``module`` with ``strict=True`` (see :func:`apply_state_dict`)."""
    apply_state_dict(module, load(path), path, what)


def apply_state_dict(module: th.nn.Module, state, path: str, what: str = "model") -> None:
    """Check ``state`` against ``module`` (:func:`check_state_dict`) and load it with ``strict=True``."""
    check_state_dict(module, state, path, what)
    module.load_state_dict(state, strict=True)


def check_state_dict(module: th.nn.Module, state, path: str, what: str = "model", hint: str | None = None) -> None:
    """Raise a :class:`CheckpointError` naming the file and the flag to check (``hint``, or one
    guessed from the first mismatching key) when ``state`` does not fit ``module``."""
    if not isinstance(state, dict) or not all(isinstance(v, th.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors for the {what}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} "
                         f"in the file vs {tuple(own[wrong[0]].shape)} from the flags")
        if missing:
            parts.append(f"{len(missing)} keys missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        hint = hint or _flag_hint(wrong, missing, unexpected)
        raise CheckpointError(f"{path}: does not fit the {what} built from the flags: "
                              + "; ".join(parts) + f" ({hint})")


def _flag_hint(wrong, missing, unexpected) -> str:
    """Name the flag most likely behind a mismatch."""
    if wrong:
        key = wrong[0]
        if key.startswith("input_blocks.0.0"):
            return "check --dataset (input channels)"
        if key.startswith("out."):
            return "check --learn_sigma (output channels), --dataset and --classifier_pool"
        if key.startswith("label_emb"):
            return "check --class_cond"
        return "check --num_channels / --classifier_width / --channel_mult"
    keys = missing + unexpected
    if any(k.startswith("label_emb") for k in keys):
        return "check --class_cond"
    if any(".qkv." in k or ".norm." in k for k in keys):
        return "check --attention_resolutions / --classifier_attention_resolutions"
    return "check --num_res_blocks / --classifier_depth / --channel_mult / --image_size"


def checkpoint_name(prefix: str, step: int) -> str:
    """The one naming scheme: ``<prefix><step:06d>.pt`` (``model000100.pt``, ``ema_0.9999_000100.pt``)."""
    return f"{prefix}{step:06d}.pt"


def parse_checkpoint_name(name: str) -> tuple[str, int] | None:
    """``(prefix, step)`` of a name made by :func:`checkpoint_name` (a path's folder is ignored), else None."""
    match = _NAME_RE.match(os.path.basename(name))
    if match is None:
        return None
    return match["prefix"], int(match["step"])


def step_of(path: str) -> int:
    """Step number in a checkpoint file name (model000100.pt -> 100)."""
    parsed = parse_checkpoint_name(path)
    if parsed is None:
        raise CheckpointError(f"{path}: expected a name ending in NNNNNN.pt (the training step)")
    return parsed[1]


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
