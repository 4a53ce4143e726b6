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


def split_train_val_test(
    patients: list[str], test_fraction: float, val_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Patient-level train/validation/test split (each list sorted) for the preparation scripts.

    The test patients are exactly those of ``split_patients(patients, test_fraction,
    seed)``, so adding a validation part never moves a patient into or out of the
    test part. The validation patients are the next ``val_fraction * len(patients)``
    (rounded half up) of the same permutation, at least one when 0 < val_fraction
    and at least one patient stays for training (unless the two fractions sum to 1).
    A requested validation part that would be empty is an error rather than a
    silently missing folder.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise UserError(f"--val_fraction {val_fraction}: expected a value in [0, 1]")
    if test_fraction + val_fraction > 1.0:
        raise UserError(
            f"--test_fraction {test_fraction} --val_fraction {val_fraction}: together more than all patients "
            "(expected a sum of at most 1)"
        )
    rest, test = split_patients(patients, test_fraction, seed)
    n = len(patients)
    n_val = min(int(np.floor(val_fraction * n + 0.5)), len(rest))
    if 0.0 < val_fraction and test_fraction + val_fraction < 1.0:
        n_val = max(min(max(n_val, 1), len(rest) - 1), 0)  # one at least, and one patient left to train on
    if val_fraction > 0.0 and n_val == 0:
        raise UserError(
            f"--val_fraction {val_fraction}: {n} patient(s), {len(test)} of them for testing, leave none for "
            "validation and training both (expected at least 3 patients)"
        )
    # the same permutation as split_patients: its first len(test) entries are the test patients
    test_set = set(test)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(n) if patients[i] not in test_set]
    val = set(order[:n_val])
    return sorted(p for p in rest if p not in val), sorted(val), test


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
