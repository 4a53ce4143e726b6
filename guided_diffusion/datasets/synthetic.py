"""A seeded generator of small BRATS-like and CheXpert-like data sets (SPEC sections 2 and 5).

The images are cartoons, made so that the demo's tiny networks can learn the task
in minutes on a CPU: a brain is an ellipse with grey matter, wavy white matter and
two ventricles; a tumour is a large irregular blob (radius 12-20 % of the image)
with a necrotic core (BraTS label 1), an enhancing ring (4) and oedema (2). Each
modality has its own contrast, so the tumour is bright in flair and t2, a bright
ring in t1ce and dark in t1. A chest X-ray has dark lungs, ribs, heart and spine; a
pleural effusion fills a lung base with a bright, meniscus-shaped opacity.

Every item is drawn from its own ``numpy.random.default_rng`` seeded with
(seed, data set, split, index), so the output is a function of the flags alone,
byte for byte (NIfTI files are gzipped with a fixed header, see ``nifti.py``).
BRATS slices are float64 in [0, 1], quantised to steps of 1/255 like an 8-bit
scan, which also keeps the gzipped files small.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from ..util.errors import UserError
from .layout import (
    CHEXPERT_CLASSES,
    MODALITIES,
    TEST_LABELS,
    TESTING,
    TRAINING,
    VALIDATION,
    brats_slice_filename,
    check_no_stray_files,
    chexpert_image_filename,
    label_filename,
    leaf_name,
    save_npy,
    staged_output,
    write_brats_leaf,
)
from .nifti import write_nifti_gz
from .prepare_brats import RELEASES

DATASET_CHOICES = ("brats", "chexpert", "both")
MIN_SIZE = 16
SLICES_PER_PATIENT = 4
FIRST_SLICE = 80  # slice numbers in file names start where the prepared BraTS range starts

# Tissue classes of the brain cartoon and their intensity in t1, t1ce, t2, flair.
_BACKGROUND, _GREY, _WHITE, _CSF, _OEDEMA, _ENHANCING, _NECROTIC = range(7)
_CONTRAST = np.array(
    [
        # t1   t1ce  t2    flair
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.45, 0.42, 0.55, 0.50],  # grey matter
        [0.68, 0.60, 0.35, 0.40],  # white matter
        [0.12, 0.10, 0.90, 0.08],  # CSF (ventricles)
        [0.32, 0.34, 0.85, 0.96],  # oedema: bright in t2 and flair
        [0.30, 0.97, 0.70, 0.82],  # enhancing tumour: the bright t1ce ring
        [0.15, 0.15, 0.95, 0.62],  # necrotic core: dark in t1 and t1ce
    ]
)
_SEG_LABEL = {_OEDEMA: 2, _ENHANCING: 4, _NECROTIC: 1}  # BraTS label convention


def generate(
    out: str,
    *,
    dataset: str = "both",
    size: int = 240,
    n_train: int = 48,
    n_test: int = 8,
    tumour_fraction: float = 0.5,
    seed: int = 0,
    n_val: int = 0,
) -> dict:
    """Write synthetic data sets in the layouts of SPEC section 5 under ``out``.

    BRATS (``dataset`` 'brats' or 'both')::

        out/brats/training/<leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz   4 modalities + seg
        out/brats/testing/<leaf>/...                                             4 modalities
        out/brats/test_labels/<leaf>-label.nii.gz

    CheXpert (``dataset`` 'chexpert' or 'both')::

        out/chexpert/{training,testing}/{healthy,diseased}/patientNNNNN_studyK.npy   uint8 S x S x 1

    With ``n_val`` > 0 also ``brats/validation/<leaf>/`` (with seg, like training) and
    ``chexpert/validation/``: a held-out split for the classifier and for choosing settings.

    ``n_train``, ``n_test`` and ``n_val`` count slices (BRATS, 4 per patient) and images
    (CheXpert) of each split; ``tumour_fraction`` of each split (rounded half up) has
    a tumour or an effusion. Returns the number of items written per data set.
    """
    if dataset not in DATASET_CHOICES:
        raise UserError(f"--dataset {dataset!r}: expected one of {', '.join(DATASET_CHOICES)}")
    check_set_flags(size, n_train, n_test, n_val, tumour_fraction)
    use_brats = dataset in ("brats", "both")
    use_chexpert = dataset in ("chexpert", "both")

    sizes = {TRAINING: n_train, TESTING: n_test, VALIDATION: n_val}
    brats = _plan_brats(seed, sizes, tumour_fraction) if use_brats else []
    chest = _plan_chexpert(seed, sizes, tumour_fraction) if use_chexpert else []
    planned = [path for item in brats for path in item.files()] + [item.path() for item in chest]
    roots = (["brats"] if use_brats else []) + (["chexpert"] if use_chexpert else [])
    check_no_stray_files(out, planned, roots)

    with staged_output(out) as staging:
        for item in brats:
            channels, seg = brats_slice(item.rng(seed), _brain_shape(item.patient_rng(seed)), size, item.tumour)
            write_brats_item(staging, item, channels, seg)
        if use_chexpert:
            for split in (name for name, n in sizes.items() if n or name != VALIDATION):
                for label in CHEXPERT_CLASSES:
                    os.makedirs(os.path.join(staging, "chexpert", split, label), exist_ok=True)
        for item in chest:
            image = chest_xray(item.rng(seed), size, item.diseased)  # (S, S) uint8
            save_npy(os.path.join(staging, item.path()), image[:, :, None])
    return {"brats": len(brats), "chexpert": len(chest)}


def check_set_flags(size: int, n_train: int, n_test: int, n_val: int, tumour_fraction: float) -> None:
    """Raise a UserError naming the flag when a generator's size, counts or tumour fraction is out of range."""
    if size < MIN_SIZE:
        raise UserError(f"--size {size}: expected at least {MIN_SIZE} pixels")
    for flag, value in (("--n_train", n_train), ("--n_test", n_test), ("--n_val", n_val)):
        if value < 0:
            raise UserError(f"{flag} {value}: expected 0 or more")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise UserError(f"--tumour_fraction {tumour_fraction}: expected a value in [0, 1]")


def write_brats_item(staging: str, item: "BratsItem", channels: dict[str, np.ndarray], seg: np.ndarray) -> None:
    """Write one planned slice under ``staging/brats/``: its leaf, and for a test slice its label file."""
    folder = os.path.join(staging, "brats", item.split, item.leaf)
    leaf_seg = None if item.split == TESTING else seg  # test leaves: labels go to test_labels/
    write_brats_leaf(folder, item.patient, item.slice_index, channels, leaf_seg)
    if item.split == TESTING:
        os.makedirs(os.path.join(staging, "brats", TEST_LABELS), exist_ok=True)
        write_nifti_gz(os.path.join(staging, "brats", TEST_LABELS, label_filename(item.leaf)), seg)


# ---------------------------------------------------------------------------
# Plans: names and labels of every item, known before any pixel is drawn.


@dataclass(frozen=True)
class BratsItem:
    """One planned BRATS slice: its split, leaf folder and file names (``tumour``: the cartoon draws one)."""

    split: str
    index: int  # within the split
    leaf: str
    patient: str
    patient_index: int
    slice_index: int
    tumour: bool = False

    def files(self) -> list[str]:
        folder = os.path.join("brats", self.split, self.leaf)
        names = [brats_slice_filename(self.patient, seq, self.slice_index) for seq in MODALITIES]
        files = [os.path.join(folder, name) for name in names]
        if self.split != TESTING:  # training and validation leaves hold their seg
            files.append(os.path.join(folder, brats_slice_filename(self.patient, "seg", self.slice_index)))
        else:
            files.append(os.path.join("brats", TEST_LABELS, label_filename(self.leaf)))
        return files

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([seed, 0, SPLIT_ID[self.split], self.index])

    def patient_rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([seed, 0, SPLIT_ID[self.split], self.patient_index, 1])


@dataclass(frozen=True)
class _ChestItem:
    split: str
    index: int
    name: str
    diseased: bool

    def path(self) -> str:
        return os.path.join("chexpert", self.split, CHEXPERT_CLASSES[int(self.diseased)], self.name)

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([seed, 1, SPLIT_ID[self.split], self.index])


SPLIT_ID = {TRAINING: 0, TESTING: 1, VALIDATION: 2}
"""A split's number in the seeds of its random generators."""


def fraction_count(n: int, fraction: float) -> int:
    """``fraction`` of ``n``, rounded half up."""
    return int(np.floor(n * fraction + 0.5))


def plan_brats_leaves(sizes: dict[str, int]) -> list[BratsItem]:
    """The names of every slice of each split (``sizes``: slices per split, in the order training,
    testing, validation), SLICES_PER_PATIENT consecutive slices per patient; later splits continue the
    patient and leaf numbers, so no patient is in two splits."""
    items = []
    patient_number = 1
    leaf_number = 1
    for split, n in sizes.items():
        for i in range(n):
            patient_index, k = divmod(i, SLICES_PER_PATIENT)
            items.append(
                BratsItem(
                    split=split,
                    index=i,
                    leaf=leaf_name(leaf_number),
                    patient=f"{patient_number + patient_index:03d}",
                    patient_index=patient_index,
                    slice_index=FIRST_SLICE + k,
                )
            )
            leaf_number += 1
        patient_number += -(-n // SLICES_PER_PATIENT)
    return items


def _plan_brats(seed: int, sizes: dict[str, int], tumour_fraction: float) -> list[BratsItem]:
    tumours = {}
    for split, n in sizes.items():
        order = np.random.default_rng([seed, 0, SPLIT_ID[split]]).permutation(n)
        tumours[split] = set(order[: fraction_count(n, tumour_fraction)].tolist())
    return [replace(item, tumour=item.index in tumours[item.split]) for item in plan_brats_leaves(sizes)]


def _plan_chexpert(seed: int, sizes: dict[str, int], effusion_fraction: float) -> list[_ChestItem]:
    items = []
    patient_number = 1
    for split, n in sizes.items():
        rng = np.random.default_rng([seed, 1, SPLIT_ID[split]])
        diseased = set(rng.permutation(n)[: fraction_count(n, effusion_fraction)].tolist())
        studies = rng.integers(1, 4, size=n)
        for i in range(n):
            name = chexpert_image_filename(f"patient{patient_number + i:05d}", f"study{studies[i]}")
            items.append(_ChestItem(split, i, name, i in diseased))
        patient_number += n
    return items


# ---------------------------------------------------------------------------
# BRATS-like slices.


@dataclass(frozen=True)
class BrainShape:
    """Per-patient anatomy in image coordinates [-1, 1] (x = column, y = row)."""

    centre: tuple[float, float]
    axes: tuple[float, float]  # semi-axes along x and y
    angle: float
    gyri_phase: float
    gains: tuple[float, ...]  # one intensity gain per modality


def _brain_shape(rng: np.random.Generator) -> BrainShape:
    return BrainShape(
        centre=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        axes=(rng.uniform(0.68, 0.76), rng.uniform(0.80, 0.88)),
        angle=rng.uniform(-0.15, 0.15),
        gyri_phase=rng.uniform(0.0, 2.0 * np.pi),
        gains=tuple(rng.uniform(0.92, 1.0, size=len(MODALITIES)).tolist()),
    )


def brats_slice(
    rng: np.random.Generator, shape: BrainShape, size: int, tumour: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One axial slice: ``({seq: (S, S) float64 in [0, 1]}, seg (S, S) float64 of 0, 1, 2, 4)``.

    A healthy slice (``tumour=False``) has an all-zero segmentation.
    """
    x, y = _grid(size)
    scale = rng.uniform(0.94, 1.0)  # neighbouring slices of a patient differ a little
    (cx, cy), (a, b) = shape.centre, shape.axes
    radius, theta = _ellipse(x, y, cx, cy, a * scale, b * scale, shape.angle)
    brain = radius <= 1.0

    tissue = np.where(brain, _GREY, _BACKGROUND)
    white = radius <= 0.76 * (1.0 + 0.05 * np.sin(8.0 * theta + shape.gyri_phase))
    tissue[white] = _WHITE
    for side in (-1.0, 1.0):  # two ventricles beside the midline
        ventricle, _ = _ellipse(x, y, cx + side * 0.09 * scale, cy - 0.05, 0.055 * scale, 0.2 * scale, -side * 0.25)
        tissue[ventricle <= 1.0] = _CSF

    if tumour:
        r_tumour = 2.0 * rng.uniform(0.12, 0.20)  # radius as a fraction of the side, in [-1, 1] units
        room = max(0.0, 0.95 * min(a, b) * scale - 1.2 * r_tumour)
        rho, phi = room * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
        tx, ty = cx + rho * np.cos(phi), cy + rho * np.sin(phi)
        distance, angle = _ellipse(x, y, tx, ty, r_tumour, r_tumour, 0.0)
        p1, p2 = rng.uniform(0.0, 2.0 * np.pi, size=2)
        distance = distance / (1.0 + 0.12 * np.sin(3.0 * angle + p1) + 0.07 * np.sin(5.0 * angle + p2))
        for limit, label in ((1.0, _OEDEMA), (0.65, _ENHANCING), (0.35, _NECROTIC)):
            tissue[(distance <= limit) & brain] = label

    seg = np.zeros((size, size))
    for label, value in _SEG_LABEL.items():
        seg[tissue == label] = value

    anatomy_texture = _smooth_noise(rng, size, size / 12.0)
    partial_volume = max(0.6, size / 160.0)
    channels = {}
    for m, seq in enumerate(MODALITIES):
        image = _CONTRAST[tissue, m] * shape.gains[m]
        image = image * (1.0 + 0.05 * anatomy_texture + 0.03 * _smooth_noise(rng, size, size / 40.0))
        image = gaussian_filter(image, partial_volume) + 0.01 * rng.standard_normal((size, size))
        image = np.where(brain, np.clip(image, 0.0, 1.0), 0.0)
        channels[seq] = np.round(image * 255.0) / 255.0  # 8-bit steps, stored as float64
    return channels, seg


# ---------------------------------------------------------------------------
# Whole raw volumes, as a BraTS release ships them.

RAW_FOLDER = "brats_raw"
RAW_DEPTH = 155  # axial slices of a BraTS volume
RAW_BRAIN = (60, 145)  # the slices holding brain
RAW_TUMOUR = (88, 120)  # the slices holding tumour (inside the default slice range 80..128)
RAW_SCALE = 1000.0  # raw intensities are int16, the cartoon's [0, 1] times this
RAW_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
"""The BraTS releases' voxel-to-world affine (1 mm voxels, LPS-flipped x and y)."""


def raw_patient_folder(release: str, number: int) -> str:
    """The patient folder name of the ``number``-th patient (0-based) in ``release``'s naming."""
    return {"2020": f"BraTS20_Training_{number + 1:03d}", "2021": f"BraTS2021_{number:05d}",
            "2023": f"BraTS-GLI-{number:05d}-000"}[release]


def generate_volumes(out: str, *, release: str = "2021", n_patients: int = 2, size: int = 64, seed: int = 0,
                     tumour: bool = True) -> list[str]:
    """Write ``n_patients`` whole raw patients in ``release``'s layout under ``out/brats_raw/``::

        out/brats_raw/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz   (2021)

    int16 volumes of ``size`` x ``size`` x 155 (the cartoon slices of :func:`brats_slice`
    times 1000 in slices 60..144, a tumour in 88..119 of every patient when ``tumour``), the
    BraTS affine, a uint8 seg; byte-deterministic. Returns the patient folders written."""
    if release not in RELEASES:
        raise UserError(f"--release {release!r}: expected one of {', '.join(RELEASES)}")
    if size < MIN_SIZE:
        raise UserError(f"--size {size}: expected at least {MIN_SIZE} pixels")
    names = [raw_patient_folder(release, i) for i in range(n_patients)]
    r = RELEASES[release]
    planned = [os.path.join(RAW_FOLDER, n, n + r.suffixes(seq)[0]) for n in names for seq in MODALITIES + ("seg",)]
    check_no_stray_files(out, planned, [RAW_FOLDER])
    with staged_output(out) as staging:
        for i, name in enumerate(names):
            shape = _brain_shape(np.random.default_rng([seed, 2, i, 1]))
            volumes = {seq: np.zeros((size, size, RAW_DEPTH), np.int16) for seq in MODALITIES}
            seg = np.zeros((size, size, RAW_DEPTH), np.uint8)
            for z in range(*RAW_BRAIN):
                channels, seg_z = brats_slice(np.random.default_rng([seed, 2, i, 0, z]), shape, size,
                                              tumour and RAW_TUMOUR[0] <= z < RAW_TUMOUR[1])
                for seq in MODALITIES:
                    volumes[seq][:, :, z] = np.round(channels[seq] * RAW_SCALE).astype(np.int16)
                seg[:, :, z] = seg_z.astype(np.uint8)
            folder = os.path.join(staging, RAW_FOLDER, name)
            os.makedirs(folder, exist_ok=True)
            for seq, volume in (*volumes.items(), ("seg", seg)):
                write_nifti_gz(os.path.join(folder, name + r.suffixes(seq)[0]), volume, RAW_AFFINE)
    return [os.path.join(out, RAW_FOLDER, n) for n in names]


# ---------------------------------------------------------------------------
# CheXpert-like chest X-rays.


def chest_xray(rng: np.random.Generator, size: int, effusion: bool) -> np.ndarray:
    """A frontal chest X-ray cartoon, uint8 (S, S) (rows, columns); ``effusion`` adds a
    bright opacity filling the base of one or both lungs."""
    x, y = _grid(size)
    body, _ = _ellipse(x, y, 0.0, 0.15, rng.uniform(0.88, 0.96), 1.1, 0.0)
    image = np.where(body <= 1.0, 0.5, 0.05)
    image[(body <= 1.0) & (y > 0.62)] = 0.6  # below the diaphragm

    lungs = []
    for side in (-1.0, 1.0):
        cx, cy = side * rng.uniform(0.36, 0.42), rng.uniform(-0.1, 0.0)
        a, b = rng.uniform(0.24, 0.28), rng.uniform(0.58, 0.66)
        radius, _ = _ellipse(x, y, cx, cy, a, b, side * 0.08)
        lung = radius <= 1.0
        image[lung] = 0.14 + 0.08 * (y[lung] - (cy - b)) / (2.0 * b)  # slightly denser at the base
        for k in range(8):  # ribs: faint arcs across the lung
            rib = np.abs(y - (-0.7 + 0.19 * k + 0.35 * (x - side * 0.05) ** 2)) < 0.03
            image[rib & lung] += 0.07
        lungs.append((side, cx, cy, a, b, lung))

    heart, _ = _ellipse(x, y, 0.1, 0.3, 0.28, 0.22, 0.3)
    image[heart <= 1.0] = 0.62
    image[(np.abs(x) < 0.12) & (y > -0.85) & (y < 0.62)] = 0.66  # mediastinum
    image[(np.abs(x) < 0.05) & (body <= 1.0)] = 0.76  # spine

    if effusion:
        sides = [rng.integers(2)] if rng.uniform() < 0.7 else [0, 1]
        for index in sides:
            side, cx, cy, a, b, lung = lungs[index]
            level = cy + b - rng.uniform(0.35, 0.55) * 2.0 * b  # top of the fluid at the medial side
            lateral = np.clip(side * (x - cx) / a, 0.0, 1.0)
            boundary = level - 0.25 * b * lateral  # meniscus: the fluid climbs the lateral wall
            fluid = 1.0 / (1.0 + np.exp(-(y - boundary) / 0.03))
            image = np.where(lung, image * (1.0 - fluid) + 0.74 * fluid, image)

    image = gaussian_filter(image, max(0.5, size / 128.0))
    image = image + 0.03 * _smooth_noise(rng, size, size / 20.0) + 0.015 * rng.standard_normal((size, size))
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: x along columns, y along rows (downwards)."""
    u = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(u, u)
    return x, y


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius (1 on the boundary) and polar angle of every pixel."""
    dx, dy = x - cx, y - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    return np.hypot(u, v), np.arctan2(v, u)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    noise = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return noise / (noise.std() + 1e-12)
