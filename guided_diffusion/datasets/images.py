"""CheXpert images, the dataset factory and the training batch stream (SPEC section 5).

``load_data`` feeds the training scripts. Its order of samples is a documented
function of (seed, batch size, shard), so a resumed or multi-process run sees
exactly the batches an uninterrupted single-process run would have seen.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..util.errors import MissingInputError, UserError
from .brats import BRATSDataset, check_dataset_args, check_fits, pad_to_size

DATASETS = ("brats", "chexpert")

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
    "has_gt": False}``.
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
        return [_stem(path) for path, _ in self._items]

    @property
    def patients(self) -> list[str]:
        """The patient of each item: the ``patientNNNNN`` that starts CheXpert file names, else the file stem."""
        return [_patient(_stem(path)) for path, _ in self._items]

    @property
    def labels(self) -> list[int]:
        """Class of each item (healthy = 0, diseased = 1), known without loading images."""
        return [label for _, label in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        path, label = self._items[index]
        image = _read_image(path)  # (H, W) in [0, 1]
        check_fits(path, image.shape, self.image_size, what="image")
        image = pad_to_size(image, self.image_size)[None]  # (1, S, S)
        info = {
            "y": label,
            "id": _stem(path),
            "gt": torch.zeros(self.image_size, self.image_size),
            "has_gt": False,
        }
        return torch.from_numpy(image.astype(np.float32)), info


def create_dataset(
    data_dir: str | os.PathLike, dataset: str, image_size: int, label_dir: str | os.PathLike | None = None
) -> Dataset:
    """The dataset named by ``--dataset``: ``BRATSDataset`` or ``CheXpertDataset``.

    ``label_dir`` (BRATS test labels) is only meaningful for 'brats'; an empty
    string counts as not given.
    """
    label_dir = label_dir or None
    if dataset == "brats":
        return BRATSDataset(data_dir, label_dir=label_dir, image_size=image_size)
    if dataset == "chexpert":
        if label_dir is not None:
            raise UserError(
                f"--label_dir {label_dir}: only used with --dataset brats (CheXpert labels are folder names)"
            )
        return CheXpertDataset(data_dir, image_size=image_size)
    raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")


class ShardedBatchSampler(Sampler[list[int]]):
    """Endless batches of indices in a fixed, resumable order.

    The stream of indices is the concatenation over epochs e = 0, 1, 2, ... of a
    permutation of range(N) drawn with ``torch.Generator().manual_seed(seed + e)``
    (``torch.randperm``), or of range(N) itself when ``deterministic``. Global
    batch k is stream[k*G : (k+1)*G] with G = batch_size * num_shards; this shard
    takes positions [shard*batch_size, (shard+1)*batch_size) of each global batch.
    Iteration starts at global batch ``start_step``; skipped batches cost nothing
    since positions are computed arithmetically. N < G is fine: the stream wraps
    into the next epoch.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        deterministic: bool = False,
        seed: int = 0,
        start_step: int = 0,
        shard: int = 0,
        num_shards: int = 1,
    ):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items {num_items}: expected at least one item")
        if batch_size < 1:
            raise UserError(f"--batch_size {batch_size}: expected at least 1")
        if num_shards < 1:
            raise ValueError(f"num_shards {num_shards}: expected at least 1")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard}: expected 0..{num_shards - 1} for {num_shards} shards")
        if start_step < 0:
            raise ValueError(f"start_step {start_step}: expected 0 or more")
        self.num_items = num_items
        self.batch_size = batch_size
        self.deterministic = deterministic
        self.seed = seed
        self.start_step = start_step
        self.shard = shard
        self.num_shards = num_shards

    def epoch_order(self, epoch: int) -> list[int]:
        """The order of the items in ``epoch``."""
        if self.deterministic:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.num_shards
        step = self.start_step
        epoch, order = -1, []
        while True:
            first = step * global_batch + self.shard * self.batch_size
            batch = []
            # Positions only grow, so each epoch's permutation is drawn once.
            for position in range(first, first + self.batch_size):
                position_epoch, offset = divmod(position, self.num_items)
                if position_epoch != epoch:
                    epoch, order = position_epoch, self.epoch_order(position_epoch)
                batch.append(order[offset])
            yield batch
            step += 1


def load_data(
    *,
    data_dir: str | os.PathLike,
    dataset: str,
    batch_size: int,
    image_size: int,
    label_dir: str | os.PathLike | None = None,
    deterministic: bool = False,
    seed: int = 0,
    start_step: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, dict]]:
    """An endless stream of training batches ``(images, {"y": labels})``.

    ``images`` is float32 (B, C, S, S) in [0, 1] (C = 4 for brats, 1 for chexpert),
    ``labels`` a LongTensor (B,) with healthy = 0. The order is the one of
    ``ShardedBatchSampler`` (read it there); with ``num_shards`` processes, shard
    ``r`` passes ``shard=r``, and a run resumed at step k passes ``start_step=k``.
    ``num_workers`` and ``pin_memory`` go to the ``DataLoader``; workers persist
    between batches.
    The data set is listed (and checked) when this function is called, before the
    first batch is asked for.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers {num_workers}: expected 0 or more")
    data = create_dataset(data_dir, dataset, image_size, label_dir=label_dir)
    sampler = ShardedBatchSampler(
        len(data),
        batch_size,
        deterministic=deterministic,
        seed=seed,
        start_step=start_step,
        shard=shard,
        num_shards=num_shards,
    )
    loader = DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_training_batch,
    )
    return _endless(loader)


def _endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, dict]]:
    # The sampler never ends; the loop only restarts if a loader ever stops.
    while True:
        yield from loader


def collate_training_batch(items: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """Stack dataset items into ``(images (B, C, S, S), {"y": LongTensor (B,)})``."""
    images = torch.stack([image for image, _ in items])  # (B, C, S, S)
    labels = torch.tensor([info["y"] for _, info in items], dtype=torch.long)  # (B,)
    return images, {"y": labels}




_PATIENT = re.compile(r"^(patient\d+)(?=_|$)")


def _patient(stem: str) -> str:
    match = _PATIENT.match(stem)
    return match[1] if match else stem


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return name[: name.rfind(".")] if "." in name else name


def _check_unique_stems(paths: list[str]) -> None:
    first: dict[str, str] = {}
    for path in paths:
        stem = _stem(path)
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
