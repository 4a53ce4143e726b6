"""CheXpert images in the layout of SPEC section 5: ``<split>/healthy/*`` and ``<split>/diseased/*``."""
from __future__ import annotations

import os
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..util.errors import MissingInputError, UserError
from .common import check_dataset_args, check_fits, file_stem, pad_to_size

CLASSES = {"healthy": 0, "diseased": 1}
"""CheXpert class folders and their labels; healthy is class 0 (SPEC section 1)."""

IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")


class CheXpertDataset(Dataset):
    """One-channel chest X-rays from ``<directory>/healthy`` and ``<directory>/diseased``.

    The label comes from the folder name (healthy = 0, diseased = 1), never from a
    folder's position in a listing; one sorted list holds (path, label) pairs, so a
    path cannot drift away from its label (both were defects of the original, SPEC
    section 10).

    Files and axis order:

    - ``.npy``: uint8 of shape H x W x 1 or H x W (rows, columns[, channel]); a
      float array is accepted when its values lie in [0, 1].
    - ``.png``/``.jpg``/``.jpeg``: read with Pillow, converted to 8-bit grayscale
      ("L") and taken as H x W (rows, columns), the same orientation as ``.npy``.

    Item ``i`` is ``(image, info)``: ``image`` is float32 (1, S, S) in [0, 1]
    (uint8 / 255), zero-padded evenly to ``image_size`` when smaller (larger is an
    error); ``info`` is ``{"y": label, "id": file stem, "gt": zeros (S, S),
    "has_gt": False, "patient": the patientNNNNN the stem starts with, "slice": -1}``.
    """

    def __init__(self, directory: str | os.PathLike, image_size: int = 256):
        super().__init__()
        directory = check_dataset_args(directory, image_size)
        self.directory = directory
        self.image_size = image_size
        pairs = []
        for class_name, label in CLASSES.items():
            folder = os.path.join(directory, class_name)
            if not os.path.isdir(folder):
                raise MissingInputError(
                    f"--data_dir {directory}: no {class_name}/ folder (expected healthy/ and diseased/ subfolders)"
                )
            for name in os.listdir(folder):
                if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                    pairs.append((os.path.join(folder, name), label))
        if not pairs:
            raise UserError(
                f"--data_dir {directory}: no images in healthy/ or diseased/ "
                f"(expected {', '.join(IMAGE_SUFFIXES)} files)"
            )
        self._items: list[tuple[str, int]] = sorted(pairs)
        _check_unique_stems([path for path, _ in self._items])

    @property
    def ids(self) -> list[str]:
        """File stems, in item order."""
        return [file_stem(path) for path, _ in self._items]

    @property
    def patients(self) -> list[str]:
        """The patient of each item: the ``patientNNNNN`` that starts CheXpert file names, else the file stem."""
        return [_patient(file_stem(path)) for path, _ in self._items]

    @property
    def labels(self) -> list[int]:
        """Class of each item (healthy = 0, diseased = 1), known without loading images."""
        return [label for _, label in self._items]

    @property
    def slices(self) -> list[int]:
        """-1 for every item (an X-ray is not a slice)."""
        return [-1] * len(self._items)

    def item_file(self, index: int) -> str:
        """The file of item ``index``."""
        return self._items[index][0]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, _ = self.read_item(index)
        check_fits(self.item_file(index), image.shape[1:], self.image_size, what="image")
        return torch.from_numpy(pad_to_size(image, self.image_size)), self.info(index)

    def read_item(self, index: int) -> tuple[np.ndarray, None]:
        """The unpadded, checked image ``index``: ``(float32 (1, H, W) in [0, 1], None)`` (no ground truth)."""
        return _read_image(self._items[index][0]).astype(np.float32)[None], None

    def info(self, index: int, mask: np.ndarray | None = None) -> dict:
        """The ``info`` of item ``index`` (CheXpert has no ground truth: ``gt`` is zeros)."""
        stem = file_stem(self._items[index][0])
        return {"y": self._items[index][1], "id": stem, "gt": torch.zeros(self.image_size, self.image_size),
                "has_gt": False, "patient": _patient(stem), "slice": -1}

    def source_files(self) -> list[str]:
        """Every file the items are read from, in item order."""
        return [path for path, _ in self._items]


_PATIENT = re.compile(r"^(patient\d+)(?=_|$)")


def _patient(stem: str) -> str:
    match = _PATIENT.match(stem)
    return match[1] if match else stem


def _check_unique_stems(paths: list[str]) -> None:
    first: dict[str, str] = {}
    for path in paths:
        stem = file_stem(path)
        if stem in first:
            raise UserError(f"{path}: file name {stem} repeats {first[stem]}; image identifiers must be unique")
        first[stem] = path


def _read_image(path: str) -> np.ndarray:
    """A 2-D float64 image in [0, 1], rows x columns."""
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path}: not a readable .npy array ({e})") from e
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise UserError(f"{path}: expected an H x W x 1 or H x W array, found shape {array.shape}")
        if array.dtype == np.uint8:
            return array / 255.0
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise UserError(f"{path}: NaN or infinite values")
            if array.min() < 0.0 or array.max() > 1.0:
                raise UserError(
                    f"{path}: expected float values in [0, 1], found [{array.min():g}, {array.max():g}]"
                )
            return array.astype(np.float64)
        raise UserError(f"{path}: expected uint8 (or float in [0, 1]) values, found {array.dtype}")
    try:
        with Image.open(path) as picture:
            if picture.mode in ("I", "I;16", "I;16B", "F"):
                raise UserError(f"{path}: expected an 8-bit image, found Pillow mode {picture.mode}")
            array = np.asarray(picture.convert("L"))  # (H, W) uint8
    except OSError as e:
        raise UserError(f"{path}: not a readable image ({e})") from e
    return array / 255.0
