"""scripts/prepare_brats.py and scripts/prepare_chexpert.py on small inputs in the official layouts."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
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
    """The written data set; the slice stores (a cache whose manifest holds modification times) aside."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".slice_store" not in p.parts}


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
    train = sorted(p.name for p in (out / "training").iterdir() if not p.name.startswith("."))  # not the store
    test = sorted(p.name for p in (out / "testing").iterdir() if not p.name.startswith("."))
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
    leaves = sorted(p for p in out.glob("*/*") if p.is_dir() and not p.name.startswith("."))
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
    files = sorted(str(p.relative_to(out)) for p in out.glob("*/*/*.npy"))
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


# ---------------------------------------------------------------------------
# The BraTS releases as published: 2020 (patient 355, CSV tables, validation release), 2021, 2023.

SMALL = (16, 16, 12)  # tiny volumes; the slices kept are SMALL_RANGE
SMALL_RANGE = "3,8"
SMALL_SLICES = range(3, 9)
TUMOUR_SLICES = range(5, 8)  # 3 diseased and 3 healthy slices per tumour patient

# How each release names a case's files: separator and the release's word for each of our sequences.
PUBLISHED = {
    "2020": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}


def _case_volumes(seed: int, tumour: bool) -> dict[str, np.ndarray]:
    """seq -> volume: a box of brain whose intensities differ by modality (so a swapped mapping shows)
    and start well above 0 (so the brain's minimum is not the background's), and a seg."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SMALL, bool)
    brain[2:-2, 3:-3, 1:-1] = True
    volumes = {}
    for m, seq in enumerate(MODALITIES):
        low = 100 * (m + 1)
        volumes[seq] = np.where(brain, rng.integers(low, 3 * low, size=SMALL), 0).astype(np.int16)
    seg = np.zeros(SMALL, np.uint8)
    if tumour:
        for z in TUMOUR_SLICES:
            seg[6:9, 6:9, z] = 2
            seg[7, 7, z] = 1
    volumes["seg"] = seg
    return volumes


def _write_case(src: Path, release: str, folder: str, volumes: dict, ext: str = ".nii.gz",
                seg_file: str | None = None, with_seg: bool = True) -> Path:
    """One case folder named as ``release`` publishes it (``seg_file`` overrides the seg's name)."""
    separator, words = PUBLISHED[release]
    case = src / folder
    case.mkdir(parents=True)
    for seq, volume in volumes.items():
        if seq == "seg" and not with_seg:
            continue
        name = seg_file if seq == "seg" and seg_file else f"{folder}{separator}{words[seq]}{ext}"
        nib.save(nib.Nifti1Image(volume, np.eye(4)), case / name)
    return case


def _brats2020_tree(src: Path) -> dict[str, dict]:
    """The 2020 training release in small: patients 1-4 and 355 (seg W39_1998.09.19_Segm.nii),
    patient 2 in uncompressed .nii files, the two CSV tables beside the patients."""
    cases = {}
    for number in (1, 2, 3, 4, 355):
        folder = f"BraTS20_Training_{number:03d}"
        cases[folder] = _case_volumes(number, tumour=number != 3)
        _write_case(src, "2020", folder, cases[folder], ext=".nii" if number == 2 else ".nii.gz",
                    seg_file="W39_1998.09.19_Segm.nii" if number == 355 else None)
    (src / "name_mapping.csv").write_text("Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,BraTS_2019_subject_ID,"
                                          "BraTS_2020_subject_ID\nHGG,Brats17_CBICA_AAB_1,,,BraTS20_Training_001\n")
    (src / "survival_info.csv").write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n"
                                           "BraTS20_Training_001,60.463,289,GTR\n")
    return cases


def _brats2021_tree(src: Path, n: int = 8) -> dict[str, dict]:
    cases = {}
    for number in range(n):
        folder = f"BraTS2021_{number:05d}"
        cases[folder] = _case_volumes(100 + number, tumour=number % 3 != 0)
        _write_case(src, "2021", folder, cases[folder])
    return cases


def _brats2023_tree(src: Path) -> dict[str, dict]:
    """Four subjects; subject 00003 has two scans (-000 and -001)."""
    cases = {}
    for subject, scan in ((0, 0), (1, 0), (2, 0), (3, 0), (3, 1)):
        folder = f"BraTS-GLI-{subject:05d}-{scan:03d}"
        cases[folder] = _case_volumes(200 + 10 * subject + scan, tumour=subject != 1)
        _write_case(src, "2023", folder, cases[folder])
    return cases


def _percentile_slice(volume: np.ndarray, z: int) -> np.ndarray:
    volume = volume.astype(np.float64)
    top = np.percentile(volume[volume > 0], 99.5)
    return np.clip(volume[:, :, z], 0, top) / top


def _recount(out: Path) -> dict[str, dict[str, int]]:
    """Healthy and diseased leaves per part, read back from the written seg files."""
    counts = {}
    for part in ("training", "validation", "testing"):
        counts[part] = {"healthy": 0, "diseased": 0}
        for seg in (out / part).glob("*/*_seg_*_w.nii.gz") if (out / part).is_dir() else []:
            counts[part]["diseased" if (nib.load(seg).get_fdata() > 0).any() else "healthy"] += 1
    return counts


def _leaf_codes(out: Path, part: str) -> set[str]:
    """The <patient> codes of the slice files in ``part``."""
    return {p.name[len("brats_train_"):].rsplit("_", 3)[0] for p in (out / part).glob("*/*_t1_*_w.nii.gz")}


def test_brats2020_as_published_with_patient_355_and_the_csv_tables(tmp_path, prepare_brats, capsys):
    src = tmp_path / "MICCAI_BraTS2020_TrainingData"
    cases = _brats2020_tree(src)
    out = tmp_path / "out"
    assert prepare_brats(["--src", str(src), "--out", str(out), "--slice_range", SMALL_RANGE,
                          "--progress", "False"]) == 0
    stdout = capsys.readouterr().out
    # the log names the file that served as patient 355's seg
    assert "BraTS20_Training_355: no *_seg.nii.gz file; W39_1998.09.19_Segm.nii serves as the segmentation" in stdout
    split = json.loads((out / "split.json").read_text())
    assert split["release"] == "2020"
    assert sorted(split["training"] + split["testing"]) == sorted(cases)  # the CSV tables are no patients
    leaves = {leaf: rec for leaf, rec in split["leaves"].items() if rec["patient"] == "BraTS20_Training_355"}
    assert len(leaves) == len(SMALL_SLICES)
    for leaf, rec in leaves.items():
        z = rec["slice"]
        seg = nib.load(out / rec["split"] / leaf / f"brats_train_355_seg_{z:03d}_w.nii.gz").get_fdata()
        np.testing.assert_array_equal(seg, cases["BraTS20_Training_355"]["seg"][:, :, z])
        assert rec["tumour"] == (z in TUMOUR_SLICES)
    # patient 2's uncompressed .nii volumes are read like the .nii.gz ones
    leaf, rec = next((k, r) for k, r in split["leaves"].items() if r["patient"] == "BraTS20_Training_002")
    t2 = nib.load(out / rec["split"] / leaf / f"brats_train_002_t2_{rec['slice']:03d}_w.nii.gz").get_fdata()
    np.testing.assert_allclose(t2, _percentile_slice(cases["BraTS20_Training_002"]["t2"], rec["slice"]))
    assert _recount(out) == split["counts"]


def test_brats2020_validation_release_has_no_ground_truth(tmp_path, prepare_brats, capsys):
    src = tmp_path / "MICCAI_BraTS2020_ValidationData"
    for number in (1, 2):
        folder = f"BraTS20_Validation_{number:03d}"
        _write_case(src, "2020", folder, _case_volumes(number, tumour=True), with_seg=False)
    (src / "name_mapping_validation_data.csv").write_text("BraTS_2020_subject_ID\nBraTS20_Validation_001\n")
    (src / "survival_evaluation.csv").write_text("BraTS20ID,Age,ResectionStatus\n")
    out = tmp_path / "parent" / "out"
    assert prepare_brats(["--src", str(src), "--out", str(out), "--slice_range", SMALL_RANGE]) == 2
    line = _error_line(capsys)
    assert "no patient folder holds a segmentation" in line and "no ground truth" in line, line
    assert "MICCAI_BraTS2020_TrainingData" in line
    assert not (tmp_path / "parent").exists()


def test_brats_one_patient_without_seg_is_named(tmp_path, prepare_brats, capsys):
    src = tmp_path / "src"
    _brats2021_tree(src, n=3)
    (src / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").unlink()
    assert prepare_brats(["--src", str(src), "--out", str(tmp_path / "out"), "--slice_range", SMALL_RANGE]) == 2
    assert "BraTS2021_00001_seg.nii.gz: missing the seg volume of patient BraTS2021_00001" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("release, tree, code", [("2021", _brats2021_tree, "00004"),
                                                 ("2023", _brats2023_tree, "00003-001")])
def test_brats_2021_and_2023_are_recognised_and_written_as_2020(tmp_path, prepare_brats, release, tree, code):
    src = tmp_path / "src"
    cases = tree(src)
    out = tmp_path / "out"
    assert prepare_brats(["--src", str(src), "--out", str(out), "--slice_range", SMALL_RANGE, "--progress",
                          "False"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["release"] == release
    assert sorted(split["training"] + split["testing"]) == sorted(cases)
    folder = next(name for name in cases if name.endswith(code))
    leaf, rec = next((k, r) for k, r in split["leaves"].items() if r["patient"] == folder and r["slice"] == 6)
    names = sorted(p.name for p in (out / rec["split"] / leaf).iterdir())
    assert names == sorted(f"brats_train_{code}_{seq}_006_w.nii.gz" for seq in MODALITIES + ("seg",))
    for seq in MODALITIES:  # 2023's t1n, t1c, t2w, t2f land in t1, t1ce, t2, flair
        written = nib.load(out / rec["split"] / leaf / f"brats_train_{code}_{seq}_006_w.nii.gz")
        assert written.get_data_dtype() == np.float64 and written.shape == SMALL[:2]
        np.testing.assert_allclose(written.get_fdata(), _percentile_slice(cases[folder][seq], 6))
    data = BRATSDataset(out / "training", image_size=16)
    image, info = data[0]
    assert image.shape == (4, 16, 16) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert _recount(out) == split["counts"]


def test_brats2023_scans_of_one_subject_stay_in_one_part(tmp_path, prepare_brats):
    src = tmp_path / "src"
    _brats2023_tree(src)
    parts = set()
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        assert prepare_brats(["--src", str(src), "--out", str(out), "--slice_range", "4,4", "--seed", str(seed),
                              "--test_fraction", "0.25", "--val_fraction", "0.25", "--progress", "False"]) == 0
        split = json.loads((out / "split.json").read_text())
        (part,) = {part for part in ("training", "validation", "testing")
                   if {"BraTS-GLI-00003-000", "BraTS-GLI-00003-001"} & set(split[part])}
        assert {"BraTS-GLI-00003-000", "BraTS-GLI-00003-001"} <= set(split[part])
        parts.add(part)
    assert len(parts) >= 2  # the seeds do move the subject: the check above is not vacuous


def test_brats_release_flag_forces_a_layout(tmp_path, prepare_brats, capsys):
    src = tmp_path / "src"
    for name in ("case_a", "case_b"):  # renamed folders: the names tell no release
        volumes = _case_volumes(len(name), tumour=True)
        case = src / name
        case.mkdir(parents=True)
        for seq, word in PUBLISHED["2023"][1].items():
            nib.save(nib.Nifti1Image(volumes[seq], np.eye(4)), case / f"{name}-{word}.nii.gz")
    out = tmp_path / "out"
    argv = ["--src", str(src), "--out", str(out), "--slice_range", SMALL_RANGE]
    assert prepare_brats(argv) == 2
    assert "cannot tell the BraTS release" in _error_line(capsys)
    assert prepare_brats(argv + ["--release", "2021"]) == 2
    assert "case_a_t1.nii.gz: missing the t1 volume of patient case_a" in _error_line(capsys)
    assert not out.exists()
    assert prepare_brats(argv + ["--release", "2023"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["release"] == "2023" and sorted(split["training"] + split["testing"]) == ["case_a", "case_b"]
    assert len(list(out.glob("*/*/brats_train_case_a_t1_003_w.nii.gz"))) == 1


def test_brats_folder_of_another_release_is_named(tmp_path, prepare_brats, capsys):
    src = tmp_path / "src"
    _brats2021_tree(src, n=2)
    _write_case(src, "2023", "BraTS-GLI-00000-000", _case_volumes(0, tumour=True))
    assert prepare_brats(["--src", str(src), "--out", str(tmp_path / "out"), "--slice_range", SMALL_RANGE]) == 2
    assert "patient folders of several releases" in _error_line(capsys)
    shutil.rmtree(src / "BraTS-GLI-00000-000")
    (src / "notes").mkdir()  # a folder that is no patient of the release the others tell
    (src / "notes" / "readme.txt").write_text("x")
    assert prepare_brats(["--src", str(src), "--out", str(tmp_path / "out"), "--slice_range", SMALL_RANGE]) == 2
    assert "notes/ is not a BraTS2021 patient folder" in _error_line(capsys)


def test_brats_src_one_level_too_high_gets_a_hint(tmp_path, prepare_brats, capsys):
    _brats2021_tree(tmp_path / "download" / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData", n=2)
    assert prepare_brats(["--src", str(tmp_path / "download"), "--out", str(tmp_path / "out")]) == 2
    assert "did you mean --src " in _error_line(capsys)


def test_brats_three_way_split_counts_and_idempotence(tmp_path, prepare_brats, capsys):
    src = tmp_path / "src"
    cases = _brats2021_tree(src, n=8)
    out = tmp_path / "out"
    common = ["--src", str(src), "--slice_range", SMALL_RANGE, "--test_fraction", "0.25", "--seed", "3",
              "--write_label_dir", "True", "--progress", "False"]
    argv = common + ["--out", str(out), "--val_fraction", "0.25"]
    assert prepare_brats(argv) == 0
    printed = capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    parts = {part: set(split[part]) for part in ("training", "validation", "testing")}
    assert [len(parts[p]) for p in ("training", "validation", "testing")] == [4, 2, 2]
    assert not (parts["training"] & parts["validation"] or parts["training"] & parts["testing"]
                or parts["validation"] & parts["testing"])
    assert set().union(*parts.values()) == set(cases)
    for part, patients in parts.items():  # the files agree with split.json
        assert _leaf_codes(out, part) == {p.split("_")[1] for p in patients}
        assert all(r["split"] == part for r in split["leaves"].values() if r["patient"] in patients)
    # validation leaves carry seg like training; only test leaves get a label file
    assert len(list(out.glob("validation/*/*_seg_*_w.nii.gz"))) == 2 * len(SMALL_SLICES)
    assert len(list((out / "test_labels").iterdir())) == 2 * len(SMALL_SLICES)
    counts = split["counts"]
    assert counts == _recount(out)
    expected = {part: {"diseased": 0, "healthy": 0} for part in parts}
    for part, patients in parts.items():
        for patient in patients:
            tumour = (cases[patient]["seg"][:, :, 3:9] > 0).any(axis=(0, 1))
            expected[part]["diseased"] += int(tumour.sum())
            expected[part]["healthy"] += int((~tumour).sum())
    assert counts == expected
    for part in ("training", "validation", "testing"):  # the same numbers are printed
        c = counts[part]
        assert (f"{part}: {len(parts[part])} patients, {c['healthy'] + c['diseased']} slices "
                f"({c['healthy']} healthy, {c['diseased']} diseased)") in printed
    assert len(BRATSDataset(out / "validation", image_size=16)) == 2 * len(SMALL_SLICES)
    # the test part is the one of a run without validation (same seed): adding it moves no test patient
    plain = tmp_path / "plain"
    assert prepare_brats(common + ["--out", str(plain)]) == 0
    assert json.loads((plain / "split.json").read_text())["testing"] == split["testing"]
    assert not (plain / "validation").exists()
    before = _snapshot(out)
    assert prepare_brats(argv) == 0
    assert _snapshot(out) == before


def test_brats_brainminmax_normalisation(tmp_path, prepare_brats):
    src = tmp_path / "src"
    cases = _brats2021_tree(src, n=2)
    out = {}
    for scheme in ("percentile", "brainminmax"):
        out[scheme] = tmp_path / scheme
        assert prepare_brats(["--src", str(src), "--out", str(out[scheme]), "--slice_range", SMALL_RANGE,
                              "--normalise", scheme, "--progress", "False"]) == 0
        assert json.loads((out[scheme] / "split.json").read_text())["normalise"] == scheme
    split = json.loads((out["brainminmax"] / "split.json").read_text())
    for leaf, rec in split["leaves"].items():
        code, z = rec["patient"].split("_")[1], rec["slice"]
        for seq in MODALITIES:
            name = f"{rec['split']}/{leaf}/brats_train_{code}_{seq}_{z:03d}_w.nii.gz"
            volume = cases[rec["patient"]][seq].astype(np.float64)
            brain = volume[volume != 0]
            expected = np.where(volume[:, :, z] != 0, (volume[:, :, z] - brain.min()) / (brain.max() - brain.min()), 0)
            written = nib.load(out["brainminmax"] / name).get_fdata()
            np.testing.assert_allclose(written, expected, atol=1e-12)
            assert written.min() >= 0 and written.max() <= 1
            assert (written[volume[:, :, z] == 0] == 0).all()  # background stays 0
            percentile = nib.load(out["percentile"] / name).get_fdata()
            np.testing.assert_allclose(percentile, _percentile_slice(cases[rec["patient"]][seq], z))
            assert not np.allclose(percentile, written)  # the two schemes differ


def test_brats_bad_normalise_flag(brats_src, tmp_path, prepare_brats, capsys):
    assert prepare_brats(["--src", str(brats_src), "--out", str(tmp_path / "o"), "--normalise", "zscore"]) == 2
    assert _error_line(capsys) == "error: --normalise 'zscore': expected one of percentile, brainminmax"
    assert not (tmp_path / "o").exists()


def test_release_and_normalisation_tables_match_the_flags():
    from guided_diffusion.datasets.prepare_brats import NORMALISERS, RELEASES
    from guided_diffusion.util.flags import BRATS_RELEASES, NORMALISATIONS

    assert set(RELEASES) == set(BRATS_RELEASES) - {"auto"}
    assert set(NORMALISERS) == set(NORMALISATIONS)


def test_three_way_split_keeps_the_test_part_and_checks_fractions():
    from guided_diffusion.datasets.splits import split_patients, split_train_val_test
    from guided_diffusion.util.errors import UserError

    patients = [f"p{i:02d}" for i in range(20)]
    for seed in range(5):
        train, val, test = split_train_val_test(patients, 0.2, 0.1, seed)
        assert test == split_patients(patients, 0.2, seed)[1]
        assert (len(train), len(val), len(test)) == (14, 2, 4)
        assert sorted(train + val + test) == patients
    assert split_train_val_test(patients, 0.2, 0.0, 0)[1] == []
    assert len(split_train_val_test(patients[:3], 0.2, 0.01, 0)[1]) == 1  # at least one when asked for
    with pytest.raises(UserError, match="--test_fraction 0.6 --val_fraction 0.5"):
        split_train_val_test(patients, 0.6, 0.5, 0)
    with pytest.raises(UserError, match="--val_fraction 0.3: 2 patient"):
        split_train_val_test(patients[:2], 0.5, 0.3, 0)


# ---------------------------------------------------------------------------
# CheXpert as published: CheXpert-v1.0-small/train.csv with its real header.

REAL_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
               "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
               "Pleural Other,Fracture,Support Devices").split(",")

# (patient, study, view, No Finding, Pleural Effusion, Edema, class expected without / with --keep_uncertain)
PUBLISHED_ROWS = [
    (1, 1, "view1_frontal", "1.0", "", "", "healthy", "healthy"),
    (1, 1, "view2_lateral", "1.0", "", "", None, None),  # lateral
    (1, 2, "view1_frontal", "1.0", "0.0", "0.0", "healthy", "healthy"),
    (2, 1, "view1_frontal", "", "1.0", "-1.0", "diseased", "diseased"),
    (2, 1, "view2_lateral", "", "1.0", "", None, None),  # lateral
    (3, 1, "view1_frontal", "", "-1.0", "1.0", None, "diseased"),  # uncertain effusion
    (4, 1, "view1_frontal", "1.0", "1.0", "", None, None),  # conflict
    (5, 1, "view1_frontal", "", "0.0", "1.0", None, None),  # neither
    (6, 1, "view1_frontal", "1.0", "-1.0", "", None, None),  # uncertain, then a conflict when kept
    (7, 3, "view1_frontal", "", "1.0", "0.0", "diseased", "diseased"),
    (8, 1, "view1_frontal", "1.0", "", "", "healthy", "healthy"),
    (9, 1, "view1_frontal", "", "1.0", "", "diseased", "diseased"),
    (10, 1, "view1_frontal", "1.0", "", "-1.0", "healthy", "healthy"),  # another finding uncertain: healthy stands
    (11, 2, "view1_frontal", "", "1.0", "1.0", "diseased", "diseased"),
    (12, 1, "view1_frontal", "1.0", "0.0", "", "healthy", "healthy"),
]


def _published_chexpert(root: Path) -> Path:
    """CheXpert-v1.0-small/train.csv with the real header and the images its Path column names."""
    lines = []
    for i, (patient, study, view, no_finding, effusion, edema, _, _) in enumerate(PUBLISHED_ROWS):
        relative = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/{view}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.arange(36)[:, None] * 7 + np.arange(28)[None, :] * (i + 1)).astype(np.uint8)).save(
            root / relative)
        row = dict.fromkeys(REAL_HEADER, "")
        row.update({"Path": relative, "Sex": "Male" if i % 2 else "Female", "Age": str(40 + i),
                    "Frontal/Lateral": "Lateral" if "lateral" in view else "Frontal",
                    "AP/PA": "" if "lateral" in view else "AP", "No Finding": no_finding,
                    "Pleural Effusion": effusion, "Edema": edema, "Support Devices": "1.0" if i % 3 else ""})
        lines.append(row)
    csv_path = root / "CheXpert-v1.0-small" / "train.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REAL_HEADER)
        writer.writeheader()
        writer.writerows(lines)
    return csv_path


def _expected_classes(keep_uncertain: bool) -> dict[str, str]:
    column = 7 if keep_uncertain else 6
    return {f"patient{r[0]:05d}_study{r[1]}.npy": r[column] for r in PUBLISHED_ROWS if r[column]}


@pytest.mark.parametrize("keep_uncertain", [False, True])
def test_chexpert_as_published_three_way_split(tmp_path, prepare_chexpert, capsys, keep_uncertain):
    csv_path = _published_chexpert(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--csv", str(csv_path), "--image_root", str(tmp_path / "data"), "--out", str(out), "--image_size", "16",
            "--test_fraction", "0.3", "--val_fraction", "0.2", "--keep_uncertain", str(keep_uncertain),
            "--progress", "False"]
    assert prepare_chexpert(argv) == 0
    printed = capsys.readouterr().out
    files = {}
    for path in out.glob("*/*/*.npy"):  # part/class/image, not the store
        part, label, name = path.relative_to(out).parts
        files[name] = (part, label)
        array = np.load(path)
        assert array.shape == (16, 16, 1) and array.dtype == np.uint8
    assert {name: label for name, (_, label) in files.items()} == _expected_classes(keep_uncertain)
    split = json.loads((out / "split.json").read_text())
    parts = {part: set(split[part]) for part in ("training", "validation", "testing")}
    assert all(parts.values())
    assert not (parts["training"] & parts["validation"] or parts["training"] & parts["testing"]
                or parts["validation"] & parts["testing"])
    assert set().union(*parts.values()) == {name.split("_")[0] for name in files}  # patients from the Path
    for name, (part, _) in files.items():
        assert name.split("_")[0] in parts[part]
    counts = {part: {label: sum(1 for p, l in files.values() if (p, l) == (part, label))
                     for label in ("healthy", "diseased")} for part in parts}
    assert split["counts"] == counts
    for part in parts:
        c = counts[part]
        assert (f"{part}: {len(parts[part])} patients, {c['healthy'] + c['diseased']} images "
                f"({c['healthy']} healthy, {c['diseased']} diseased)") in printed
        assert set(CheXpertDataset(out / part, image_size=16).labels) <= {0, 1}
    skipped = {"lateral": 2, "uncertain": 0 if keep_uncertain else 2, "conflict": 2 if keep_uncertain else 1,
               "neither": 1, "extra_view": 0}
    assert split["skipped"] == skipped
    assert "skipped rows: " + ", ".join(f"{k} {n}" for k, n in skipped.items()) in printed
    before = _snapshot(out)
    assert prepare_chexpert(argv) == 0
    assert _snapshot(out) == before


def test_chexpert_as_published_missing_image_is_named(tmp_path, prepare_chexpert, capsys):
    csv_path = _published_chexpert(tmp_path / "data")
    (tmp_path / "data/CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg").unlink()
    out = tmp_path / "out"
    argv = ["--csv", str(csv_path), "--out", str(out), "--image_size", "16", "--val_fraction", "0.2"]
    assert prepare_chexpert(argv + ["--image_root", str(tmp_path / "data")]) == 2
    line = _error_line(capsys)
    assert "CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg: no such image" in line
    assert "train.csv line 13" in line
    assert not out.exists()
    # --image_root one level too deep: the message says which folder it should hold
    assert prepare_chexpert(argv + ["--image_root", str(tmp_path / "data" / "CheXpert-v1.0-small")]) == 2
    assert "holds no CheXpert-v1.0-small/ folder" in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "no_finding, effusion, keep, expected",
    [(1.0, None, False, "healthy"), (1.0, 0.0, False, "healthy"), (None, 1.0, False, "diseased"),
     (0.0, 1.0, False, "diseased"), (1.0, 1.0, False, "conflict"), (None, -1.0, False, "uncertain"),
     (None, -1.0, True, "diseased"), (1.0, -1.0, False, "uncertain"), (1.0, -1.0, True, "conflict"),
     (-1.0, None, True, "uncertain"), (-1.0, 1.0, False, "diseased"), (None, None, False, "neither"),
     (0.0, 0.0, True, "neither")],
)
def test_chexpert_label_rule(no_finding, effusion, keep, expected):
    from guided_diffusion.datasets.prepare_chexpert import label_row

    assert label_row(no_finding, effusion, keep) == expected
