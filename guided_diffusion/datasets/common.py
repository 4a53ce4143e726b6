"""What every loader shares: the data sets' channel names, argument checks, padding, file stems
(images are channel-first)."""
from __future__ import annotations

import os

import numpy as np

from ..util.errors import MissingInputError, UserError

CHANNELS = {"brats": ("t1", "t1ce", "t2", "flair"), "chexpert": ("xray",)}
"""The image channels of each data set, in tensor order (healthy is class 0 in both)."""
DATASETS = tuple(CHANNELS)
"""The values of ``--dataset``."""


def check_dataset_args(directory: str | os.PathLike, image_size: int) -> str:
    """``directory`` as a string once it is a folder and ``image_size`` is positive; else a flag-naming error."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise MissingInputError(f"--data_dir {directory}: no such directory")
    if image_size < 1:
        raise UserError(f"--image_size {image_size}: expected a positive number of pixels")
    return directory


def check_fits(path: str, shape: tuple[int, ...], image_size: int, what: str = "slice") -> None:
    """Images are only padded: one larger than ``image_size`` is an error naming the file."""
    if shape[0] > image_size or shape[1] > image_size:
        raise UserError(
            f"{path}: {what} of {shape[0]}x{shape[1]} is larger than --image_size {image_size} (only padding is done)"
        )


def pad_to_size(array: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the last two axes of ``array`` evenly to ``size`` x ``size``.

    An odd difference puts the extra pixel after (bottom/right). The caller checks
    that the array is not larger than ``size``.
    """
    height, width = array.shape[-2:]
    top, left = (size - height) // 2, (size - width) // 2
    pad = [(0, 0)] * (array.ndim - 2) + [(top, size - height - top), (left, size - width - left)]
    return np.pad(array, pad)


def crop_from_size(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The inverse of :func:`pad_to_size`: the ``height`` x ``width`` centre of the last two axes."""
    size_h, size_w = array.shape[-2:]
    top, left = (size_h - height) // 2, (size_w - width) // 2
    return array[..., top : top + height, left : left + width]


def file_stem(path: str) -> str:
    """The file name without its last suffix (``a/b.c.npy`` -> ``b.c``): a CheXpert image's id."""
    name = os.path.basename(path)
    return name[: name.rfind(".")] if "." in name else name
