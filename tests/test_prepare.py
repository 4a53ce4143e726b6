"""scripts/prepare_brats.py and scripts/prepare_chexpert.py on small inputs in the official layouts."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from guided_diffusion.datasets.brats import BRATSDataset
from guided_diffusion.datasets.chexpert import CheXpertDataset
from guided_diffusion.datasets.layout import MODALITIES

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 20, 155)  # small in-plane size, the real depth


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare_brats():
    return _script("prepare_brats").main


@pytest.fixture(scope="module")
def prepare_chexpert():
    return _script("prepare_chexpert").main


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


# ---------------------------------------------------------------------------
# BraTS2020


def _write_patient(src: Path, number: int, shape=SHAPE, tumour_slices=range(95, 110), nan_in: str | None = None):
    name = f"BraTS20_Training_{number:03d}"
    folder = src / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(number)
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 10:-10] = True
    for m, seq in enumerate(MODALITIES):
        volume = np.where(brain, rng.integers(1, 400 * (m + 1), size=shape), 0).astype(np.int16)
        volume[brain & (rng.uniform(size=shape) < 0.001)] = 9000  # hot outliers to clip away
        if seq == nan_in:
            volume = volume.astype(np.float32)
            volume[5, 5, 100] = np.nan
        nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / f"{name}_{seq}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    for z in tumour_slices:
        seg[8:12, 6:10, z] = 2
        seg[9, 7, z] = 4
        seg[10, 8, z] = 1
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{name}_seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def brats_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("brats_src")
    for number in (1, 2, 3):
        _write_patient(src, number, tumour_slices=range(95, 110) if number != 2 else ())
    (src / "name_mapping.csv").write_text("not a patient\n")  # files beside the patient folders are ignored
    return src


@pytest.fixture(scope="module")
def brats_out(brats_src, tmp_path_factory, prepare_brats):
    out = tmp_path_factory.mktemp("brats_out") / "prepared"
    argv = ["--src", str(brats_src), "--out", str(out), "--test_fraction", "0.34", "--seed", "1",
            "--write_label_dir", "True"]
    assert prepare_brats(argv) == 0
    return out, argv


def test_brats_layout_split_and_numbering(brats_out):
    out, _ = brats_out
    split = json.loads((out / "split.json").read_text())
    assert split["slice_range"] == [80, 128]
    assert len(split["training"]) == 2 and len(split["testing"]) == 1
    assert not set(split["training"]) & set(split["testing"])
    train = sorted(p.name for p in (out / "training").iterdir())
    test = sorted(p.name for p in (out / "testing").iterdir())
    assert len(train) == 2 * 49 and len(test) == 49 and not set(train) & set(test)
    # running numbers over all patients in sorted order; a patient's 49 leaves stay together
    assert sorted(train + test) == [f"{n:06d}" for n in range(1, 3 * 49 + 1)]
    patients = sorted(split["training"] + split["testing"])
    for number, patient in enumerate(patients):
        leaves = [f"{number * 49 + k + 1:06d}" for k in range(49)]
        side = "testing" if patient in split["testing"] else "training"
        assert all((out / side / leaf).is_dir() for leaf in leaves)
        assert split["leaves"][leaves[0]] == {"patient": patient, "slice": 80, "split": side, "tumour": False}
        code = patient[-3:]
        names = sorted(p.name for p in (out / side / leaves[-1]).iterdir())
        assert names == sorted(f"brats_train_{code}_{seq}_128_w.nii.gz" for seq in MODALITIES + ("seg",))
    labels = sorted(p.name for p in (out / "test_labels").iterdir())
    assert labels == [f"{leaf}-label.nii.gz" for leaf in test]


def test_brats_values_are_normalised_per_volume(brats_out, brats_src):
    out, _ = brats_out
    split = json.loads((out / "split.json").read_text())
    patient = split["training"][0]
    leaf = next(leaf for leaf, rec in split["leaves"].items() if rec["patient"] == patient and rec["slice"] == 100)
    for seq in MODALITIES:
        volume = nib.load(brats_src / patient / f"{patient}_{seq}.nii.gz").get_fdata()
        top = np.percentile(volume[volume > 0], 99.5)
        expected = np.clip(volume[:, :, 100], 0, top) / top
        image = nib.load(out / "training" / leaf / f"brats_train_{patient[-3:]}_{seq}_100_w.nii.gz")
        assert image.get_data_dtype() == np.float64 and image.shape == SHAPE[:2]
        np.testing.assert_allclose(image.get_fdata(), expected)
        assert image.get_fdata().min() >= 0 and image.get_fdata().max() <= 1
    seg = nib.load(out / "training" / leaf / f"brats_train_{patient[-3:]}_seg_100_w.nii.gz").get_fdata()
    original = nib.load(brats_src / patient / f"{patient}_seg.nii.gz").get_fdata()[:, :, 100]
    np.testing.assert_array_equal(seg, original)


def test_brats_output_loads_with_labels_from_seg(brats_out, brats_src):
    out, _ = brats_out
    split = json.loads((out / "split.json").read_text())
    testing = BRATSDataset(out / "testing", image_size=32)
    with_label_dir = BRATSDataset(out / "testing", label_dir=out / "test_labels", image_size=32)
    assert len(testing) == 49
    for i in (0, 20, 48):
        image, info = testing[i]
        assert image.shape == (4, 32, 32)
        record = split["leaves"][info["id"]]
        seg = nib.load(brats_src / record["patient"] / f"{record['patient']}_seg.nii.gz").get_fdata()
        assert info["y"] == int((seg[:, :, record["slice"]] > 0).any()) == int(record["tumour"])
        assert with_label_dir[i][1]["y"] == info["y"]
    training = BRATSDataset(out / "training", image_size=24)
    assert {training[i][1]["y"] for i in range(0, len(training), 7)} == {0, 1}


def test_brats_second_run_is_byte_identical(brats_src, tmp_path, prepare_brats):
    out = tmp_path / "out"
    argv = ["--src", str(brats_src), "--out", str(out), "--slice_range", "100,104", "--write_label_dir", "True"]
    assert prepare_brats(argv) == 0
    before = _snapshot(out)
    assert len(before) == 3 * 5 * 5 + 5 + 1  # leaves, test labels, split.json
    assert prepare_brats(argv) == 0
    assert _snapshot(out) == before


def test_brats_refuses_to_mix_with_an_earlier_split(brats_out, prepare_brats, capsys):
    out, argv = brats_out
    before = _snapshot(out)
    other = argv[:-4] + ["--seed", "2", "--write_label_dir", "True"]
    assert prepare_brats(other) == 2
    assert "would not write" in _error_line(capsys)
    assert _snapshot(out) == before


def test_brats_custom_slice_range(brats_src, tmp_path, prepare_brats):
    out = tmp_path / "out"
    assert prepare_brats(["--src", str(brats_src), "--out", str(out), "--slice_range", "100,102",
                          "--test_fraction", "0.5"]) == 0
    leaves = sorted(p for p in out.glob("*/*") if p.is_dir())
    assert len(leaves) == 3 * 3
    assert sorted({p.name.split("_")[4] for leaf in leaves for p in leaf.iterdir()}) == ["100", "101", "102"]
    assert not (out / "test_labels").exists()
    assert all(len(list(leaf.glob("*_seg_*_w.nii.gz"))) == 1 for leaf in leaves)  # test leaves keep seg too


def _bad_src(tmp_path: Path, problem: str) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    if problem == "nonexistent":
        return tmp_path / "nope", "--src .*nope: no such directory"
    if problem == "empty":
        return src, "--src .*: no patient folders"
    _write_patient(src, 1)
    if problem == "missing modality":
        (_write_patient(src, 2) / "BraTS20_Training_002_t1ce.nii.gz").unlink()
        return src, "BraTS20_Training_002_t1ce.nii.gz: missing the t1ce volume"
    if problem == "mismatched shapes":
        folder = _write_patient(src, 2)
        volume = nib.Nifti1Image(np.ones((24, 21, 155), np.int16), np.eye(4))
        nib.save(volume, folder / "BraTS20_Training_002_t2.nii.gz")
        return src, r"BraTS20_Training_002_t2.nii.gz: volume shape \(24, 21, 155\) differs from \(24, 20, 155\)"
    if problem == "not 3-D":
        folder = _write_patient(src, 2)
        nib.save(nib.Nifti1Image(np.ones((24, 20), np.int16), np.eye(4)), folder / "BraTS20_Training_002_flair.nii.gz")
        return src, r"BraTS20_Training_002_flair.nii.gz: expected a 3-D volume"
    if problem == "NaN":  # in the last patient: the earlier ones must not be written either
        _write_patient(src, 2, nan_in="flair")
        return src, "BraTS20_Training_002_flair.nii.gz: 1 NaN or infinite voxels"
    if problem == "too shallow":
        _write_patient(src, 2, shape=(24, 20, 120), tumour_slices=())
        return src, "--slice_range 80,128: slice 128 is outside .*BraTS20_Training_002_t1.nii.gz, which has 120"
    if problem == "truncated":
        path = _write_patient(src, 2) / "BraTS20_Training_002_seg.nii.gz"
        path.write_bytes(path.read_bytes()[:200])
        return src, "BraTS20_Training_002_seg.nii.gz: "
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem",
    ["nonexistent", "empty", "missing modality", "mismatched shapes", "not 3-D", "NaN", "too shallow", "truncated"],
)
def test_brats_bad_input_writes_nothing(tmp_path, prepare_brats, capsys, problem):
    src, message = _bad_src(tmp_path, problem)
    out = tmp_path / "parent" / "out"
    slice_range = "80,128" if problem == "too shallow" else "100,101"  # few slices: fast
    assert prepare_brats(["--src", str(src), "--out", str(out), "--slice_range", slice_range]) == 2
    line = _error_line(capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "parent").exists()


def test_brats_failed_run_leaves_an_existing_output_untouched(brats_out, tmp_path, prepare_brats, capsys):
    out, argv = brats_out
    before = _snapshot(out)
    src, _ = _bad_src(tmp_path, "NaN")
    assert prepare_brats(["--src", str(src), "--out", str(out)]) == 2
    _error_line(capsys)
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_brats_bad_slice_range_flag(brats_src, tmp_path, prepare_brats, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_brats(["--src", str(brats_src), "--out", str(tmp_path / "o"), "--slice_range", "90,80"])
    assert exit_info.value.code == 2
    assert "--slice_range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------
# CheXpert

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Pleural Effusion", "Edema"]


def _chexpert_release(root: Path, rows: list[tuple]) -> Path:
    """rows: (patient, study, view, frontal, no_finding, effusion); writes images and train.csv."""
    lines = []
    for i, (patient, study, view, frontal, no_finding, effusion) in enumerate(rows):
        relative = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/{view}.jpg"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        gradient = (np.arange(40)[:, None] * 6 + np.arange(30)[None, :] + i).astype(np.uint8)  # 40 x 30, not square
        Image.fromarray(gradient).save(path)
        lines.append([relative, "Female", "50", "Frontal" if frontal else "Lateral", "AP" if frontal else "",
                      no_finding, effusion, ""])
    csv_path = root / "CheXpert-v1.0-small" / "train.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(lines)
    return csv_path


ROWS = [
    (1, 1, "view1_frontal", True, "1.0", ""),  # healthy
    (1, 1, "view2_lateral", False, "1.0", ""),  # lateral: skipped
    (2, 1, "view1_frontal", True, "", "1.0"),  # diseased
    (2, 1, "view2_frontal", True, "", "1.0"),  # second frontal view of the study: skipped
    (3, 2, "view1_frontal", True, "", "-1.0"),  # uncertain
    (4, 1, "view1_frontal", True, "1.0", "1.0"),  # both: skipped
    (5, 1, "view1_frontal", True, "0.0", "0.0"),  # neither: skipped
    (6, 1, "view1_frontal", True, "1.0", "0.0"),  # healthy
    (7, 3, "view1_frontal", True, "", "1.0"),  # diseased
    (8, 1, "view1_frontal", True, "1.0", ""),  # healthy
]


@pytest.fixture
def chexpert_release(tmp_path):
    return tmp_path, _chexpert_release(tmp_path / "release", ROWS)


def _chexpert_argv(release, out, *extra):
    root, csv_path = release
    return ["--csv", str(csv_path), "--image_root", str(root / "release"), "--out", str(out), "--image_size", "16",
            "--test_fraction", "0.4", *extra]


def test_chexpert_layout_classes_and_split(chexpert_release, prepare_chexpert, capsys):
    out = chexpert_release[0] / "out"
    assert prepare_chexpert(_chexpert_argv(chexpert_release, out)) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    by_class = {}
    for path in files:
        split, label, name = path.split("/")
        by_class.setdefault(label, set()).add(name)
        array = np.load(out / path)
        assert array.shape == (16, 16, 1) and array.dtype == np.uint8
    assert by_class == {
        "healthy": {"patient00001_study1.npy", "patient00006_study1.npy", "patient00008_study1.npy"},
        "diseased": {"patient00002_study1.npy", "patient00007_study3.npy"},
    }
    split = json.loads((out / "split.json").read_text())
    assert not set(split["training"]) & set(split["testing"])
    assert len(split["testing"]) == 2  # 0.4 of 5 patients
    for path in files:
        side = "testing" if path.split("/")[2].split("_")[0] in split["testing"] else "training"
        assert path.startswith(side)
    for side in ("training", "testing"):
        data = CheXpertDataset(out / side, image_size=16)
        assert set(data.labels) <= {0, 1}
    expected = np.asarray(
        Image.open(chexpert_release[0] / "release/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
        .convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    )
    (saved,) = out.glob("*/healthy/patient00001_study1.npy")
    np.testing.assert_array_equal(np.load(saved)[:, :, 0], expected)
    assert "uncertain 1" in capsys.readouterr().out


def test_chexpert_keep_uncertain_and_idempotence(chexpert_release, prepare_chexpert):
    out = chexpert_release[0] / "out"
    argv = _chexpert_argv(chexpert_release, out, "--keep_uncertain", "True")
    assert prepare_chexpert(argv) == 0
    assert len(list(out.glob("*/diseased/patient00003_study2.npy"))) == 1
    before = _snapshot(out)
    assert prepare_chexpert(argv) == 0
    assert _snapshot(out) == before


def test_chexpert_missing_columns_are_named(tmp_path, prepare_chexpert, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("Path,Sex,Frontal/Lateral\nx/patient00001/study1/view1_frontal.jpg,Male,Frontal\n")
    out = tmp_path / "out"
    assert prepare_chexpert(["--csv", str(csv_path), "--image_root", str(tmp_path), "--out", str(out)]) == 2
    assert "missing column(s) No Finding, Pleural Effusion" in _error_line(capsys)
    assert not out.exists()


def test_chexpert_missing_image_is_named(chexpert_release, prepare_chexpert, capsys):
    root, _ = chexpert_release
    (root / "release/CheXpert-v1.0-small/train/patient00008/study1/view1_frontal.jpg").unlink()
    out = root / "out"
    assert prepare_chexpert(_chexpert_argv(chexpert_release, out)) == 2
    assert "patient00008/study1/view1_frontal.jpg: no such image" in _error_line(capsys)
    assert not out.exists()


def test_chexpert_unreadable_image_writes_nothing(chexpert_release, prepare_chexpert, capsys):
    root, _ = chexpert_release
    (root / "release/CheXpert-v1.0-small/train/patient00008/study1/view1_frontal.jpg").write_bytes(b"oops")
    out = root / "out"
    assert prepare_chexpert(_chexpert_argv(chexpert_release, out)) == 2
    assert "view1_frontal.jpg: not a readable image" in _error_line(capsys)
    assert not out.exists()


def test_chexpert_bad_label_value(tmp_path, prepare_chexpert, capsys):
    csv_path = _chexpert_release(tmp_path, [(1, 1, "view1_frontal", True, "yes", "")])
    assert prepare_chexpert(["--csv", str(csv_path), "--image_root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "line 2: column No Finding" in _error_line(capsys)
