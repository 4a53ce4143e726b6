"""scripts/make_synthetic.py and the example data set in data/."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from guided_diffusion.datasets.brats import BRATSDataset
from guided_diffusion.datasets.chexpert import CheXpertDataset
from guided_diffusion.datasets.layout import MODALITIES

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--size", "32", "--n_train", "8", "--n_test", "4", "--tumour_fraction", "0.5", "--seed", "3"]


@pytest.fixture(scope="module")
def make_synthetic():
    spec = importlib.util.spec_from_file_location("_script_make_synthetic", REPO / "scripts" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def generated(make_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    assert make_synthetic(["--out", str(out), *ARGS]) == 0
    return out


def _snapshot(root: Path) -> dict[str, bytes]:
    """The generated files; the slice stores that loading data/ leaves beside them (a cache) aside."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".slice_store" not in p.parts}


def test_brats_layout_and_labels(generated):
    brats = generated / "brats"
    train = sorted(p.name for p in (brats / "training").iterdir())
    test = sorted(p.name for p in (brats / "testing").iterdir())
    assert train == [f"{n:06d}" for n in range(1, 9)] and test == [f"{n:06d}" for n in range(9, 13)]
    assert sorted(p.name for p in (brats / "training" / "000001").iterdir()) == sorted(
        f"brats_train_001_{seq}_080_w.nii.gz" for seq in MODALITIES + ("seg",)
    )
    assert sorted(p.name for p in (brats / "testing" / "000009").iterdir()) == sorted(
        f"brats_train_003_{seq}_080_w.nii.gz" for seq in MODALITIES
    )
    assert sorted(p.name for p in (brats / "test_labels").iterdir()) == [f"{leaf}-label.nii.gz" for leaf in test]

    training = BRATSDataset(brats / "training", image_size=32)
    testing = BRATSDataset(brats / "testing", label_dir=brats / "test_labels", image_size=32)
    assert sum(training[i][1]["y"] for i in range(8)) == 4
    assert sum(testing[i][1]["y"] for i in range(4)) == 2


def test_brats_slices_look_like_brats(generated):
    for path in sorted((generated / "brats").rglob("*.nii.gz")):
        image = nib.load(path)
        data = image.get_fdata()
        assert image.get_data_dtype() == np.float64 and data.shape == (32, 32)
        if "_seg_" in path.name or "-label" in path.name:
            assert set(np.unique(data)) <= {0.0, 1.0, 2.0, 4.0}
        else:
            assert 0.0 <= data.min() and data.max() <= 1.0 and data.max() > 0.3
    data = BRATSDataset(generated / "brats" / "training", image_size=32)
    tumours = [data[i] for i in range(len(data)) if data[i][1]["y"] == 1]
    for image, info in tumours:
        mask = info["gt"].bool()
        assert mask.sum() >= 0.02 * 32 * 32  # large enough to see
        t1, t1ce, t2, flair = (image[c][mask].mean() for c in range(4))
        brain = (image[0] > 0) & ~mask
        assert flair > image[3][brain].mean() + 0.2  # bright in flair
        assert t2 > image[2][brain].mean()
        assert t1 < image[0][brain].mean()  # dark in t1
        assert image[1][mask].max() > image[1][brain].max()  # the enhancing ring is the brightest in t1ce
    image, _ = data[0]
    assert all(not np.allclose(image[a], image[b]) for a in range(4) for b in range(a))  # four contrasts


def test_chexpert_layout(generated):
    for split, n in (("training", 8), ("testing", 4)):
        data = CheXpertDataset(generated / "chexpert" / split, image_size=32)
        assert len(data) == n and sum(data.labels) == n // 2
        for i in range(len(data)):
            assert data[i][0].shape == (1, 32, 32)
    for path in (generated / "chexpert").rglob("*.npy"):
        array = np.load(path)
        assert array.shape == (32, 32, 1) and array.dtype == np.uint8
        assert re.fullmatch(r"patient\d{5}_study\d", path.stem)
    def lower_half(label):  # where the lung bases are
        return np.mean([np.load(p)[16:].mean() for p in (generated / "chexpert" / "training" / label).glob("*.npy")])

    assert lower_half("diseased") > lower_half("healthy") + 5  # the effusion adds a bright region


def test_same_seed_same_bytes_other_seed_other_bytes(generated, make_synthetic, tmp_path):
    assert make_synthetic(["--out", str(tmp_path / "again"), *ARGS]) == 0
    assert _snapshot(tmp_path / "again") == _snapshot(generated)
    assert make_synthetic(["--out", str(tmp_path / "again"), *ARGS]) == 0  # rerun in place
    assert _snapshot(tmp_path / "again") == _snapshot(generated)
    other = [*ARGS[:-1], "4"]
    assert make_synthetic(["--out", str(tmp_path / "other"), *other]) == 0
    assert _snapshot(tmp_path / "other") != _snapshot(generated)


def test_one_dataset_alone_gives_the_same_files(generated, make_synthetic, tmp_path):
    assert make_synthetic(["--out", str(tmp_path), *ARGS, "--datasets", "chexpert"]) == 0
    assert not (tmp_path / "brats").exists()
    assert _snapshot(tmp_path / "chexpert") == _snapshot(generated / "chexpert")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "8"], "--size 8: expected at least 16"),
        (["--n_train", "-1"], "--n_train -1"),
        (["--tumour_fraction", "1.5"], "--tumour_fraction 1.5"),
    ],
)
def test_bad_flags_write_nothing(make_synthetic, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert make_synthetic(["--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_refuses_to_mix_with_an_earlier_run(generated, make_synthetic, capsys):
    before = _snapshot(generated)
    assert make_synthetic(["--out", str(generated), *ARGS[:3], "6", *ARGS[4:]]) == 2
    assert "would not write" in capsys.readouterr().err
    assert _snapshot(generated) == before


def test_data_folder_is_reproduced_by_the_command_in_its_readme(make_synthetic, tmp_path):
    readme = REPO / "data" / "README.md"
    if not readme.is_file():
        pytest.skip("data/README.md not present")
    (command,) = [line.strip() for line in readme.read_text().splitlines() if "scripts/make_synthetic.py" in line]
    argv = shlex.split(command)[2:]
    out_index = argv.index("--out") + 1
    assert argv[out_index] == "data"
    argv[out_index] = str(tmp_path)
    assert make_synthetic(argv) == 0
    for name in ("brats", "chexpert"):
        assert _snapshot(tmp_path / name) == _snapshot(REPO / "data" / name)
    test = BRATSDataset(REPO / "data/brats/testing", label_dir=REPO / "data/brats/test_labels", image_size=64)
    assert sum(test[i][1]["y"] for i in range(len(test))) >= 4


def test_raw_volumes_in_a_release_layout(tmp_path):
    """make_synthetic.py --n_volumes: whole patients as the 2023 release names them, read back by
    prepare_brats.py's reader; the tumour in slices 88..119 only; byte for byte the same on a second run."""
    from guided_diffusion.datasets.prepare_brats import read_patient_folder
    from guided_diffusion.datasets.synthetic import RAW_TUMOUR, generate_volumes

    folders = generate_volumes(str(tmp_path / "a"), release="2023", n_patients=2, size=16, seed=1)
    assert [os.path.basename(f) for f in folders] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    release, patient = read_patient_folder(folders[1])
    assert release.name == "2023" and patient.shape == (16, 16, 155)
    assert os.path.basename(patient.files["flair"]) == "BraTS-GLI-00001-000-t2f.nii.gz"
    seg = nib.load(patient.files["seg"]).get_fdata()
    tumour_slices = np.flatnonzero(seg.any(axis=(0, 1)))
    assert tumour_slices.min() >= RAW_TUMOUR[0] and tumour_slices.max() < RAW_TUMOUR[1] and len(tumour_slices) > 20
    again = generate_volumes(str(tmp_path / "b"), release="2023", n_patients=1, size=16, seed=1)  # patient 0 alike
    for first, second in zip(folders, again):
        for name in sorted(os.listdir(first)):
            assert open(os.path.join(first, name), "rb").read() == open(os.path.join(second, name), "rb").read()
