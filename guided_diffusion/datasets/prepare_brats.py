"""Turn the BraTS 2020, 2021 and 2023 (adult glioma) releases into the BRATS slice layout of SPEC section 5.

The releases as published:

- 2020: ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii[.gz]``; in
  ``BraTS20_Training_355/`` the segmentation is named ``W39_1998.09.19_Segm.nii``, and the top
  folder also holds ``name_mapping.csv`` and ``survival_info.csv``.
- 2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``.
- 2023 glioma: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, read as
  t1n -> t1, t1c -> t1ce, t2w -> t2, t2f -> flair. The trailing number counts the scans of one
  subject (``00000``); all scans of a subject go to the same part of the split.

Every input is checked (headers only) before anything is written, then the run writes into a
hidden staging folder inside the output folder and moves the finished files into place only
when the whole run has succeeded, so a failed run leaves the output folder as it was. Outputs
are byte-deterministic (sorted inputs, seeded split, fixed gzip header): a second run with the
same arguments rewrites identical files. A run refuses an output folder holding files it would
not write itself (the leaves of an earlier run with another split, say), because mixing two
runs would silently leak test patients into training.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..util import logger
from ..util.errors import MissingInputError, UserError
from ..util.flags import BRATS_RELEASES, DEFAULT_SLICE_RANGE
from .layout import (
    MODALITIES,
    PARTS,
    SEG,
    SPLIT_FILE,
    TEST_LABELS,
    TESTING,
    brats_slice_filename,
    check_no_stray_files,
    label_filename,
    leaf_name,
    save_json,
    staged_output,
    write_brats_leaf,
)
from .loaders import create_dataset
from .nifti import read_nifti, read_nifti_affine, read_nifti_shape, write_nifti_gz
from .splits import split_train_val_test

CLIP_PERCENTILE = 99.5
"""``percentile`` normalisation clips each volume at this percentile of its positive (brain) voxels."""

_EXTENSIONS = (".nii.gz", ".nii")


# ---------------------------------------------------------------------------
# The releases.


@dataclass(frozen=True)
class BratsRelease:
    """How one BraTS release names its patient folders and volumes."""

    name: str  # "2020", "2021", "2023"
    folder: re.Pattern  # a patient folder's name; group "id": <patient> of the slice files, "subject": split key
    separator: str  # between the folder name and the sequence in a volume's file name
    sequences: dict  # our sequence (MODALITIES and seg) -> the release's word for it
    folder_example: str
    training_release: str  # the published folder of the training data, for messages
    seg_fallback: re.Pattern | None = None  # a known misnamed segmentation file

    def suffixes(self, seq: str) -> tuple[str, ...]:
        """The endings of ``seq``'s volume file, e.g. ``('_t1ce.nii.gz', '_t1ce.nii')``."""
        return tuple(f"{self.separator}{self.sequences[seq]}{ext}" for ext in _EXTENSIONS)

    def describe(self, seq: str) -> str:
        word = self.sequences[seq]
        return seq if word == seq else f"{seq} ({word})"


_SAME_NAMES = {seq: seq for seq in MODALITIES + (SEG,)}

RELEASES: dict[str, BratsRelease] = {
    "2020": BratsRelease(
        "2020", re.compile(r"^BraTS20_(?:Training|Validation)_(?P<id>\d+)$"), "_", _SAME_NAMES,
        "BraTS20_Training_001", "MICCAI_BraTS2020_TrainingData",
        # BraTS20_Training_355 ships its segmentation as W39_1998.09.19_Segm.nii
        seg_fallback=re.compile(r"_Segm\.nii(?:\.gz)?$", re.IGNORECASE),
    ),
    "2021": BratsRelease(
        "2021", re.compile(r"^BraTS2021_(?P<id>\d+)$"), "_", _SAME_NAMES,
        "BraTS2021_00000", "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021",
    ),
    "2023": BratsRelease(
        "2023", re.compile(r"^BraTS-GLI-(?P<id>(?P<subject>\d+)-\d+)$"), "-",
        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", SEG: "seg"},
        "BraTS-GLI-00000-000", "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
    ),
}

_EXPECTED_FOLDERS = "BraTS20_Training_XXX/, BraTS2021_XXXXX/ or BraTS-GLI-XXXXX-XXX/ folders"


@dataclass(frozen=True)
class BratsPatient:
    name: str  # folder name, e.g. BraTS20_Training_001
    code: str  # the <patient> part of slice file names, e.g. 001
    subject: str  # the split key: scans of one subject share it
    files: dict[str, str]  # seq -> volume path, for MODALITIES and seg
    shape: tuple[int, int, int]


def detect_release(src: str, folders: list[str]) -> BratsRelease:
    """The release whose patient-folder names ``folders`` (sub-folders of ``src``) all have."""
    matching = {name: [f for f in folders if r.folder.match(f)] for name, r in RELEASES.items()}
    found = [name for name, names in matching.items() if names]
    if len(found) > 1:
        examples = ", ".join(f"{matching[name][0]} ({name})" for name in found)
        raise UserError(f"--src {src}: patient folders of several releases ({examples}); prepare one at a time")
    if not found:
        raise UserError(
            f"--src {src}: cannot tell the BraTS release from the folder names (found {folders[0]}/; expected "
            f"{_EXPECTED_FOLDERS}); name it with --release {'|'.join(RELEASES)}{_one_level_up_hint(src, folders)}"
        )
    release = RELEASES[found[0]]
    others = [f for f in folders if not release.folder.match(f)]
    if others:
        raise UserError(
            f"--src {src}: {others[0]}/ is not a BraTS{release.name} patient folder (expected names like "
            f"{release.folder_example}); move it away, or pass --release {release.name} to read every folder "
            "as a patient"
        )
    return release


def _one_level_up_hint(src: str, folders: list[str]) -> str:
    """' (did you mean --src SRC/X?)' when a sub-folder X holds the patient folders."""
    for folder in folders:
        inner = os.path.join(src, folder)
        names = os.listdir(inner)
        if any(r.folder.match(n) and os.path.isdir(os.path.join(inner, n)) for n in names for r in RELEASES.values()):
            return f" (did you mean --src {inner}?)"
    return ""


def find_brats_patients(
    src: str, slice_range: tuple[int, int] = DEFAULT_SLICE_RANGE, release: str = "auto"
) -> tuple[BratsRelease, list[BratsPatient]]:
    """List and check (from the headers only) the patient folders of a BraTS release.

    Each non-hidden sub-folder of ``src`` is a patient; files beside them (the
    release's CSV tables) are not. A patient's volumes are found by their endings
    (``_t1.nii.gz`` or ``_t1.nii``, ``-t1n.nii.gz`` in 2023, ...); they must be 3-D
    volumes of one shape whose depth holds ``slice_range``. ``release`` is one of
    ``BRATS_RELEASES``; ``auto`` tells it from the folder names.
    """
    if release not in BRATS_RELEASES:
        raise UserError(f"--release {release!r}: expected one of {', '.join(BRATS_RELEASES)}")
    if not os.path.isdir(src):
        raise MissingInputError(f"--src {src}: no such directory")
    folders = sorted(n for n in os.listdir(src) if not n.startswith(".") and os.path.isdir(os.path.join(src, n)))
    if not folders:
        raise UserError(f"--src {src}: no patient folders (expected {_EXPECTED_FOLDERS})")
    chosen = detect_release(src, folders) if release == "auto" else RELEASES[release]

    found = [(folder, _find_volumes(os.path.join(src, folder), chosen)) for folder in folders]
    without_seg = [folder for folder, files in found if SEG not in files]
    if len(without_seg) == len(found):
        seg_name = f"{folders[0]}{chosen.suffixes(SEG)[0]}"
        raise UserError(
            f"--src {src}: no patient folder holds a segmentation (e.g. {folders[0]}/{seg_name}): this is a "
            f"validation release, which has no ground truth; prepare the training release "
            f"({chosen.training_release}) instead"
        )
    if without_seg:
        folder = without_seg[0]
        raise MissingInputError(
            f"{os.path.join(src, folder, folder + chosen.suffixes(SEG)[0])}: missing the seg volume of patient "
            f"{folder} (no file ending in {' or '.join(chosen.suffixes(SEG))})"
        )

    patients = [check_patient(os.path.join(src, folder), chosen, files, slice_range) for folder, files in found]
    return chosen, patients


def check_patient(folder: str, release: BratsRelease, files: dict[str, str], slice_range: tuple[int, int],
                  name: str | None = None) -> BratsPatient:
    """The patient of ``folder`` (named ``name``, else after the folder) once its volumes ``files``
    (seq -> path, seg optional) are checked from their headers: 3-D, one shape and one affine, deep
    enough for ``slice_range``."""
    name = name or os.path.basename(os.path.normpath(folder))
    reference = MODALITIES[0]
    shapes = {seq: _volume_shape(path) for seq, path in files.items()}
    affines = {seq: read_nifti_affine(path) for seq, path in files.items()}
    for seq, shape in shapes.items():
        if shape != shapes[reference]:
            raise UserError(
                f"{files[seq]}: volume shape {shape} differs from {shapes[reference]} "
                f"of {os.path.basename(files[reference])}"
            )
        if not np.allclose(affines[seq], affines[reference], rtol=0, atol=1e-4):
            raise UserError(
                f"{files[seq]}: affine {affines[seq].round(4).tolist()} differs from "
                f"{affines[reference].round(4).tolist()} of {os.path.basename(files[reference])} "
                "(the modalities must be co-registered)"
            )
    depth = shapes[reference][2]
    if slice_range[1] >= depth:
        raise UserError(
            f"--slice_range {slice_range[0]},{slice_range[1]}: slice {slice_range[1]} is outside "
            f"{files[reference]}, which has {depth} axial slices"
        )
    match = release.folder.match(name)
    if match:
        code, subject = match["id"], match.groupdict().get("subject") or name
    else:  # a folder only a forced --release reads: its whole name, unique within src
        code, subject = name, name
    return BratsPatient(name, code, subject, files, shapes[reference])


def read_patient_folder(folder: str, slice_range: tuple[int, int] = DEFAULT_SLICE_RANGE,
                        release: str = "auto") -> tuple[BratsRelease, BratsPatient]:
    """One patient folder of any release, its segmentation optional (for applying a model).

    ``auto`` tells the release from the folder's name, else from the file names (the first
    release whose four modalities are all found)."""
    name = os.path.basename(os.path.normpath(folder))
    if release != "auto":
        chosen = RELEASES[release]
    else:
        named = [r for r in RELEASES.values() if r.folder.match(name)]
        candidates = named or [r for r in RELEASES.values() if _has_modalities(folder, r)]
        if not candidates:
            raise MissingInputError(
                f"{folder}: no BraTS patient volumes (expected files ending in "
                f"{', '.join(RELEASES['2020'].suffixes(m)[0] for m in MODALITIES)}, or the 2023 names "
                f"{', '.join(RELEASES['2023'].suffixes(m)[0] for m in MODALITIES)})"
            )
        chosen = candidates[0]
    return chosen, check_patient(folder, chosen, _find_volumes(folder, chosen), slice_range)


def _has_modalities(folder: str, release: BratsRelease) -> bool:
    names = [n.lower() for n in os.listdir(folder)]
    return all(any(n.endswith(release.suffixes(seq)) for n in names) for seq in MODALITIES)


def _find_volumes(folder: str, release: BratsRelease) -> dict[str, str]:
    """seq -> path of the patient's volumes; seg is absent when the folder has none."""
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    patient = os.path.basename(folder)
    files = {}
    for seq in MODALITIES + (SEG,):
        endings = release.suffixes(seq)
        hits = [n for n in names if n.lower().endswith(endings)]
        if not hits and seq == SEG and release.seg_fallback is not None:
            hits = [n for n in names if release.seg_fallback.search(n)]
            if len(hits) == 1:
                logger.log(f"{patient}: no *{endings[0]} file; {hits[0]} serves as the segmentation")
        if len(hits) > 1:
            raise UserError(f"{folder}: {len(hits)} files for the {release.describe(seq)} volume ({', '.join(hits)}); "
                            "expected one")
        if hits:
            files[seq] = os.path.join(folder, hits[0])
        elif seq != SEG:
            raise MissingInputError(
                f"{os.path.join(folder, patient + endings[0])}: missing the {release.describe(seq)} volume of "
                f"patient {patient} (no file ending in {' or '.join(endings)})"
            )
    return files


def _volume_shape(path: str) -> tuple[int, int, int]:
    shape = read_nifti_shape(path)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise UserError(f"{path}: expected a 3-D volume, found shape {shape}")
    return shape


# ---------------------------------------------------------------------------
# Intensity normalisation, per volume and modality.


def normalise_percentile(volume: np.ndarray, path: str = "volume") -> np.ndarray:
    """Scale one MR volume to [0, 1] by its 99.5th brain percentile (same shape, float64).

    Negative values become 0; the volume is clipped at the 99.5th percentile of its
    positive (brain) voxels and divided by it, so the brightest 0.5 % of the brain
    maps to 1 and the background stays 0.
    """
    brain = volume[volume > 0]
    if brain.size == 0:
        raise UserError(f"{path}: no positive voxels; expected a brain volume to normalise")
    top = float(np.percentile(brain, CLIP_PERCENTILE))
    return np.clip(volume, 0.0, top) / top


def normalise_brain_minmax(volume: np.ndarray, path: str = "volume") -> np.ndarray:
    """Min-max scale the brain (the non-zero voxels) of one MR volume to [0, 1]; background stays 0.

    The preprocessing the authors describe for BraTS2021 (JuliaWolleb/diffusion-anomaly
    issue 19): the darkest brain voxel maps to 0, the brightest to 1. Same shape, float64.
    """
    brain = volume != 0
    if not brain.any():
        raise UserError(f"{path}: no non-zero voxels; expected a brain volume to normalise")
    values = volume[brain]
    low, high = float(values.min()), float(values.max())
    if high == low:
        raise UserError(f"{path}: every brain voxel is {low:g}; min-max normalisation needs two intensities")
    out = np.zeros(volume.shape, dtype=np.float64)
    out[brain] = (values - low) / (high - low)
    return out


NORMALISERS: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "percentile": normalise_percentile,
    "brainminmax": normalise_brain_minmax,
}


# ---------------------------------------------------------------------------
# Writing the slice layout.


def prepare_brats(
    src: str,
    out: str,
    *,
    slice_range: tuple[int, int] = DEFAULT_SLICE_RANGE,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    release: str = "auto",
    normalise: str = "percentile",
    write_label_dir: bool = False,
    progress: bool = True,
) -> dict:
    """Write the BRATS slice layout of SPEC section 5 from a BraTS training release.

    Output (all slices float64 NIfTI, modalities in [0, 1], ``seg`` keeps the release's labels)::

        out/training/<leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz   4 modalities + seg
        out/validation/<leaf>/...                                          with val_fraction > 0
        out/testing/<leaf>/...                                             4 modalities + seg
        out/test_labels/<leaf>-label.nii.gz                                with write_label_dir
        out/split.json                                                     parts, counts, leaves
        out/<part>/.slice_store/brats/                                     the part's slice store

    Leaves are numbered 000001, 000002, ... over all patients in sorted order and,
    within a patient, by slice (so a leaf keeps its number whichever part it falls
    in). Each modality volume is normalised on its own by ``normalise``
    (``NORMALISERS``). ``slice_range`` is inclusive. A slice is diseased when its
    segmentation has any tumour voxel, else healthy. Returns the release, the
    patients per part and the healthy and diseased slices per part.
    """
    first, last = slice_range
    if not 0 <= first <= last:
        raise UserError(f"--slice_range {first},{last}: expected 0 <= FIRST <= LAST")
    if normalise not in NORMALISERS:
        raise UserError(f"--normalise {normalise!r}: expected one of {', '.join(NORMALISERS)}")
    chosen, patients = find_brats_patients(src, slice_range, release)
    subjects = split_train_val_test(sorted({p.subject for p in patients}), test_fraction, val_fraction, seed)
    part_of = {subject: part for part, names in zip(PARTS, subjects) for subject in names}
    members = {part: [p.name for p in patients if part_of[p.subject] == part] for part in PARTS}
    n_slices = last - first + 1

    plan = []  # (patient, part, [(leaf, slice index)])
    for number, patient in enumerate(patients):
        leaves = [(leaf_name(number * n_slices + k + 1), first + k) for k in range(n_slices)]
        plan.append((patient, part_of[patient.subject], leaves))
    planned = [SPLIT_FILE]
    for patient, part, leaves in plan:
        for leaf, z in leaves:
            for seq in MODALITIES + (SEG,):
                planned.append(os.path.join(part, leaf, brats_slice_filename(patient.code, seq, z)))
            if part == TESTING and write_label_dir:
                planned.append(os.path.join(TEST_LABELS, label_filename(leaf)))
    check_no_stray_files(out, planned)

    counts = {part: {"healthy": 0, "diseased": 0} for part in PARTS}
    record = {
        "dataset": "brats",
        "release": chosen.name,
        "normalise": normalise,
        "slice_range": [first, last],
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        **members,
        "counts": counts,
        "leaves": {},
    }
    normaliser = NORMALISERS[normalise]
    with staged_output(out) as staging:
        for patient, part, leaves in tqdm(plan, desc="patients", unit="patient", disable=not progress):
            volumes = load_patient(patient, first, last, normaliser)  # seq -> (X, Y, n_slices)
            for k, (leaf, z) in enumerate(leaves):
                channels = {seq: volumes[seq][:, :, k] for seq in MODALITIES}
                seg = volumes[SEG][:, :, k]
                write_brats_leaf(os.path.join(staging, part, leaf), patient.code, z, channels, seg)
                if part == TESTING and write_label_dir:
                    os.makedirs(os.path.join(staging, TEST_LABELS), exist_ok=True)
                    write_nifti_gz(os.path.join(staging, TEST_LABELS, label_filename(leaf)), seg)
                tumour = bool((seg > 0).any())
                counts[part]["diseased" if tumour else "healthy"] += 1
                record["leaves"][leaf] = {"patient": patient.name, "slice": z, "split": part, "tumour": tumour}
        save_json(os.path.join(staging, SPLIT_FILE), record)
    # each written part's slice store, so that its first training run reads no NIfTI file
    largest = max(max(patient.shape[:2]) for patient in patients)
    for part in PARTS:
        if sum(counts[part].values()):
            create_dataset(os.path.join(out, part), "brats", largest)
    return {
        "release": chosen.name,
        "patients": {part: len(members[part]) for part in PARTS},
        "counts": counts,
    }


def load_patient(
    patient: BratsPatient, first: int, last: int, normaliser: Callable[[np.ndarray, str], np.ndarray]
) -> dict[str, np.ndarray]:
    """The normalised modalities and the segmentation (when the patient has one) of ``patient``,
    slices first..last: seq -> (X, Y, n) float64. prepare_brats writes these; detect.py translates them."""
    volumes = {}
    for seq, path in patient.files.items():
        volume = read_nifti(path).reshape(patient.shape)
        if not np.isfinite(volume).all():
            raise UserError(f"{path}: {int((~np.isfinite(volume)).sum())} NaN or infinite voxels")
        if seq == SEG:
            if volume.min() < 0 or not np.array_equal(volume, np.round(volume)):
                raise UserError(f"{path}: expected non-negative integer labels (0 = no tumour)")
        else:
            volume = normaliser(volume, path)
        volumes[seq] = np.ascontiguousarray(volume[:, :, first : last + 1], dtype=np.float64)
    return volumes
