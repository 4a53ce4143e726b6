"""BRATS slices in the layout of the original code (SPEC section 5).

Every leaf folder of the tree holds one axial slice as separate NIfTI files::

    <leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz    seq in t1, t1ce, t2, flair[, seg]

Training leaves carry a ``seg`` file; test leaves may not, and then their ground
truth is ``<label_dir>/<leaf>-label.nii.gz`` (SPEC section 6a; the original read
it from a hard-coded relative path, SPEC section 10).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..util.errors import MissingInputError, UserError
from .common import check_dataset_args, check_fits, pad_to_size
from .layout import MODALITIES, SEG, parse_brats_slice_filename
from .nifti import read_nifti

# Values may exceed [0, 1] by this much (float round-off of the normalisation).
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class _Leaf:
    id: str
    folder: str
    patient: str  # the <patient> part of the file names
    slice: int  # the <slice> part: the axial slice number
    modalities: tuple[str, ...]  # paths in MODALITIES order
    ground_truth: str  # seg file of the leaf or <label_dir>/<leaf>-label.nii.gz


class BRATSDataset(Dataset):
    """Four-channel BRATS slices, zero-padded to ``image_size``.

    Item ``i`` is ``(image, info)``:

    - ``image``: float32 tensor (4, S, S), channels t1, t1ce, t2, flair, values in
      [0, 1]; a slice of H x W is zero-padded evenly on each side (240 -> 256 adds 8
      pixels per side; an odd difference puts the extra pixel after).
    - ``info``: ``{"y": 1 if the ground truth has any tumour pixel else 0 (healthy),
      "id": leaf folder name, "gt": float32 (S, S) tumour mask of 0/1 padded like the
      image, "has_gt": True, "patient": the <patient> of the file names, "slice": their
      <slice> number}``.

    The constructor only lists files, so memory stays flat for any number of slices;
    each item is read and checked when it is loaded (2-D, same shape in every file,
    finite, within [0, 1], not larger than ``image_size``). This is the reader of the
    NIfTI files; the scripts serve its items from the slice store (:mod:`.store`),
    which reads and checks every item once, when it is built.

    Args:
        directory: root of the tree; leaf folders at any depth are found by walking
            it in sorted order.
        label_dir: folder of ``<leaf>-label.nii.gz`` ground truths for leaves that
            hold no seg file (BRATS test folders).
        image_size: side S of the padded output.
    """

    def __init__(self, directory: str | os.PathLike, label_dir: str | os.PathLike | None = None, image_size: int = 256):
        super().__init__()
        directory = check_dataset_args(directory, image_size)
        if label_dir is not None:
            label_dir = os.fspath(label_dir)
            if not os.path.isdir(label_dir):
                raise MissingInputError(f"--label_dir {label_dir}: no such directory")
        self.directory = directory
        self.label_dir = label_dir
        self.image_size = image_size
        if not any(not name.startswith(".") for name in os.listdir(directory)):
            raise UserError(f"--data_dir {directory}: empty directory (expected leaf folders of *_w.nii.gz files)")
        self._leaves = [_list_leaf(folder, label_dir) for folder in _leaf_folders(directory)]
        _check_unique_ids(self._leaves)

    @property
    def ids(self) -> list[str]:
        """Leaf folder names, in item order."""
        return [leaf.id for leaf in self._leaves]

    @property
    def patients(self) -> list[str]:
        """The patient of each item (``<patient>`` of its file names), for patient-level splits."""
        return [leaf.patient for leaf in self._leaves]

    @property
    def slices(self) -> list[int]:
        """The axial slice number of each item (``<slice>`` of its file names)."""
        return [leaf.slice for leaf in self._leaves]

    def item_file(self, index: int) -> str:
        """The file an error about item ``index`` as a whole names (its first modality)."""
        return self._leaves[index].modalities[0]

    def __len__(self) -> int:
        return len(self._leaves)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, mask = self.read_item(index)
        check_fits(self.item_file(index), image.shape[1:], self.image_size)
        mask = pad_to_size(mask.astype(np.float32), self.image_size)  # (S, S)
        return network_input(image, self.image_size), self.info(index, mask)

    def read_item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The unpadded, checked slice ``index``: ``(image float32 (4, H, W) clipped to [0, 1],
        tumour mask uint8 (H, W) of 0/1)``; the values an item is made of (the slice store keeps them)."""
        leaf = self._leaves[index]
        channels = [_read_slice(path) for path in leaf.modalities]
        shape = channels[0].shape
        for path, channel in zip(leaf.modalities, channels):
            if channel.shape != shape:
                raise UserError(
                    f"{path}: slice shape {channel.shape} differs from {shape} "
                    f"of {os.path.basename(leaf.modalities[0])}"
                )
            _check_unit_range(path, channel)
        ground_truth = _read_slice(leaf.ground_truth)
        if ground_truth.shape != shape:
            raise UserError(
                f"{leaf.ground_truth}: ground truth shape {ground_truth.shape} differs from image shape {shape}"
            )
        return unit_image(np.stack(channels)), (ground_truth > 0).astype(np.uint8)  # (4, H, W), (H, W)

    def info(self, index: int, mask: np.ndarray) -> dict:
        """The ``info`` of item ``index`` around its padded float32 ``mask`` (S, S)."""
        leaf = self._leaves[index]
        return {"y": int(mask.any()), "id": leaf.id, "gt": torch.from_numpy(mask), "has_gt": True,
                "patient": leaf.patient, "slice": leaf.slice}

    def source_files(self) -> list[str]:
        """Every file the items are read from (modalities and ground truths), in item order."""
        return [path for leaf in self._leaves for path in (*leaf.modalities, leaf.ground_truth)]


def unit_image(channels: np.ndarray) -> np.ndarray:
    """``channels`` (C, H, W) clipped to [0, 1] and stored as float32 (clipping in float64 then
    rounding equals rounding then clipping: 0 and 1 are exact in float32)."""
    return np.clip(channels, 0.0, 1.0).astype(np.float32)


def network_input(channels: np.ndarray, image_size: int) -> torch.Tensor:
    """What the networks see of one slice: :func:`unit_image` of ``channels`` zero-padded evenly to
    (C, S, S) (:func:`pad_to_size`). The loader (through the slice store) and detect.py both make it."""
    return torch.from_numpy(pad_to_size(unit_image(channels), image_size))


def _leaf_folders(directory: str) -> list[str]:
    """Folders without subfolders under ``directory`` (itself included), sorted by path."""
    leaves = []
    for folder, subfolders, _ in os.walk(directory):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if not subfolders:
            leaves.append(folder)
    return sorted(leaves)


def _list_leaf(folder: str, label_dir: str | None) -> _Leaf:
    leaf_id = os.path.basename(os.path.normpath(folder))
    found: dict[str, str] = {}
    patient, slice_index = "", -1
    for name in sorted(os.listdir(folder)):
        parsed = parse_brats_slice_filename(name)
        if parsed is None:
            continue
        seq = parsed.seq
        if seq in found:
            raise UserError(
                f"{folder}: two {seq} files ({os.path.basename(found[seq])} and {name}); expected one per leaf"
            )
        found[seq] = os.path.join(folder, name)
        if patient and (parsed.patient, parsed.slice) != (patient, slice_index):
            raise UserError(f"{folder}: files of two slices ({patient} slice {slice_index} and {parsed.patient} "
                            f"slice {parsed.slice}); expected one slice")
        patient, slice_index = parsed.patient, parsed.slice
    missing = [seq for seq in MODALITIES if seq not in found]
    if missing:
        raise MissingInputError(
            f"{folder}: no *_{missing[0]}_*_w.nii.gz file (expected brats_train_<patient>_<seq>_<slice>_w.nii.gz "
            f"for seq in {', '.join(MODALITIES)}; found {', '.join(sorted(os.listdir(folder))) or 'nothing'})"
        )
    if SEG in found:
        ground_truth = found[SEG]
    elif label_dir is None:
        raise MissingInputError(
            f"{folder}: leaf {leaf_id} has no seg file; pass --label_dir with {leaf_id}-label.nii.gz"
        )
    else:
        ground_truth = os.path.join(label_dir, f"{leaf_id}-label.nii.gz")
        if not os.path.isfile(ground_truth):
            raise MissingInputError(
                f"{ground_truth}: no such file (leaf {folder} has no seg file, so --label_dir must hold its label)"
            )
    return _Leaf(leaf_id, folder, patient, slice_index, tuple(found[seq] for seq in MODALITIES), ground_truth)


def _check_unique_ids(leaves: list[_Leaf]) -> None:
    first: dict[str, str] = {}
    for leaf in leaves:
        if leaf.id in first:
            raise UserError(
                f"{leaf.folder}: leaf name {leaf.id} repeats {first[leaf.id]}; slice identifiers must be unique"
            )
        first[leaf.id] = leaf.folder


def _read_slice(path: str) -> np.ndarray:
    """One 2-D slice (a trailing singleton axis is dropped), finite."""
    array = read_nifti(path)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise UserError(f"{path}: expected a 2-D slice, found an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise UserError(f"{path}: {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def _check_unit_range(path: str, array: np.ndarray) -> None:
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise UserError(f"{path}: expected values in [0, 1], found [{low:g}, {high:g}]")
