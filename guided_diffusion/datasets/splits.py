"""Patient-level splits: no patient's slices on both sides of a split."""
from __future__ import annotations

import numpy as np

from ..util.errors import UserError


def split_patients(patients: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Patient-level train/test split, each list sorted.

    The number of test patients is ``test_fraction * len(patients)`` rounded half
    up, but at least one on each side when there are two or more patients and
    0 < test_fraction < 1. The test patients are the first of a permutation drawn
    with ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise UserError(f"--test_fraction {test_fraction}: expected a value in [0, 1]")
    n = len(patients)
    n_test = int(np.floor(test_fraction * n + 0.5))
    if 0.0 < test_fraction < 1.0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test = {patients[i] for i in order[:n_test]}
    return sorted(p for p in patients if p not in test), sorted(test)


def split_by_patient(patients: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed, seeded held-out split of the items (train, val) that keeps every patient on one side:
    ``fraction`` of the patients (at least one), with all their slices, are held out, as
    :func:`split_patients` splits train from test. Empty val when there is one patient."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction {fraction}: expected 0 <= fraction < 1")
    train_patients, val_patients = split_patients(sorted(set(patients)), fraction, seed)
    if not train_patients or not val_patients:
        return list(range(len(patients))), []
    held_out = set(val_patients)
    return ([i for i, p in enumerate(patients) if p not in held_out],
            [i for i, p in enumerate(patients) if p in held_out])
