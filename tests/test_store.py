"""The packed slice store: the items of create_dataset are the readers' items bit for bit, the store
follows its source files, lives in a cache when the data folder is read-only, is built once by
processes that start together, checks values once, and keeps resident memory flat."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.datasets.brats import BRATSDataset
from guided_diffusion.datasets.layout import write_brats_leaf
from guided_diffusion.datasets.loaders import create_dataset, create_reader, resolve_num_workers, training_batches
from guided_diffusion.datasets.nifti import write_nifti_gz
from guided_diffusion.datasets.store import STORE_FOLDER, StoreDataset
from guided_diffusion.util.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _assert_same_items(reader, store) -> None:
    assert isinstance(store, StoreDataset) and len(store) == len(reader)
    assert (store.ids, store.patients) == (reader.ids, reader.patients)
    for i in range(len(reader)):
        (x, info), (xs, info_s) = reader[i], store[i]
        assert x.dtype == xs.dtype and x.shape == xs.shape and torch.equal(x, xs), i
        assert info.keys() == info_s.keys()
        for key, value in info.items():
            if torch.is_tensor(value):
                assert value.dtype == info_s[key].dtype and torch.equal(value, info_s[key]), (i, key)
            else:
                assert type(value) is type(info_s[key]) and value == info_s[key], (i, key)


def _brats_like(root: Path, shapes, seed: int = 0) -> Path:
    """Leaves of BRATS-like slices (float64 in [0, 1], a tumour in every other one) of the given shapes."""
    rng = np.random.default_rng(seed)
    for k, shape in enumerate(shapes):
        channels = {seq: rng.random(shape) for seq in ("t1", "t1ce", "t2", "flair")}
        channels["t1"][0, 0] = 1.0 + 5e-7  # a round-off overshoot, clipped by the reader
        seg = np.zeros(shape)
        if k % 2:
            seg[shape[0] // 3: shape[0] // 2, 10:40] = rng.choice([1.0, 2.0, 4.0])
        write_brats_leaf(str(root / f"{k + 1:06d}"), f"{k // 2:03d}", 80 + k, channels, seg)
    return root


@pytest.mark.parametrize("folder, dataset, label_dir, size", [
    ("brats/training", "brats", None, 64), ("brats/testing", "brats", "brats/test_labels", 67),
    ("brats/validation", "brats", None, 64), ("chexpert/training", "chexpert", None, 64),
    ("chexpert/testing", "chexpert", None, 71),
])
def test_items_equal_the_readers_on_the_example_data(folder, dataset, label_dir, size):
    label_dir = DATA / label_dir if label_dir else None
    _assert_same_items(create_reader(DATA / folder, dataset, size, label_dir),
                       create_dataset(DATA / folder, dataset, size, label_dir))


def test_items_equal_the_reader_on_brats_sized_and_mixed_slices(tmp_path):
    full = _brats_like(tmp_path / "full", [(240, 240)] * 3)
    _assert_same_items(BRATSDataset(full, image_size=256), create_dataset(full, "brats", 256))
    _assert_same_items(BRATSDataset(full, image_size=241), create_dataset(full, "brats", 241))  # odd padding
    mixed = _brats_like(tmp_path / "mixed", [(20, 24), (17, 24), (20, 21)])  # stored padded to --image_size
    _assert_same_items(BRATSDataset(mixed, image_size=27), create_dataset(mixed, "brats", 27))
    with pytest.raises(UserError, match=r"000001/brats_train_000_t1_080_w.nii.gz: slice of 240x240 is larger "
                                        r"than --image_size 200"):
        create_dataset(full, "brats", 200)


def test_chexpert_png_jpg_and_float_npy_items_equal_the_reader(tmp_path):
    rng = np.random.default_rng(1)
    for label in ("healthy", "diseased"):
        (tmp_path / label).mkdir()
    np.save(tmp_path / "healthy" / "patient00001_study1.npy", rng.integers(0, 256, (12, 12, 1), dtype=np.uint8))
    np.save(tmp_path / "healthy" / "patient00002_study1.npy", rng.random((12, 12)))
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "diseased" / "patient00003_s.png")
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "diseased" / "p4.jpg")
    store = create_dataset(tmp_path, "chexpert", 15)
    _assert_same_items(create_reader(tmp_path, "chexpert", 15), store)
    assert store.labels == [1, 1, 0, 0]


def _store_logs(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("slice store")]


def test_store_is_reused_while_its_sources_match_and_rebuilt_when_one_changes(tmp_path, capsys):
    data = shutil.copytree(DATA / "brats" / "training", tmp_path / "training", ignore=lambda *_: [STORE_FOLDER])
    assert _store_logs(capsys) == []
    create_dataset(data, "brats", 64)
    manifest = data / STORE_FOLDER / "brats" / "manifest.json"
    (line,) = _store_logs(capsys)
    assert "no store yet; building it from 48 items" in line
    built = manifest.stat().st_mtime_ns
    create_dataset(data, "brats", 72)
    assert _store_logs(capsys) == [] and manifest.stat().st_mtime_ns == built  # reused, for any padding

    path = next((data / "000002").glob("*_flair_*"))
    write_nifti_gz(path, np.full((64, 64), 0.25))
    os.utime(path, ns=(built + 10**9, built + 10**9))
    store = create_dataset(data, "brats", 64)
    (line,) = _store_logs(capsys)
    assert f"1 source file changed (000002/{path.name})" in line
    assert torch.all(store[1][0][3] == 0.25)
    _assert_same_items(BRATSDataset(data, image_size=64), store)

    shutil.copytree(data / "000003", data / "000099")
    for old in (data / "000099").iterdir():  # another patient, so that leaf names and slices stay unique
        old.rename(old.with_name(old.name.replace("brats_train_", "brats_train_9")))
    shutil.rmtree(data / "000004")
    store = create_dataset(data, "brats", 64)
    (line,) = _store_logs(capsys)
    assert "5 source files added (000099/" in line and "5 source files removed (000004/" in line
    assert len(store) == 48 and store.ids[-1] == "000099"
    _assert_same_items(BRATSDataset(data, image_size=64), store)


def test_values_are_checked_once_when_the_store_is_built(tmp_path, monkeypatch):
    data = _brats_like(tmp_path / "d", [(16, 16)] * 3)
    reads = []
    original = BRATSDataset.read_item
    monkeypatch.setattr(BRATSDataset, "read_item", lambda self, i: reads.append(i) or original(self, i))
    store = create_dataset(data, "brats", 16)
    assert sorted(reads) == [0, 1, 2]
    for _ in range(3):
        [store[i] for i in range(len(store))]
    create_dataset(data, "brats", 16)
    assert sorted(reads) == [0, 1, 2]  # neither serving items nor reopening reads or checks a file again

    bad = np.zeros((16, 16))
    bad[2, 5] = np.nan
    path = next((data / "000002").glob("*_t2_*"))
    write_nifti_gz(path, bad)
    with pytest.raises(UserError, match=rf"{path.name}: 1 NaN or infinite values"):
        create_dataset(data, "brats", 16)
    write_nifti_gz(path, np.full((16, 16), 3.0))
    with pytest.raises(UserError, match=rf"{path.name}: expected values in \[0, 1\], found \[3, 3\]"):
        create_dataset(data, "brats", 16)


def _read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_read_only_data_folder_keeps_its_store_in_the_cache_dir(tmp_path, capsys):
    data = shutil.copytree(DATA / "chexpert" / "testing", tmp_path / "shared", ignore=lambda *_: [STORE_FOLDER])
    _read_only(data)
    try:
        store = create_dataset(data, "chexpert", 64, cache_dir=tmp_path / "cache")
        assert not (data / STORE_FOLDER).exists()
        assert Path(store.folder).is_relative_to(tmp_path / "cache")
        _assert_same_items(create_reader(data, "chexpert", 64), store)
        assert len(_store_logs(capsys)) == 1
        create_dataset(data, "chexpert", 64, cache_dir=tmp_path / "cache")
        assert _store_logs(capsys) == []  # reused from the cache
        default = create_dataset(data, "chexpert", 64)  # the default cache: $XDG_CACHE_HOME/guided_diffusion
        assert Path(default.folder).is_relative_to(Path(os.environ["XDG_CACHE_HOME"]) / "guided_diffusion")

        _writable(data)  # a store prepared inside the folder is used from there once it is read-only
        create_dataset(data, "chexpert", 64)
        _read_only(data)
        store = create_dataset(data, "chexpert", 64, cache_dir=tmp_path / "other")
        assert Path(store.folder) == data / STORE_FOLDER / "chexpert" and not (tmp_path / "other").exists()
    finally:
        _writable(data)


def _open_when(data: Path, start) -> None:
    start.wait(60)
    assert len(create_dataset(data, "brats", 48)) == 24


def test_two_processes_starting_together_build_the_store_once(tmp_path, capfd):
    data = _brats_like(tmp_path / "d", [(48, 48)] * 24)
    context = multiprocessing.get_context("fork")  # two real processes, ready before they start building
    start = context.Event()
    processes = [context.Process(target=_open_when, args=(data, start)) for _ in range(2)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert capfd.readouterr().out.count("building it from 24 items") == 1


_RSS = textwrap.dedent("""
    import sys
    import numpy as np
    from guided_diffusion.datasets.loaders import training_batches
    from guided_diffusion.datasets.store import StoreDataset, build_store

    class Items:  # a reader of n random 1 x 64 x 64 images
        def __init__(self, n):
            self.n, self.ids = n, [str(i) for i in range(n)]
            self.patients, self.slices, self.labels = self.ids, [-1] * n, [i % 2 for i in range(n)]
        def __len__(self):
            return self.n
        def read_item(self, i):
            return np.random.default_rng(i).random((1, 64, 64), dtype=np.float32), None
        def item_file(self, i):
            return str(i)

    def rss_mib():
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) / 1024

    for n in (256, 4096):
        folder = f"{sys.argv[1]}/{n}"
        build_store(folder, Items(n), {}, 64)
        stream = training_batches(StoreDataset(folder, 64), 8, seed=0)
        next(stream)
        before = rss_mib()
        for _ in range(40):  # 320 items
            next(stream)
        print(rss_mib() - before, flush=True)
""")


def test_resident_memory_does_not_grow_with_the_store(tmp_path):
    """A store of 4 MiB and one of 64 MiB both stream 320 items (5 MiB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _RSS, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    small, big = (float(line) for line in out.stdout.split())
    assert big < 8 and abs(big - small) < 4, (small, big)  # MiB; the big store is 64


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_of_the_store_equal_those_of_the_reader(workers):
    folder = DATA / "brats" / "training"
    healthy = [i for i, y in enumerate(create_dataset(folder, "brats", 67).labels) if y == 0]
    for indices in (None, healthy):
        expected = training_batches(create_reader(folder, "brats", 67), 5, indices=indices, seed=3)
        got = training_batches(create_dataset(folder, "brats", 67), 5, indices=indices, seed=3, num_workers=workers)
        for _ in range(12):  # more than an epoch of either
            (x, cond), (xs, cond_s) = next(expected), next(got)
            assert x.dtype == xs.dtype and torch.equal(x, xs)
            assert cond.keys() == cond_s.keys() == {"y"} and torch.equal(cond["y"], cond_s["y"])


def test_workers_default_from_the_cpu_count():
    assert resolve_num_workers(-1) == max(0, min(4, os.cpu_count() - 2))
    assert resolve_num_workers(0) == 0 and resolve_num_workers(3) == 3
    with pytest.raises(UserError, match="--num_workers -2: expected 0 or more"):
        resolve_num_workers(-2)


def test_a_worker_maps_the_store_itself(tmp_path):
    import pickle

    store = create_dataset(DATA / "brats" / "training", "brats", 64)
    store[0]
    assert len(pickle.dumps(store)) < 20_000  # the ids and labels, not the 3 MiB of images
    again = pickle.loads(pickle.dumps(store))
    assert torch.equal(again[5][0], store[5][0])
