"""The packed slice store: a data folder's items in memory-mapped arrays, read without decoding files.

Reading a BRATS item from its five gzipped NIfTI files costs milliseconds (nibabel and gzip);
a training step on a GPU costs less. The store keeps the checked, unpadded values of every item
of one data folder in ``.npy`` files that are memory-mapped on use, so an item is a copy out of
the page cache and the resident memory of a run does not grow with the data set::

    <data_dir>/.slice_store/<dataset>/
        images.npy      float32 (N, C, H, W), the values read_item gives (clipped to [0, 1])
        gt.npy          uint8 (N, H, W) tumour masks of 0/1 (brats only)
        labels.npy      int64 (N,), healthy = 0
        keys.json       ids, patients and slice numbers of the items, in item order
        manifest.json   the source files (names relative to the data folder or the label folder,
                        sizes, modification times) and what the store holds; written last

H x W is the items' common shape; a folder of mixed shapes is stored padded to ``image_size``
(which then becomes part of what the store holds). A store is reused while its manifest matches
the source files; otherwise it is rebuilt, and one log line says what changed. A data folder
that cannot be written keeps its store under ``<cache_dir>/slice_store/<hash of the folder>/``
(a valid store already inside the folder is used as it is). Builds hold an exclusive
``fcntl.flock`` on ``<dataset>.lock`` next to the store, so processes that start together (the
ranks of a run) build it once; every file is written to a temporary name and renamed.

The values are checked (finite, in range, shapes) by the readers when the store is built, once;
items served from the store are not checked again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
from typing import Iterator

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset

from ..util import logger
from ..util.fileio import atomic_write
from .common import check_fits, pad_to_size

FORMAT = 1
"""Version of the store's layout and values; a store of another version is rebuilt."""
STORE_FOLDER = ".slice_store"
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python 3.11 lacks the name


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/guided_diffusion``, else ``~/.cache/guided_diffusion``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "guided_diffusion")


def source_manifest(source, label_dir: str | None) -> dict:
    """What the store of ``source`` (a reader with ``directory`` and ``source_files()``) is built from."""
    roots = [("", source.directory)] + ([("label_dir:", label_dir)] if label_dir else [])
    files = []
    for path in source.source_files():
        prefix, root = next((p, r) for p, r in reversed(roots) if _is_under(path, r))
        stat = os.stat(path)
        files.append([prefix + os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns])
    return {"format": FORMAT, "dataset": type(source).__name__,
            "label_dir": os.path.realpath(label_dir) if label_dir else None, "files": files}


def _is_under(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)


def store_location(directory: str, dataset: str, cache_dir: str | None) -> str:
    """Where the store of ``directory`` lives: inside it when it can be written, else in the cache."""
    if _writable(directory):
        return os.path.join(directory, STORE_FOLDER, dataset)
    real = os.path.realpath(directory)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    name = f"{digest}-{os.path.basename(real) or 'root'}"
    return os.path.join(cache_dir or default_cache_dir(), "slice_store", name, dataset)


def _writable(directory: str) -> bool:
    # a folder without any write permission bit is read-only for this purpose even to root (whom
    # os.access lets write anywhere), e.g. a shared data set made read-only with chmod a-w
    if not os.stat(directory).st_mode & 0o222 or not os.access(directory, os.W_OK):
        return False
    try:  # a read-only mount passes os.access for root; creating the folder tells
        os.makedirs(os.path.join(directory, STORE_FOLDER), exist_ok=True)
    except OSError:
        return False
    return True


def open_store(source, dataset: str, image_size: int, label_dir: str | None = None,
               cache_dir: str | None = None) -> "StoreDataset":
    """The items of ``source`` (a ``BRATSDataset`` or ``CheXpertDataset``) served from its store,
    which is built or rebuilt first where it does not match the source files."""
    manifest = source_manifest(source, label_dir)
    folder = store_location(source.directory, dataset, cache_dir)
    inside = os.path.join(source.directory, STORE_FOLDER, dataset)
    if folder != inside and _matches(_read_manifest(inside), manifest, image_size):
        return _open(inside, source, image_size)  # e.g. prepared, then shared read-only
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with _locked(folder + ".lock"):
        old = _read_manifest(folder)
        if not _matches(old, manifest, image_size):
            logger.log(f"slice store {folder}: {_what_changed(old, manifest, image_size)}; building it from "
                       f"{len(source)} items")
            build_store(folder, source, manifest, image_size)
        return _open(folder, source, image_size)


def _open(folder: str, source, image_size: int) -> "StoreDataset":
    store = _read_manifest(folder)["store"]  # an item larger than image_size is named as the reader names it
    check_fits(source.item_file(0), tuple(store["shape"]), image_size, "slice" if store["has_gt"] else "image")
    return StoreDataset(folder, image_size, source.directory, getattr(source, "label_dir", None))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _matches(old: dict | None, sources: dict, image_size: int) -> bool:
    if old is None or old.get("sources") != sources:
        return False
    padded = old["store"]["padded_to"]
    return padded is None or padded == image_size


def _what_changed(old: dict | None, sources: dict, image_size: int) -> str:
    if old is None:
        return "no store yet"
    before = old.get("sources", {})
    for key in ("format", "dataset", "label_dir"):
        if before.get(key) != sources[key]:
            return f"{key} changed from {before.get(key)} to {sources[key]}"
    if before == sources:
        return f"stored padded to {old['store']['padded_to']}, now --image_size {image_size}"
    was = {name: (size, mtime) for name, size, mtime in before.get("files", [])}
    now = {name: (size, mtime) for name, size, mtime in sources["files"]}
    parts = []
    for what, names in (("changed", [n for n in now if n in was and now[n] != was[n]]),
                        ("added", [n for n in now if n not in was]), ("removed", [n for n in was if n not in now])):
        if names:
            parts.append(f"{len(names)} source file{'s' * (len(names) > 1)} {what} ({names[0]}"
                         f"{', ...' if len(names) > 1 else ''})")
    return ", ".join(parts) or "the order of the source files changed"


class _MixedShapes(Exception):
    pass


def build_store(folder: str, source, sources: dict, image_size: int) -> None:
    """Write the store of ``source`` into ``folder``: each array to a temporary name, then renamed;
    the manifest last. Items of different shapes are stored padded to ``image_size``."""
    os.makedirs(folder, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, "manifest.json"))  # an interrupted build leaves no valid store
    try:
        store = _write_arrays(folder, source, None)
    except _MixedShapes:
        store = _write_arrays(folder, source, image_size)
    with atomic_write(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"sources": sources, "store": store}, f)


def _write_arrays(folder: str, source, pad_to: int | None) -> dict:
    n = len(source)
    first, first_mask = source.read_item(0)
    has_gt = first_mask is not None
    channels, shape = first.shape[0], first.shape[1:] if pad_to is None else (pad_to, pad_to)
    names = {"images": "images.npy", "labels": "labels.npy", "keys": "keys.json",
             **({"gt": "gt.npy"} if has_gt else {})}
    temporary = {name: os.path.join(folder, f".{file}.tmp-{os.getpid()}") for name, file in names.items()}
    try:
        images = open_memmap(temporary["images"], "w+", np.float32, (n, channels, *shape))
        gt = open_memmap(temporary["gt"], "w+", np.uint8, (n, *shape)) if has_gt else None
        labels = np.array(source.labels if not has_gt else [0] * n, dtype=np.int64)
        for i in range(n):
            image, mask = (first, first_mask) if i == 0 else source.read_item(i)
            if pad_to is not None:
                check_fits(source.item_file(i), image.shape[1:], pad_to, "slice" if has_gt else "image")
                image = pad_to_size(image, pad_to)
                mask = None if mask is None else pad_to_size(mask, pad_to)
            elif image.shape[1:] != shape:
                raise _MixedShapes
            images[i] = image
            if has_gt:
                gt[i] = mask
                labels[i] = int(mask.any())
        images.flush()
        del images
        if has_gt:
            gt.flush()
            del gt
        with open(temporary["labels"], "wb") as f:  # np.save would append .npy to a name
            np.save(f, labels, allow_pickle=False)
        with open(temporary["keys"], "w") as f:
            json.dump({"ids": list(source.ids), "patients": list(source.patients), "slices": list(source.slices)}, f)
        for name, file in names.items():
            os.replace(temporary[name], os.path.join(folder, file))
    finally:
        for path in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return {"count": n, "channels": channels, "shape": list(shape), "padded_to": pad_to, "has_gt": has_gt}


class StoreDataset(Dataset):
    """The items of a reader (``BRATSDataset``, ``CheXpertDataset``) served from its store.

    Item ``i`` is bit for bit the reader's item ``i`` (the same tensors, dtypes and ``info``); ``ids``,
    ``patients``, ``labels`` and ``slices`` are known without reading an item. The files are mapped
    when the store is opened, so forked workers share the files this process opened even if the
    store is rebuilt meanwhile; a pickled copy (a spawned worker) maps them again.
    """

    def __init__(self, folder: str, image_size: int, directory: str = "", label_dir: str | None = None):
        super().__init__()
        self.folder = folder
        self.directory = directory  # the data folder the store was built from
        self.label_dir = label_dir
        self.image_size = image_size
        with open(os.path.join(folder, "manifest.json")) as f:
            self.store = json.load(f)["store"]
        with open(os.path.join(folder, "keys.json")) as f:
            keys = json.load(f)
        self.ids, self.patients, self.slices = keys["ids"], keys["patients"], keys["slices"]
        self.labels = [int(y) for y in np.load(os.path.join(folder, "labels.npy"), allow_pickle=False)]
        self.has_gt = self.store["has_gt"]
        height, width = self.store["shape"]
        if height > image_size or width > image_size:
            raise ValueError(f"{folder}: items of {height}x{width} do not fit image_size {image_size}")
        self._top, self._left = (image_size - height) // 2, (image_size - width) // 2  # as pad_to_size
        self._arrays: tuple | None = None
        self._mapped()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves, never a pickled copy

    def _mapped(self) -> tuple:
        if self._arrays is None:
            self._arrays = (_MappedArray(os.path.join(self.folder, "images.npy")),
                            _MappedArray(os.path.join(self.folder, "gt.npy")) if self.has_gt else None)
        return self._arrays

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        images, gt = self._mapped()
        size = self.image_size
        height, width = images.array.shape[-2:]
        rows, cols = slice(self._top, self._top + height), slice(self._left, self._left + width)
        image = torch.empty(images.array.shape[1], size, size)  # float32, padded as pad_to_size pads
        images.copy_item(index, image.numpy()[:, rows, cols])
        _zero_outside(image.numpy(), rows, cols)
        mask = torch.zeros(size, size)
        if gt is not None:
            gt.copy_item(index, mask.numpy()[rows, cols])  # 0/1 as float32
        info = {"y": self.labels[index], "id": self.ids[index], "gt": mask, "has_gt": self.has_gt,
                "patient": self.patients[index], "slice": self.slices[index]}
        return image, info

    def read_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, S, S), labels (B,) long)`` of ``indices``: the stacked images and ``y`` of
        those items, copied straight into one tensor (the training stream's batch, without the rest
        of ``info``)."""
        images, _ = self._mapped()
        height, width = images.array.shape[-2:]
        rows, cols = slice(self._top, self._top + height), slice(self._left, self._left + width)
        batch = torch.empty(len(indices), images.array.shape[1], self.image_size, self.image_size)
        out = batch.numpy()
        for k, index in enumerate(indices):
            images.copy_item(index, out[k, :, rows, cols])
        _zero_outside(out, rows, cols)
        return batch, torch.tensor([self.labels[index] for index in indices], dtype=torch.long)


def _zero_outside(array: np.ndarray, rows: slice, cols: slice) -> None:
    """Zero the last two axes of ``array`` outside ``rows`` x ``cols`` (the padding)."""
    array[..., : rows.start, :] = 0
    array[..., rows.stop:, :] = 0
    array[..., rows, : cols.start] = 0
    array[..., rows, cols.stop:] = 0


class _MappedArray:
    """A read-only memory map of a ``.npy`` file whose items are copied out one at a time.

    The pages of an item are dropped from this process's mapping once copied (``MADV_DONTNEED``;
    the page cache keeps them), and read-ahead is off (``MADV_RANDOM``), so that the resident
    memory of a process stays flat however much of the store it has read.
    """

    _WINDOW = 2 * 1024 * 1024  # a fault maps up to a whole page-cache folio (at most 2 MiB) around it

    def __init__(self, path: str):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[version]  # the writer's versions
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if fortran:
            raise ValueError(f"{path}: expected a C-ordered array")
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_RANDOM)
        count = int(np.prod(shape))
        self.array = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)
        self._offset, self._item_bytes = offset, self.array[0].nbytes if len(self.array) else 0

    def copy_item(self, index: int, out: np.ndarray) -> None:
        """Copy item ``index`` into ``out`` (cast to its dtype), then drop its pages from the mapping."""
        start = self._offset + index * self._item_bytes
        page = start - start % mmap.PAGESIZE
        with contextlib.suppress(OSError):  # map the item's pages in one call instead of one fault per page
            self._map.madvise(_MADV_POPULATE_READ, page, min(start + self._item_bytes, len(self._map)) - page)
        out[...] = self.array[index]
        first = start - start % self._WINDOW
        last = min(-(-(start + self._item_bytes) // self._WINDOW) * self._WINDOW, len(self._map))
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)
