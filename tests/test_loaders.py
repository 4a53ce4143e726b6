"""The loaders: CheXpertDataset, create_dataset and the order contract of the training batch stream."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.datasets import chexpert
from guided_diffusion.datasets.brats import BRATSDataset
from guided_diffusion.datasets.chexpert import CheXpertDataset
from guided_diffusion.datasets.loaders import ShardedBatchSampler, create_dataset, create_reader, training_batches
from guided_diffusion.datasets.store import StoreDataset
from guided_diffusion.datasets.splits import split_by_patient

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference-data"


def _reference(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path


def _write_chexpert(root: Path, names: dict[str, list[str]], size: int = 8) -> None:
    """Constant images: the file ``<stem>`` of index k holds the value 10 * k + 5."""
    for label, stems in names.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            k = int(stem[-2:])
            np.save(root / label / f"{stem}.npy", np.full((size, size, 1), 10 * k + 5, dtype=np.uint8))


def _counting_set(root: Path, n: int) -> dict[str, int]:
    """n images: even k healthy, odd k diseased; returns stem -> k."""
    stems = {f"img{k:02d}": k for k in range(n)}
    _write_chexpert(root, {"healthy": [s for s, k in stems.items() if k % 2 == 0],
                           "diseased": [s for s, k in stems.items() if k % 2 == 1]})
    return stems


def _decode(images: torch.Tensor) -> list[int]:
    """The k of each constant image of a batch (B, 1, S, S)."""
    return [int(round((float(image.max()) * 255 - 5) / 10)) for image in images]


def _expected_stream(n, batch_size, num_shards, shard, seed, steps, start_step=0, deterministic=False):
    """The documented order, built literally: concatenated per-epoch permutations."""
    global_batch = batch_size * num_shards
    needed = (start_step + steps) * global_batch
    stream = []
    for epoch in itertools.count():
        if len(stream) >= needed:
            break
        if deterministic:
            stream += list(range(n))
        else:
            stream += torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    batches = []
    for k in range(start_step, start_step + steps):
        global_slice = stream[k * global_batch : (k + 1) * global_batch]
        batches.append(global_slice[shard * batch_size : (shard + 1) * batch_size])
    return batches


def _take(stream, steps):
    return [next(stream) for _ in range(steps)]


# ---------------------------------------------------------------------------
# CheXpertDataset


@pytest.mark.parametrize("split", ["training", "testing"])
def test_reference_chexpert_matches_the_files(split):
    root = _reference("chexpert") / split
    data = CheXpertDataset(root, image_size=256)
    files = sorted(root.glob("*/*.npy"))
    assert sorted(data.ids) == sorted(f.stem for f in files)
    by_id = {f.stem: f for f in files}
    for i in range(len(data)):
        image, info = data[i]
        path = by_id[info["id"]]
        assert image.shape == (1, 256, 256) and image.dtype == torch.float32
        np.testing.assert_allclose(image[0].numpy(), np.load(path)[:, :, 0] / 255.0, atol=1e-7)
        assert info["y"] == {"healthy": 0, "diseased": 1}[path.parent.name]
        assert info["has_gt"] is False
        assert info["gt"].shape == (256, 256) and info["gt"].sum() == 0


def test_patients_come_from_the_file_names(tmp_path):
    _write_chexpert(tmp_path, {"healthy": ["patient00001_study01", "patient00002_study02", "scan03"],
                               "diseased": ["patient00001_study04", "patient00012"]})
    data = CheXpertDataset(tmp_path, image_size=8)
    assert dict(zip(data.ids, data.patients)) == {
        "patient00001_study01": "patient00001", "patient00002_study02": "patient00002", "scan03": "scan03",
        "patient00001_study04": "patient00001", "patient00012": "patient00012"}


def test_labels_come_from_folder_names_whatever_the_listing_order(tmp_path, monkeypatch):
    # names of healthy images sort after the diseased ones, and the folder listing is reversed
    _write_chexpert(tmp_path, {"healthy": ["zz01", "zz02"], "diseased": ["aa03"]})
    real_listdir = os.listdir
    monkeypatch.setattr(chexpert.os, "listdir", lambda p: sorted(real_listdir(p), reverse=True))
    data = CheXpertDataset(tmp_path, image_size=8)
    for i in range(len(data)):
        image, info = data[i]
        assert info["y"] == (0 if info["id"].startswith("zz") else 1)
        assert _decode(image[None]) == [int(info["id"][-2:])]  # the image of the same file
    assert sorted(zip(data.ids, data.labels)) == [("aa03", 1), ("zz01", 0), ("zz02", 0)]


def test_png_jpg_and_2d_npy_read_as_rows_by_columns(tmp_path):
    rows = np.arange(6, dtype=np.uint8)[:, None] * 40 + np.zeros((1, 10), np.uint8)  # (6, 10): varies along rows
    (tmp_path / "healthy").mkdir()
    (tmp_path / "diseased").mkdir()
    Image.fromarray(rows).save(tmp_path / "healthy" / "a.png")
    Image.fromarray(np.stack([rows] * 3, axis=-1)).save(tmp_path / "diseased" / "b.png")  # RGB -> L
    np.save(tmp_path / "diseased" / "c.npy", rows)
    Image.fromarray(rows).save(tmp_path / "healthy" / "d.jpg", quality=100)
    data = CheXpertDataset(tmp_path, image_size=10)
    for i, stem in enumerate(data.ids):
        image, _ = data[i]
        assert image.shape == (1, 10, 10)
        core = image[0, 2:8].numpy() * 255  # rows padded by 2 on each side
        assert (image[0, :2] == 0).all() and (image[0, 8:] == 0).all()
        np.testing.assert_allclose(core, rows, atol=3 if stem == "d" else 1e-4)


def test_missing_class_folder_names_the_directory(tmp_path):
    (tmp_path / "healthy").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*diseased/"):
        CheXpertDataset(tmp_path)


def test_no_images(tmp_path):
    (tmp_path / "healthy").mkdir()
    (tmp_path / "diseased").mkdir()
    with pytest.raises(ValueError, match="no images"):
        CheXpertDataset(tmp_path)


def test_nonexistent_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        CheXpertDataset(tmp_path / "nope")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((8, 9, 1), np.uint8), r"x.npy: image of 8x9 is larger than --image_size 8"),
        (np.zeros((8, 8, 3), np.uint8), r"x.npy: expected an H x W x 1 or H x W array, found shape \(8, 8, 3\)"),
        (np.zeros((8, 8), np.int32), r"x.npy: expected uint8"),
        (np.full((8, 8), 2.0), r"x.npy: expected float values in \[0, 1\]"),
        (np.full((8, 8), np.nan), r"x.npy: NaN"),
    ],
)
def test_bad_images_are_named(tmp_path, array, message):
    (tmp_path / "healthy").mkdir()
    (tmp_path / "diseased").mkdir()
    np.save(tmp_path / "healthy" / "x.npy", array)
    with pytest.raises(ValueError, match=message):
        CheXpertDataset(tmp_path, image_size=8)[0]


def test_unreadable_image(tmp_path):
    _write_chexpert(tmp_path, {"healthy": ["a01"], "diseased": []})
    (tmp_path / "diseased" / "broken.png").write_bytes(b"no png")
    data = CheXpertDataset(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        data[data.ids.index("broken")]


def test_duplicate_stems(tmp_path):
    _write_chexpert(tmp_path, {"healthy": ["a01"], "diseased": ["a01"]})
    with pytest.raises(ValueError, match="a01 repeats"):
        CheXpertDataset(tmp_path)


# ---------------------------------------------------------------------------
# create_dataset


def test_create_dataset_picks_the_class(tmp_path):
    brats = _reference("brats")
    assert isinstance(create_reader(brats / "training", "brats", 256), BRATSDataset)
    assert create_dataset(brats / "training", "brats", 256)[0][0].shape == (4, 256, 256)
    data = create_dataset(brats / "testing", "brats", 256, label_dir=brats / "test_labels")
    assert len(data) == 2
    assert isinstance(create_reader(_reference("chexpert") / "training", "chexpert", 256, label_dir=""),
                      CheXpertDataset)
    assert create_dataset(_reference("chexpert") / "training", "chexpert", 256, label_dir="")[0][0].shape == (1, 256,
                                                                                                              256)


def test_create_dataset_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="--dataset 'mnist': expected one of brats, chexpert"):
        create_dataset(tmp_path, "mnist", 256)


def test_label_dir_with_chexpert_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--label_dir"):
        create_dataset(tmp_path, "chexpert", 256, label_dir=tmp_path)


# ---------------------------------------------------------------------------
# training_batches order contract


@pytest.fixture
def counting(tmp_path):
    stems = _counting_set(tmp_path, 10)
    data = CheXpertDataset(tmp_path, image_size=8)
    k_of_index = [stems[s] for s in data.ids]
    return tmp_path, k_of_index


def _load(root, **kwargs):
    kwargs.setdefault("batch_size", 3)
    return training_batches(create_dataset(root, "chexpert", 8), **kwargs)


def test_order_follows_the_documented_stream(counting):
    root, k_of_index = counting
    for deterministic in (False, True):
        batches = _take(_load(root, seed=7, deterministic=deterministic), 8)  # 24 > 10: crosses two epochs
        expected = _expected_stream(10, 3, 1, 0, seed=7, steps=8, deterministic=deterministic)
        assert [_decode(images) for images, _ in batches] == [[k_of_index[i] for i in b] for b in expected]
        for images, cond in batches:
            assert images.shape == (3, 1, 8, 8) and images.dtype == torch.float32
            assert cond["y"].dtype == torch.long
            assert cond["y"].tolist() == [k % 2 for k in _decode(images)]


def test_same_seed_same_batches_other_seed_other_batches(counting):
    root, _ = counting
    first = [_decode(x) for x, _ in _take(_load(root, seed=1), 6)]
    again = [_decode(x) for x, _ in _take(_load(root, seed=1), 6)]
    other = [_decode(x) for x, _ in _take(_load(root, seed=2), 6)]
    assert first == again and first != other


def test_two_shards_of_b_equal_one_shard_of_2b(counting):
    root, _ = counting
    whole = _take(_load(root, batch_size=4, seed=3), 5)
    shard0 = _take(_load(root, batch_size=2, seed=3, shard=0, num_shards=2), 5)
    shard1 = _take(_load(root, batch_size=2, seed=3, shard=1, num_shards=2), 5)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, shard0, shard1):
        assert torch.equal(x, torch.cat([x0, x1]))
        assert torch.equal(y["y"], torch.cat([y0["y"], y1["y"]]))


def test_start_step_equals_skipping(counting):
    root, _ = counting
    fresh = _take(_load(root, seed=5, shard=1, num_shards=2), 7)
    resumed = _take(_load(root, seed=5, shard=1, num_shards=2, start_step=4), 3)
    for (x, y), (xr, yr) in zip(fresh[4:], resumed):
        assert torch.equal(x, xr) and torch.equal(y["y"], yr["y"])


def test_start_step_loads_no_skipped_file(counting, monkeypatch):
    root, _ = counting
    _load(root)  # builds the store
    calls = []
    original = StoreDataset.read_batch
    monkeypatch.setattr(StoreDataset, "read_batch", lambda self, batch: calls.extend(batch) or original(self, batch))
    next(_load(root, start_step=10**12))
    assert len(calls) == 3


def test_fewer_items_than_a_global_batch_wraps_into_next_epochs(tmp_path):
    stems = _counting_set(tmp_path, 3)
    k_of_index = [stems[s] for s in CheXpertDataset(tmp_path, image_size=8).ids]
    got = [_decode(x) for x, _ in _take(_load(tmp_path, batch_size=4, seed=0, shard=1, num_shards=2), 3)]
    expected = _expected_stream(3, 4, 2, 1, seed=0, steps=3)
    assert got == [[k_of_index[i] for i in b] for b in expected]


def test_workers_give_the_same_batches(counting):
    root, _ = counting
    serial = _take(_load(root, seed=4), 5)
    parallel = _take(_load(root, seed=4, num_workers=2), 5)
    for (x, y), (xp, yp) in zip(serial, parallel):
        assert torch.equal(x, xp) and torch.equal(y["y"], yp["y"])


def test_brats_batches(tmp_path):
    stream = training_batches(create_dataset(_reference("brats") / "training", "brats", 256), batch_size=2)
    images, cond = next(stream)
    assert images.shape == (2, 4, 256, 256) and cond["y"].shape == (2,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "--batch_size 0"),
        ({"num_shards": 0}, "num_shards 0"),
        ({"shard": 2, "num_shards": 2}, "shard 2: expected 0..1"),
        ({"start_step": -1}, "start_step -1"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, message):
    arguments = {"batch_size": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        ShardedBatchSampler(10, **arguments)


def test_the_data_is_checked_before_the_first_batch(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        training_batches(create_dataset(tmp_path / "nope", "chexpert", 8), batch_size=2)


def test_held_out_split_keeps_each_patient_on_one_side():
    data = BRATSDataset(Path(__file__).resolve().parents[1] / "data" / "brats" / "training", image_size=64)
    patients = data.patients
    assert len(set(patients)) == 12 and len(patients) == 48  # 4 slices of each of 12 patients
    train, val = split_by_patient(patients, 0.25, seed=0)
    assert sorted(train + val) == list(range(48))
    assert len({patients[i] for i in val}) == 3 and len(val) == 12
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert split_by_patient(patients, 0.25, seed=0) == (train, val)
    assert split_by_patient(patients, 0.25, seed=1) != (train, val)
    assert split_by_patient(patients, 0.0, seed=0) == (list(range(48)), [])
    assert split_by_patient(["a", "a"], 0.5, seed=0) == ([0, 1], [])  # one patient: nothing to hold out
    with pytest.raises(ValueError, match="--val_fraction 1.0"):
        split_by_patient(patients, 1.0, seed=0)
