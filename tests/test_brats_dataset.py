"""BRATSDataset: the reference slices and every bad-input path (SPEC sections 5 and 6a)."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from guided_diffusion.datasets.brats import BRATSDataset
from guided_diffusion.datasets.common import pad_to_size
from guided_diffusion.datasets.layout import MODALITIES
from guided_diffusion.datasets.nifti import nifti_gz_bytes, read_nifti, write_nifti_gz

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference-data" / "brats"


def _reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


def _file(folder: Path, seq: str) -> Path:
    (path,) = folder.glob(f"*_{seq}_*_w.nii.gz")
    return path


def _write_leaf(root: Path, leaf: str, shape=(16, 16), seg: np.ndarray | None = None, seed: int = 0, **override):
    """A leaf of random slices in [0, 1]; ``override`` maps seq -> array to write instead."""
    rng = np.random.default_rng(seed)
    folder = root / leaf
    folder.mkdir(parents=True)
    for seq in MODALITIES:
        array = override.get(seq, rng.uniform(0.0, 1.0, size=shape))
        write_nifti_gz(folder / f"brats_train_001_{seq}_080_w.nii.gz", array)
    if seg is not None:
        write_nifti_gz(folder / "brats_train_001_seg_080_w.nii.gz", seg)
    return folder


def _tumour(shape=(16, 16)) -> np.ndarray:
    seg = np.zeros(shape)
    seg[4:8, 5:9] = 2.0
    seg[5, 6] = 4.0
    return seg


# ---------------------------------------------------------------------------
# Reference data


def test_reference_training_slices_match_the_files():
    root = _reference() / "training"
    data = BRATSDataset(root, image_size=256)
    leaves = sorted(p.name for p in root.iterdir())
    assert data.ids == leaves
    assert len(data) == len(leaves) == 4
    assert data.patients == ["brats_train_001"] * 4  # four consecutive slices of one patient
    for i, leaf in enumerate(leaves):
        image, info = data[i]
        assert image.shape == (4, 256, 256) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        for c, seq in enumerate(MODALITIES):
            expected = nib.load(_file(root / leaf, seq)).get_fdata()
            np.testing.assert_allclose(image[c, 8:248, 8:248].numpy(), expected, atol=1e-6)
        assert image[:, :8].abs().sum() == 0 and image[:, 248:].abs().sum() == 0
        assert image[:, :, :8].abs().sum() == 0 and image[:, :, 248:].abs().sum() == 0
        seg = nib.load(_file(root / leaf, "seg")).get_fdata()
        assert info["id"] == leaf
        assert info["y"] == int((seg > 0).any())
        assert info["has_gt"] is True
        assert info["gt"].shape == (256, 256) and info["gt"].dtype == torch.float32
        np.testing.assert_array_equal(info["gt"][8:248, 8:248].numpy(), (seg > 0).astype(np.float32))
        assert info["gt"].sum() == (seg > 0).sum()


def test_reference_test_slices_take_labels_from_label_dir():
    root = _reference()
    data = BRATSDataset(root / "testing", label_dir=root / "test_labels")
    assert data.ids == ["000247", "000248"]
    for i, leaf in enumerate(data.ids):
        image, info = data[i]
        assert image.shape == (4, 256, 256)
        label = nib.load(root / "test_labels" / f"{leaf}-label.nii.gz").get_fdata()
        assert info["y"] == int((label > 0).any())
        np.testing.assert_array_equal(info["gt"][8:248, 8:248].numpy(), (label > 0).astype(np.float32))


def test_test_slices_without_label_dir_ask_for_it():
    with pytest.raises(FileNotFoundError, match="000247.*--label_dir"):
        BRATSDataset(_reference() / "testing")


def test_label_dir_without_the_leaf_label_names_the_file(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    with pytest.raises(FileNotFoundError, match="000247-label.nii.gz"):
        BRATSDataset(_reference() / "testing", label_dir=labels)


def test_nonexistent_label_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--label_dir"):
        BRATSDataset(_reference() / "testing", label_dir=tmp_path / "nope")


# ---------------------------------------------------------------------------
# Layout


def test_leaves_at_any_depth_sorted_and_seg_preferred_over_label_dir(tmp_path):
    _write_leaf(tmp_path / "b" / "deep", "000003", seg=np.zeros((16, 16)))
    _write_leaf(tmp_path / "a", "000002", seg=_tumour())
    _write_leaf(tmp_path / "a", "000001", seg=np.zeros((16, 16)))
    labels = tmp_path.parent / (tmp_path.name + "-labels")
    labels.mkdir()
    write_nifti_gz(labels / "000002-label.nii.gz", np.zeros((16, 16)))  # ignored: the leaf has a seg
    data = BRATSDataset(tmp_path, label_dir=labels, image_size=16)
    assert data.ids == ["000001", "000002", "000003"]
    assert [data[i][1]["y"] for i in range(3)] == [0, 1, 0]


def test_padding_is_even_and_extra_pixel_goes_after(tmp_path):
    shape = (13, 16)
    values = np.full(shape, 0.5)
    _write_leaf(tmp_path, "000001", shape=shape, seg=np.ones(shape), t1=values)
    image, info = BRATSDataset(tmp_path, image_size=20)[0]
    assert image.shape == (4, 20, 20)
    expected = pad_to_size(values, 20)
    np.testing.assert_allclose(image[0].numpy(), expected)
    assert (image[0, 3:16, 2:18] == 0.5).all() and image[0, :3].sum() == 0 and image[0, 16:].sum() == 0
    np.testing.assert_array_equal(info["gt"].numpy() > 0, expected > 0)


def test_trailing_singleton_axis_is_accepted(tmp_path):
    _write_leaf(tmp_path, "000001", seg=_tumour()[:, :, None], flair=np.full((16, 16, 1), 0.25))
    image, info = BRATSDataset(tmp_path, image_size=16)[0]
    assert image.shape == (4, 16, 16) and info["y"] == 1
    assert torch.all(image[3] == 0.25)


def test_small_overshoot_is_tolerated_and_clipped(tmp_path):
    _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)), t2=np.full((16, 16), 1.0 + 1e-7))
    image, _ = BRATSDataset(tmp_path, image_size=16)[0]
    assert image.max() == 1.0


def test_constructor_only_lists_files(tmp_path):
    folder = _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)))
    (folder / "brats_train_001_t1_080_w.nii.gz").write_bytes(b"not a nifti")
    data = BRATSDataset(tmp_path, image_size=16)  # lazy: the bad file is only read by __getitem__
    assert len(data) == 1
    with pytest.raises(ValueError, match="brats_train_001_t1_080_w.nii.gz"):
        data[0]


# ---------------------------------------------------------------------------
# Bad input


def test_nonexistent_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir .*nope"):
        BRATSDataset(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="empty directory"):
        BRATSDataset(tmp_path)


def test_missing_modality_fails_at_construction(tmp_path):
    folder = _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)))
    (folder / "brats_train_001_flair_080_w.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="000001.*_flair_"):
        BRATSDataset(tmp_path)


def test_duplicate_modality(tmp_path):
    folder = _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)))
    shutil.copy(folder / "brats_train_001_t2_080_w.nii.gz", folder / "brats_train_001_t2_081_w.nii.gz")
    with pytest.raises(ValueError, match="two t2 files"):
        BRATSDataset(tmp_path)


def test_duplicate_leaf_names(tmp_path):
    _write_leaf(tmp_path / "a", "000001", seg=np.zeros((16, 16)))
    _write_leaf(tmp_path / "b", "000001", seg=np.zeros((16, 16)))
    with pytest.raises(ValueError, match="000001 repeats"):
        BRATSDataset(tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"t1ce": np.zeros((16, 15))}, r"t1ce_080_w.nii.gz: slice shape \(16, 15\) differs"),
        ({"t2": np.zeros((16, 16, 3))}, r"t2_080_w.nii.gz: expected a 2-D slice.*\(16, 16, 3\)"),
        ({"flair": np.full((16, 16), np.nan)}, r"flair_080_w.nii.gz: 256 NaN or infinite"),
        ({"t1": np.full((16, 16), np.inf)}, r"t1_080_w.nii.gz: 256 NaN or infinite"),
        ({"t1": np.full((16, 16), 1.5)}, r"t1_080_w.nii.gz: expected values in \[0, 1\], found \[1.5, 1.5\]"),
        ({"t1ce": np.full((16, 16), -0.1)}, r"t1ce_080_w.nii.gz: expected values in \[0, 1\]"),
    ],
)
def test_bad_slices_are_named(tmp_path, override, message):
    _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)), **override)
    data = BRATSDataset(tmp_path, image_size=16)
    with pytest.raises(ValueError, match=message):
        data[0]


def test_ground_truth_shape_mismatch(tmp_path):
    _write_leaf(tmp_path, "000001", seg=np.zeros((15, 16)))
    with pytest.raises(ValueError, match=r"seg_080_w.nii.gz: ground truth shape"):
        BRATSDataset(tmp_path, image_size=16)[0]


def test_slice_larger_than_image_size(tmp_path):
    _write_leaf(tmp_path, "000001", shape=(16, 18), seg=np.zeros((16, 18)))
    with pytest.raises(ValueError, match=r"t1_080_w.nii.gz: slice of 16x18 is larger than --image_size 17"):
        BRATSDataset(tmp_path, image_size=17)[0]


def test_truncated_file(tmp_path):
    folder = _write_leaf(tmp_path, "000001", shape=(64, 64), seg=np.zeros((64, 64)))
    path = folder / "brats_train_001_flair_080_w.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="flair_080_w.nii.gz: cannot read"):
        BRATSDataset(tmp_path, image_size=64)[0]


def test_empty_file(tmp_path):
    folder = _write_leaf(tmp_path, "000001", seg=np.zeros((16, 16)))
    (folder / "brats_train_001_seg_080_w.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="seg_080_w.nii.gz: not a readable NIfTI"):
        BRATSDataset(tmp_path, image_size=16)[0]


# ---------------------------------------------------------------------------
# nifti helpers


def test_nifti_bytes_are_deterministic_and_round_trip(tmp_path):
    array = np.random.default_rng(0).uniform(size=(5, 7))
    data = nifti_gz_bytes(array)
    assert data == nifti_gz_bytes(array.copy())
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field
    path = tmp_path / "x.nii.gz"
    write_nifti_gz(path, array)
    assert path.read_bytes() == data
    assert gzip.decompress(data)[:4] == (348).to_bytes(4, "little")
    np.testing.assert_array_equal(read_nifti(path), array)
    assert os.listdir(tmp_path) == ["x.nii.gz"]  # no temporary file left behind
