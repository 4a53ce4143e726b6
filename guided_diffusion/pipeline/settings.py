"""The settings a translation folder was made with: a folder is never relabelled.

The first translation into an ``--output_dir`` writes ``settings.json`` there (atomically, before
its first result): the script and the flags that define the results, as a flag dictionary
(:func:`~guided_diffusion.util.flagspec.flag_dict`). A rerun with the same settings resumes the
folder (finished images are skipped); a rerun with other settings stops with a
:class:`~guided_diffusion.util.errors.UserError` naming the folder and every differing flag with
its old and new value, instead of writing new images beside old ones under the new flags' name.

Every flag defines the results except those in :data:`NOT_SETTINGS` (each with the reason it
does not change a result file). A folder written before ``settings.json`` existed is compared
with the flags its ``summary.json`` recorded.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ..evaluation.results import SUMMARY_JSON
from ..util import dist_util
from ..util.errors import UserError
from ..util.fileio import atomic_write, ensure_writable_dir
from ..util.flags import EvaluationFlags, MonitorFlags
from ..util.flagspec import config_defaults, flag_dict, flag_text, from_dict

SETTINGS_JSON = "settings.json"

NOT_SETTINGS: dict[str, str] = {
    "log_dir": "where log.txt goes",
    "output_dir": "the folder itself",
    "progress": "a progress bar",
    "num_samples": "how many images are translated, not how each one is",
    "batch_size": "each image is translated on its own (per-image noise generators, per-image classifier "
                  "gradients): a batch changes float rounding only (tests/test_distributed.py)",
    "num_workers": "data loading",
    "device": "the hardware; the arithmetic is --precision's, which is a setting",
    "compile": "the same operations fused into other kernels (float rounding only)",
    "channels_last": "the same operations on another memory layout (float rounding only)",
    # the scoring: every translation run, and evaluate.py, rescore the whole folder with the flags given
    **{f.name: "scoring, redone over the whole folder by every run" for f in dataclasses.fields(EvaluationFlags)},
    **{f.name: "Visdom" for f in dataclasses.fields(MonitorFlags)},
}
"""Flags that do not change a translation's result files, so a rerun with other values resumes."""

_PATHS = ("model_path", "classifier_path", "data_dir", "label_dir")  # compared as absolute paths


def result_settings(cfg) -> dict[str, Any]:
    """The flags of a translation config that define its results (paths made absolute)."""
    out = {}
    for name, value in flag_dict(cfg).items():
        if name in NOT_SETTINGS:
            continue
        if name in _PATHS and value:
            value = tuple(map(os.path.abspath, value)) if isinstance(value, tuple) else os.path.abspath(value)
        out[name] = value
    return out


def _stored(folder: str, config_cls) -> tuple[str, str, dict[str, Any]] | None:
    """(file, script, settings) the folder's results were made with, or None for a folder without results
    (whose settings.json, if any, is then of no consequence)."""
    if not any(name.endswith(".npz") for name in os.listdir(folder)):
        return None
    path = os.path.join(folder, SETTINGS_JSON)
    if os.path.exists(path):
        try:
            with open(path) as f:
                record = json.load(f)
            script, flags = record["script"], record["flags"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a settings file of this project ({e}); delete it only if every result "
                            "in the folder was made with the flags given now") from None
        if script != config_cls.SCRIPT:
            return path, script, flags
        return path, script, result_settings(from_dict(config_cls, flags, where=path))
    path = os.path.join(folder, SUMMARY_JSON)
    try:  # a folder written before settings.json: the flags its summary recorded
        with open(path) as f:
            flags = json.load(f)["flags"]
        taken = flag_dict(config_defaults(config_cls))
        flags = {name: value for name, value in flags.items() if name in taken}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"--output_dir {folder}: holds results whose settings were not recorded (no {SETTINGS_JSON}, "
                        f"no flags in {SUMMARY_JSON}); use another --output_dir") from None
    return path, config_cls.SCRIPT, result_settings(from_dict(config_cls, flags, where=path))


def claim_output_dir(folder: str, cfg) -> None:
    """Check that ``folder`` holds no results of other settings than ``cfg``'s; record them in a folder
    without results (rank 0 writes; every rank checks, so all ranks stop alike).

    :raises UserError: naming the folder and each differing flag (old and new value).
    """
    ensure_writable_dir(folder, "--output_dir")
    config_cls = type(cfg)
    current = result_settings(cfg)
    stored = _stored(folder, config_cls)
    if stored is None:
        if dist_util.is_main_process():
            with atomic_write(os.path.join(folder, SETTINGS_JSON), "w") as f:
                json.dump({"script": config_cls.SCRIPT, "flags": current}, f, indent=2)
                f.write("\n")
        dist_util.barrier()  # no rank writes a result before the settings are on disk
        return
    path, script, old = stored
    if script != config_cls.SCRIPT:
        raise UserError(f"--output_dir {folder}: holds the results of {script}.py ({path}), not of "
                        f"{config_cls.SCRIPT}.py; use another --output_dir")
    differ = [name for name in current if name in old and old[name] != current[name]]
    if differ:
        changes = ", ".join(f"--{n} {_shown(old[n])} (now {_shown(current[n])})" for n in differ)
        raise UserError(f"--output_dir {folder}: holds results made with other settings ({path}): {changes}; "
                        "rerun with those flags to resume, or use another --output_dir")


def _shown(value: Any) -> str:
    return flag_text(value) or "none"  # an empty flag, as --help says it
