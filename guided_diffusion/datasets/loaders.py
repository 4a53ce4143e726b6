"""The dataset factory and the one training batch stream (SPEC section 5).

:func:`training_batches` feeds every trainer. Its order of samples is a documented
function of (seed, batch size, shard), so a resumed or multi-process run sees
exactly the batches an uninterrupted single-process run would have seen.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..util.errors import UserError
from .brats import BRATSDataset
from .chexpert import CheXpertDataset
from .common import DATASETS
from .store import open_store


def create_dataset(
    data_dir: str | os.PathLike,
    dataset: str,
    image_size: int,
    label_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """The dataset named by ``--dataset``, served from the folder's slice store (:mod:`.store`).

    The items are bit for bit those of ``BRATSDataset`` or ``CheXpertDataset`` (the readers of the
    files), which build the store on first use and after any change of the source files; a data
    folder that cannot be written keeps its store in ``cache_dir`` (none: the user's cache folder).
    ``label_dir`` (BRATS test labels) is only meaningful for 'brats'; an empty string counts as
    not given.
    """
    source = create_reader(data_dir, dataset, image_size, label_dir)
    return open_store(source, dataset, image_size, label_dir=source.label_dir if dataset == "brats" else None,
                      cache_dir=os.fspath(cache_dir) if cache_dir else None)


def create_reader(
    data_dir: str | os.PathLike, dataset: str, image_size: int, label_dir: str | os.PathLike | None = None
) -> BRATSDataset | CheXpertDataset:
    """The reader of the files named by ``--dataset``: ``BRATSDataset`` or ``CheXpertDataset``
    (each item decoded and checked when it is loaded; :func:`create_dataset` serves the same items
    from the store)."""
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


def resolve_num_workers(num_workers: int) -> int:
    """``--num_workers``: -1 (the default) is min(4, CPUs - 2), two CPUs left to the training step's
    own threads; 0 loads in the main process. On 2 CPUs that is 0: there a worker took CPU from the
    step, and its batches, handed between processes, kept the step waiting longer than reading them
    from the store in the process (benchmarks/RESULTS.md, bench_data.py)."""
    if num_workers < -1:
        raise UserError(f"--num_workers {num_workers}: expected 0 or more, or -1 (chosen from the CPU count)")
    if num_workers == -1:
        return max(0, min(4, (os.cpu_count() or 1) - 2))
    return num_workers


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


def training_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    indices: Sequence[int] | None = None,
    deterministic: bool = False,
    seed: int = 0,
    start_step: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> Iterator[tuple[torch.Tensor, dict]]:
    """An endless stream of training batches ``(images, {"y": labels})`` from ``dataset``.

    ``images`` is float32 (B, C, S, S) in [0, 1] (C = 4 for brats, 1 for chexpert),
    ``labels`` a LongTensor (B,) with healthy = 0. ``indices`` restricts the stream to those
    items (a held-out split, the healthy images). The order is the one of
    ``ShardedBatchSampler`` (read it there); with ``num_shards`` processes, shard ``r``
    passes ``shard=r``, and a run resumed at step k passes ``start_step=k``.
    ``num_workers`` (-1: :func:`resolve_num_workers`) and ``pin_memory`` (for non-blocking
    copies to CUDA) go to the ``DataLoader``; workers persist between batches and each keeps
    ``prefetch`` batches ready. Workers do not change the order.
    """
    num_workers = resolve_num_workers(num_workers)
    items = _TrainingItems(dataset, indices)
    sampler = ShardedBatchSampler(len(items), batch_size, deterministic=deterministic, seed=seed,
                                  start_step=start_step, shard=shard, num_shards=num_shards)
    loader = DataLoader(items, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=num_workers > 0, collate_fn=_collate_stream,
                        prefetch_factor=prefetch if num_workers > 0 else None)
    while True:  # the sampler never ends; the loop only restarts if a loader ever stops
        yield from loader


class _Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor


class _TrainingItems(Dataset):
    """The items of a training stream (``indices`` of ``dataset``, or all of it): a batch is read
    whole by ``dataset.read_batch`` where the data set has one (the slice store: no per-item
    tensors, no stacking), else item by item."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None):
        self.dataset = dataset
        self.indices = None if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def _index(self, k: int) -> int:
        return k if self.indices is None else self.indices[k]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict]:
        return self.dataset[self._index(k)]

    def __getitems__(self, ks: list[int]):  # the DataLoader's batch fetch
        if hasattr(self.dataset, "read_batch"):
            return _Batch(*self.dataset.read_batch([self._index(k) for k in ks]))
        return [self.dataset[self._index(k)] for k in ks]


def _collate_stream(data) -> tuple[torch.Tensor, dict]:
    if isinstance(data, _Batch):
        return data.images, {"y": data.labels}
    return collate_training_batch(data)


def item_labels(dataset: Dataset, num_workers: int = 0) -> list[int]:
    """Label of every item (0 healthy, 1 diseased): the data set's ``labels`` where it lists them
    (CheXpert: from the folder names), else read from the items (BRATS: from the ground truth)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(y) for y in labels]
    loader = DataLoader(dataset, batch_size=16, num_workers=resolve_num_workers(num_workers), collate_fn=_labels_of)
    return [y for batch in loader for y in batch]


def balanced_indices(labels: Sequence[int], indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (default: every item) with each item of the smaller class repeated
    ``round(n_larger / n_smaller)`` times, so that an epoch holds both classes about equally often; the
    order is the input's, the training stream shuffles. Unchanged when a class is missing."""
    chosen = list(range(len(labels))) if indices is None else list(indices)
    by_class = {y: [i for i in chosen if labels[i] == y] for y in sorted({labels[i] for i in chosen})}
    if len(by_class) < 2:
        return chosen
    smaller = min(by_class, key=lambda y: len(by_class[y]))
    repeat = max(1, round(max(map(len, by_class.values())) / len(by_class[smaller])))
    return [i for i in chosen for _ in range(repeat if labels[i] == smaller else 1)]


def _labels_of(items: list[tuple[torch.Tensor, dict]]) -> list[int]:
    return [int(info["y"]) for _, info in items]


def collate_training_batch(items: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """Stack dataset items into ``(images (B, C, S, S), {"y": LongTensor (B,)})``."""
    images = torch.stack([image for image, _ in items])  # (B, C, S, S)
    labels = torch.tensor([info["y"] for _, info in items], dtype=torch.long)  # (B,)
    return images, {"y": labels}
