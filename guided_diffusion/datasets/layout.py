"""The on-disk layouts of SPEC section 5: file names (made and parsed here only) and crash-safe writers.

BRATS: one leaf folder per slice holding ``brats_train_<patient>_<seq>_<slice>_w.nii.gz`` for
seq in t1, t1ce, t2, flair (and seg in training); test ground truths may sit in a label
folder as ``<leaf>-label.nii.gz``. Writers stage a whole run in a hidden folder inside the
output folder and move it into place only when everything succeeded.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from ..util.errors import UserError
from ..util.fileio import atomic_write
from .common import CHANNELS
from .nifti import write_nifti_gz

MODALITIES = CHANNELS["brats"]
"""Channel order of a BRATS image tensor."""

SEG = "seg"
SPLIT_FILE = "split.json"

TRAINING, VALIDATION, TESTING = "training", "validation", "testing"
PARTS = (TRAINING, VALIDATION, TESTING)
"""The parts a preparation writes, each a folder usable as --data_dir; a patient is in one part only."""

CHEXPERT_CLASSES = ("healthy", "diseased")
"""CheXpert class folders inside each part; healthy is class 0 (SPEC section 1)."""

TEST_LABELS = "test_labels"
"""The label folder of the test leaves (the original's layout, for --label_dir)."""

_SLICE_FILE = re.compile(r"^(?P<patient>.+)_(?P<seq>t1|t1ce|t2|flair|seg)_(?P<slice>\d+)_w\.nii\.gz$")


class SliceFile(NamedTuple):
    """What a BRATS slice file name says."""

    patient: str  # everything before <seq>: brats_train_<patient>
    seq: str
    slice: int


def brats_slice_filename(patient: str, seq: str, slice_index: int) -> str:
    """``brats_train_<patient>_<seq>_<slice>_w.nii.gz``, the slice is zero-padded to 3 digits."""
    return f"brats_train_{patient}_{seq}_{slice_index:03d}_w.nii.gz"


def parse_brats_slice_filename(name: str) -> SliceFile | None:
    """(patient, seq, slice) of a file named by :func:`brats_slice_filename`; None for other names."""
    match = _SLICE_FILE.match(name)
    if match is None:
        return None
    return SliceFile(match["patient"], match["seq"], int(match["slice"]))


def leaf_name(number: int) -> str:
    """The 6-digit leaf folder name of running number ``number`` (1-based)."""
    return f"{number:06d}"


def label_filename(leaf: str) -> str:
    """File name of a leaf's ground truth in a label folder (``test_labels``)."""
    return f"{leaf}-label.nii.gz"


def write_brats_leaf(
    folder: str, patient: str, slice_index: int, channels: dict[str, np.ndarray], seg: np.ndarray | None
) -> None:
    """Write one slice as a leaf folder: the four modalities and, if given, ``seg``."""
    os.makedirs(folder, exist_ok=True)
    for seq in MODALITIES:
        write_nifti_gz(os.path.join(folder, brats_slice_filename(patient, seq, slice_index)), channels[seq])
    if seg is not None:
        write_nifti_gz(os.path.join(folder, brats_slice_filename(patient, SEG, slice_index)), seg)


def chexpert_image_filename(patient: str, study: str) -> str:
    """``<patient>_<study>.npy``, the file of one CheXpert study, e.g. ``patient00001_study1.npy``."""
    return f"{patient}_{study}.npy"


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` through an atomic write."""
    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_json(path: str, value: dict) -> None:
    """Deterministic JSON (sorted keys, fixed indentation), written atomically."""
    with atomic_write(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------
# Output folders: refuse stray files, stage, then commit.


def check_no_stray_files(out: str, planned: Iterable[str], roots: Iterable[str] = ("",)) -> None:
    """Raise if ``out/<root>`` holds a file that is not in ``planned`` (paths relative to ``out``).

    Hidden files and folders (names starting with '.') are ignored.
    """
    planned = set(os.path.normpath(p) for p in planned)
    for root in roots:
        top = os.path.join(out, root)
        if not os.path.isdir(top):
            continue
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                relative = os.path.normpath(os.path.relpath(os.path.join(folder, name), out))
                if relative not in planned:
                    raise UserError(
                        f"--out {out}: already holds {relative}, which this run would not write "
                        "(an earlier run with other settings?); use an empty folder or remove the old files"
                    )


@contextlib.contextmanager
def staged_output(out: str) -> Iterator[str]:
    """Yield a hidden staging folder inside ``out``; move its contents into ``out`` on success.

    On an exception the staging folder is removed, and so are the folders this
    call created for ``out`` itself, so a failed run leaves no trace.
    """
    created = _missing_folders(out)
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=out)
    try:
        yield staging
        _move_tree(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _missing_folders(path: str) -> list[str]:
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _move_tree(source: str, target: str) -> None:
    for folder, subfolders, files in os.walk(source):
        subfolders.sort()
        destination = os.path.join(target, os.path.relpath(folder, source))
        os.makedirs(destination, exist_ok=True)
        for name in sorted(files):
            os.replace(os.path.join(folder, name), os.path.join(destination, name))
