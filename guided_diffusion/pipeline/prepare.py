"""The scripts that write data sets: prepare_brats.py, prepare_chexpert.py, make_synthetic.py and
make_realistic.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..datasets.common import DATASETS
from ..datasets.layout import VALIDATION
from ..datasets.prepare_brats import prepare_brats
from ..datasets.prepare_chexpert import prepare_chexpert
from ..datasets.realistic import generate_realistic
from ..datasets.synthetic import generate, generate_volumes
from ..util.errors import UserError
from ..util.flags import (
    DataFlags,
    OutputFlags,
    PrepareBratsFlags,
    PrepareChexpertFlags,
    RunFlags,
    SplitFlags,
    SyntheticFlags,
)
from ..util.flagspec import part


@dataclass(frozen=True)
class PrepareBratsConfig:
    """scripts/prepare_brats.py"""

    release: PrepareBratsFlags
    output: OutputFlags
    split: SplitFlags = part("test_fraction", "val_fraction")
    run: RunFlags = part("seed", "progress")
    SCRIPT: ClassVar[str] = "prepare_brats"
    DEFAULTS: ClassVar[dict] = {"val_fraction": 0.0}  # no validation/ unless asked for
    HELP: ClassVar[dict] = {"seed": "seeds the patient-level split"}


@dataclass(frozen=True)
class PrepareChexpertConfig:
    """scripts/prepare_chexpert.py"""

    release: PrepareChexpertFlags
    output: OutputFlags
    data: DataFlags = part("image_size")
    split: SplitFlags = part("test_fraction", "val_fraction")
    run: RunFlags = part("seed", "progress")
    SCRIPT: ClassVar[str] = "prepare_chexpert"
    DEFAULTS: ClassVar[dict] = {"image_size": 256, "val_fraction": 0.0}
    HELP: ClassVar[dict] = {"image_size": "side the images are resized to in pixels (bilinear, aspect ratio not kept)",
                            "seed": "seeds the patient-level split"}


@dataclass(frozen=True)
class SyntheticConfig:
    """scripts/make_synthetic.py"""

    synthetic: SyntheticFlags
    output: OutputFlags
    run: RunFlags = part("seed")
    raw: PrepareBratsFlags = part("release")
    SCRIPT: ClassVar[str] = "make_synthetic"
    HELP: ClassVar[dict] = {"seed": "seeds the generated images and tumours"}


@dataclass(frozen=True)
class RealisticConfig:
    """scripts/make_realistic.py"""

    synthetic: SyntheticFlags = part("size", "n_train", "n_test", "n_val", "tumour_fraction")
    output: OutputFlags
    run: RunFlags = part("seed")
    SCRIPT: ClassVar[str] = "make_realistic"
    # make compare's training size, 4 test and 4 validation patients, a tumour in every patient (as in BraTS)
    DEFAULTS: ClassVar[dict] = {"size": 64, "n_train": 48, "n_test": 16, "n_val": 16, "tumour_fraction": 1.0}


def run_prepare_brats(cfg: PrepareBratsConfig) -> dict:
    r = cfg.release
    return prepare_brats(r.src, cfg.output.out, slice_range=r.slice_range, test_fraction=cfg.split.test_fraction,
                         val_fraction=cfg.split.val_fraction, seed=cfg.run.seed, release=r.release,
                         normalise=r.normalise, write_label_dir=r.write_label_dir, progress=cfg.run.progress)


def run_prepare_chexpert(cfg: PrepareChexpertConfig) -> dict:
    r = cfg.release
    return prepare_chexpert(r.csv, r.image_root, cfg.output.out, image_size=cfg.data.image_size,
                            test_fraction=cfg.split.test_fraction, val_fraction=cfg.split.val_fraction,
                            seed=cfg.run.seed, keep_uncertain=r.keep_uncertain, progress=cfg.run.progress)


def format_part_counts(summary: dict, unit: str) -> list[str]:
    """One line per written part: its patients and its healthy and diseased ``unit`` (slices, images)."""
    lines = []
    for name, n_patients in summary["patients"].items():
        if name == VALIDATION and not n_patients:
            continue  # no validation part was asked for
        c = summary["counts"][name]
        lines.append(f"{name}: {n_patients} patients, {c['healthy'] + c['diseased']} {unit} "
                     f"({c['healthy']} healthy, {c['diseased']} diseased)")
    return lines


def run_make_synthetic(cfg: SyntheticConfig) -> dict:
    s = cfg.synthetic
    names = [n.strip() for n in s.datasets.split(",") if n.strip()]
    if not names or any(n not in DATASETS for n in names):
        raise UserError(f"--datasets {s.datasets!r}: expected a comma-separated subset of {', '.join(DATASETS)}")
    which = "both" if set(names) == set(DATASETS) else names[0]
    if s.n_volumes < 0:
        raise UserError(f"--n_volumes {s.n_volumes}: expected 0 or more")
    counts = generate(cfg.output.out, dataset=which, size=s.size, n_train=s.n_train, n_test=s.n_test,
                      n_val=s.n_val, tumour_fraction=s.tumour_fraction, seed=cfg.run.seed)
    volumes = []
    if s.n_volumes:
        release = "2021" if cfg.raw.release == "auto" else cfg.raw.release
        volumes = generate_volumes(cfg.output.out, release=release, n_patients=s.n_volumes, size=s.size,
                                   seed=cfg.run.seed)
    return {**counts, "volumes": len(volumes)}


def run_make_realistic(cfg: RealisticConfig) -> dict:
    s = cfg.synthetic
    return generate_realistic(cfg.output.out, size=s.size, n_train=s.n_train, n_test=s.n_test, n_val=s.n_val,
                              tumour_fraction=s.tumour_fraction, seed=cfg.run.seed)
