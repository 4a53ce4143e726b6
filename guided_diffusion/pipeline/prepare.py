"""The scripts that write data sets: prepare_brats.py, prepare_chexpert.py and make_synthetic.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..datasets.prepare import prepare_brats, prepare_chexpert
from ..datasets.synthetic import generate
from ..util.errors import UserError
from ..util.flags import (
    DATASETS,
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
    split: SplitFlags = part("test_fraction")
    run: RunFlags = part("seed", "progress")
    SCRIPT: ClassVar[str] = "prepare_brats"


@dataclass(frozen=True)
class PrepareChexpertConfig:
    """scripts/prepare_chexpert.py"""

    release: PrepareChexpertFlags
    output: OutputFlags
    data: DataFlags = part("image_size")
    split: SplitFlags = part("test_fraction")
    run: RunFlags = part("seed", "progress")
    SCRIPT: ClassVar[str] = "prepare_chexpert"
    DEFAULTS: ClassVar[dict] = {"image_size": 256}


@dataclass(frozen=True)
class SyntheticConfig:
    """scripts/make_synthetic.py"""

    synthetic: SyntheticFlags
    output: OutputFlags
    run: RunFlags = part("seed")
    SCRIPT: ClassVar[str] = "make_synthetic"


def run_prepare_brats(cfg: PrepareBratsConfig) -> dict:
    r = cfg.release
    return prepare_brats(r.src, cfg.output.out, slice_range=r.slice_range, test_fraction=cfg.split.test_fraction,
                         seed=cfg.run.seed, write_label_dir=r.write_label_dir, progress=cfg.run.progress)


def run_prepare_chexpert(cfg: PrepareChexpertConfig) -> dict:
    r = cfg.release
    return prepare_chexpert(r.csv, r.image_root, cfg.output.out, image_size=cfg.data.image_size,
                            test_fraction=cfg.split.test_fraction, seed=cfg.run.seed,
                            keep_uncertain=r.keep_uncertain, progress=cfg.run.progress)


def run_make_synthetic(cfg: SyntheticConfig) -> dict:
    s = cfg.synthetic
    names = [n.strip() for n in s.datasets.split(",") if n.strip()]
    if not names or any(n not in DATASETS for n in names):
        raise UserError(f"--datasets {s.datasets!r}: expected a comma-separated subset of {', '.join(DATASETS)}")
    which = "both" if set(names) == set(DATASETS) else names[0]
    return generate(cfg.output.out, dataset=which, size=s.size, n_train=s.n_train, n_test=s.n_test,
                    tumour_fraction=s.tumour_fraction, seed=cfg.run.seed)
