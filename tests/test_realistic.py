"""scripts/make_realistic.py and guided_diffusion/datasets/realistic.py: the realistic BRATS-like set on the
MNI152 template that nilearn ships (a dev dependency)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from guided_diffusion.datasets import realistic
from guided_diffusion.datasets.loaders import create_dataset
from guided_diffusion.util.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                reason="needs nilearn (pip install -e '.[dev]'), which ships the MNI152 template")

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
ARGS = ["--size", str(SIZE), "--n_train", "4", "--n_test", "8", "--n_val", "4", "--seed", "1"]
SMALL = ["--size", str(SIZE), "--n_train", "4", "--n_test", "4", "--n_val", "0"]


@pytest.fixture(scope="module")
def make_realistic():
    spec = importlib.util.spec_from_file_location("_script_make_realistic", REPO / "scripts" / "make_realistic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def generated(make_realistic, tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    assert make_realistic(["--out", str(out), *ARGS]) == 0
    return out / "brats"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _volumes(brats: Path, split: str):
    """{patient: (images (D, 4, S, S), ground truth (D, S, S) bool)} through the loaders the scripts use."""
    labels = str(brats / "test_labels") if split == "testing" else None
    dataset = create_dataset(str(brats / split), "brats", SIZE, label_dir=labels)
    by_patient: dict[str, list] = {}
    for i in range(len(dataset)):
        image, info = dataset[i]
        by_patient.setdefault(info["patient"], []).append((info["slice"], image.numpy(), info["gt"].numpy() > 0))
    return {p: (np.stack([s[1] for s in sorted(v, key=lambda s: s[0])]),
                np.stack([s[2] for s in sorted(v, key=lambda s: s[0])])) for p, v in by_patient.items()}


def test_same_seed_same_bytes_other_seed_other_bytes(make_realistic, tmp_path):
    runs = {}
    for name, seed in (("first", 3), ("again", 3), ("other", 4)):
        assert make_realistic(["--out", str(tmp_path / name), *SMALL, "--seed", str(seed)]) == 0
        runs[name] = _snapshot(tmp_path / name / "brats")
    assert len(runs["first"]) == 4 * 5 + 4 * 4 + 4  # 4 training leaves of 5 files, 4 test leaves of 4, 4 labels
    assert runs["again"] == runs["first"] and runs["other"] != runs["first"]


def test_layout_is_the_example_sets_and_the_loaders_read_it(generated):
    assert sorted(p.name for p in generated.iterdir()) == ["test_labels", "testing", "training", "validation"]
    assert sorted(p.name for p in (generated / "training").iterdir()) == ["000001", "000002", "000003", "000004"]
    assert sorted(p.name for p in (generated / "training" / "000001").iterdir()) == sorted(
        f"brats_train_001_{seq}_080_w.nii.gz" for seq in ("t1", "t1ce", "t2", "flair", "seg"))
    assert len(list((generated / "test_labels").iterdir())) == 8
    for split, patients in (("training", 1), ("testing", 2), ("validation", 1)):
        volumes = _volumes(generated, split)
        assert len(volumes) == patients
        for images, truth in volumes.values():
            assert images.shape == (4, 4, SIZE, SIZE) and truth.any()  # every patient has a tumour by default
            assert 0.0 <= images.min() and images.max() <= 1.0 and (images[:, :, 0, 0] == 0).all()


def test_ground_truth_is_exactly_where_the_lesion_was_drawn():
    template = realistic.load_template(realistic._blur_mm(SIZE))
    patient = realistic.render_patient(np.random.default_rng(4), template, SIZE, tumour=True)
    changed = (patient.channels != patient.lesion_free).any(axis=0)  # (D, S, S)
    assert set(np.unique(patient.seg)) == {0, 1, 2, 4}  # oedema, enhancing rim, necrotic centre
    np.testing.assert_array_equal(changed, patient.seg > 0)
    healthy = realistic.render_patient(np.random.default_rng(4), template, SIZE, tumour=False)
    assert not healthy.seg.any()
    np.testing.assert_array_equal(healthy.channels, healthy.lesion_free)


def test_lesion_intensities_overlap_normal_tissue_in_every_channel(generated):
    lesion, normal = [], []
    for split in ("training", "testing", "validation"):
        for images, truth in _volumes(generated, split).values():
            brain = images.any(axis=1)  # (D, S, S): background is 0 in every channel
            lesion.append(images.transpose(1, 0, 2, 3)[:, truth])
            normal.append(images.transpose(1, 0, 2, 3)[:, brain & ~truth])
    lesion, normal = np.concatenate(lesion, axis=1), np.concatenate(normal, axis=1)
    for c, name in enumerate(("t1", "t1ce", "t2", "flair")):
        # overlap coefficient of the two histograms: 1 identical, 0 disjoint
        p, _ = np.histogram(lesion[c], bins=20, range=(0, 1))
        q, _ = np.histogram(normal[c], bins=20, range=(0, 1))
        overlap = np.minimum(p / p.sum(), q / q.sum()).sum()
        assert overlap > 0.25, (name, overlap)
        inside = np.mean((lesion[c] >= np.percentile(normal[c], 1)) & (lesion[c] <= np.percentile(normal[c], 99)))
        assert inside > 0.5, (name, inside)


def test_flair_alone_is_no_perfect_detector(generated):
    volumes = list(_volumes(generated, "testing").values())

    def mean_dice(threshold: float) -> float:
        values = []
        for images, truth in volumes:
            mask = images[:, 3] > threshold
            total = mask.sum() + truth.sum()
            values.append(1.0 if total == 0 else 2.0 * (mask & truth).sum() / total)
        return float(np.mean(values))

    candidates = np.unique(np.concatenate([images[:, 3].ravel() for images, _ in volumes]))
    best = max(mean_dice(t) for t in candidates[:-1])
    assert 0.05 < best < 0.9


def test_bad_flags_and_a_missing_template_package_are_user_errors(make_realistic, tmp_path, capsys, monkeypatch):
    assert make_realistic(["--out", str(tmp_path / "bad"), "--size", "8"]) == 2
    assert "--size 8" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    monkeypatch.setattr(realistic, "TEMPLATE_PACKAGE", "no_such_template_package")
    with pytest.raises(UserError, match="no_such_template_package"):
        realistic.template_path("grey")
