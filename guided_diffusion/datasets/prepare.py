"""Turn the official BraTS2020 and CheXpert releases into the layouts of SPEC section 5.

Both preparations check every input they can before writing anything, then write
into a hidden staging folder inside the output folder and move the finished files
into place only when the whole run has succeeded: a run that fails on bad input
leaves the output folder as it was. Outputs are byte-deterministic (sorted
inputs, seeded split, fixed gzip header), so a second run with the same arguments
rewrites identical files. A run refuses an output folder that already holds files
it would not write itself (for instance the leaves of an earlier run with another
split), because mixing two runs would silently leak test patients into training.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..util.errors import MissingInputError, UserError
from ..util.flags import DEFAULT_SLICE_RANGE
from .layout import (
    MODALITIES,
    SEG,
    SPLIT_FILE,
    brats_slice_filename,
    check_no_stray_files,
    label_filename,
    leaf_name,
    save_json,
    save_npy,
    staged_output,
    write_brats_leaf,
)
from .nifti import read_nifti, read_nifti_shape, write_nifti_gz
from .splits import split_patients

CLIP_PERCENTILE = 99.5
"""Each volume is clipped at this percentile of its positive (brain) voxels."""


# ---------------------------------------------------------------------------
# BraTS2020.


@dataclass(frozen=True)
class BratsPatient:
    name: str  # folder name, e.g. BraTS20_Training_001
    code: str  # the patient part of slice file names, e.g. 001
    files: dict[str, str]  # seq -> volume path, for MODALITIES and seg
    shape: tuple[int, int, int]


def normalise_volume(volume: np.ndarray, path: str = "volume") -> np.ndarray:
    """Scale one MR volume to [0, 1].

    Negative values become 0; the volume is clipped at the 99.5th percentile of its
    positive (brain) voxels and divided by it, so the brightest 0.5 % of the brain
    maps to 1 and the background stays 0.
    """
    brain = volume[volume > 0]
    if brain.size == 0:
        raise UserError(f"{path}: no positive voxels; expected a brain volume to normalise")
    top = float(np.percentile(brain, CLIP_PERCENTILE))
    return np.clip(volume, 0.0, top) / top


def find_brats_patients(src: str, slice_range: tuple[int, int] = DEFAULT_SLICE_RANGE) -> list[BratsPatient]:
    """List and check (from the headers only) the patient folders of a BraTS2020 release.

    Each sub-folder of ``src`` is a patient ``P`` holding ``P_<seq>.nii.gz`` (or
    ``.nii``) for seq in t1, t1ce, t2, flair, seg: 3-D volumes of one shape whose
    depth holds ``slice_range``.
    """
    if not os.path.isdir(src):
        raise MissingInputError(f"--src {src}: no such directory")
    names = sorted(n for n in os.listdir(src) if not n.startswith(".") and os.path.isdir(os.path.join(src, n)))
    if not names:
        raise UserError(f"--src {src}: no patient folders (expected BraTS20_Training_XXX/ folders)")
    patients = []
    for name in names:
        folder = os.path.join(src, name)
        files = {}
        for seq in MODALITIES + (SEG,):
            candidates = [os.path.join(folder, f"{name}_{seq}{ext}") for ext in (".nii.gz", ".nii")]
            found = [c for c in candidates if os.path.isfile(c)]
            if not found:
                raise MissingInputError(f"{candidates[0]}: missing the {seq} volume of patient {name}")
            files[seq] = found[0]
        shapes = {seq: _volume_shape(path) for seq, path in files.items()}
        reference = MODALITIES[0]
        for seq, shape in shapes.items():
            if shape != shapes[reference]:
                raise UserError(
                    f"{files[seq]}: volume shape {shape} differs from {shapes[reference]} "
                    f"of {os.path.basename(files[reference])}"
                )
        depth = shapes[reference][2]
        if slice_range[1] >= depth:
            raise UserError(
                f"--slice_range {slice_range[0]},{slice_range[1]}: slice {slice_range[1]} is outside "
                f"{files[reference]}, which has {depth} axial slices"
            )
        code = re.search(r"(\d+)$", name)
        patients.append(BratsPatient(name, code.group(1) if code else name, files, shapes[reference]))
    return patients


def prepare_brats(
    src: str,
    out: str,
    *,
    slice_range: tuple[int, int] = DEFAULT_SLICE_RANGE,
    test_fraction: float = 0.2,
    seed: int = 0,
    write_label_dir: bool = False,
    progress: bool = True,
) -> dict:
    """Write the BRATS slice layout of SPEC section 5 from the BraTS2020 training release.

    Output (all slices float64 NIfTI, ``seg`` keeps BraTS labels 0, 1, 2, 4)::

        out/training/<leaf>/brats_train_<patient>_<seq>_<slice>_w.nii.gz   4 modalities + seg
        out/testing/<leaf>/...                                             4 modalities + seg
        out/test_labels/<leaf>-label.nii.gz                                with write_label_dir
        out/split.json                                                     patients and leaves

    Leaves are numbered 000001, 000002, ... over all patients in sorted order and,
    within a patient, by slice (so a leaf keeps its number whichever side of the
    split it falls on). Each modality volume is normalised by ``normalise_volume``.
    ``slice_range`` is inclusive. Returns a summary of counts.
    """
    first, last = slice_range
    if not 0 <= first <= last:
        raise UserError(f"--slice_range {first},{last}: expected 0 <= FIRST <= LAST")
    patients = find_brats_patients(src, slice_range)
    train, test = split_patients([p.name for p in patients], test_fraction, seed)
    test_set = set(test)
    n_slices = last - first + 1

    plan = []  # (patient, split, [(leaf, slice index)])
    for number, patient in enumerate(patients):
        split = "testing" if patient.name in test_set else "training"
        leaves = [(leaf_name(number * n_slices + k + 1), first + k) for k in range(n_slices)]
        plan.append((patient, split, leaves))
    planned = [SPLIT_FILE]
    for patient, split, leaves in plan:
        for leaf, z in leaves:
            for seq in MODALITIES + (SEG,):
                planned.append(os.path.join(split, leaf, brats_slice_filename(patient.code, seq, z)))
            if split == "testing" and write_label_dir:
                planned.append(os.path.join("test_labels", label_filename(leaf)))
    check_no_stray_files(out, planned)

    split_record = {
        "dataset": "brats",
        "slice_range": [first, last],
        "seed": seed,
        "test_fraction": test_fraction,
        "training": train,
        "testing": test,
        "leaves": {},
    }
    with staged_output(out) as staging:
        for patient, split, leaves in tqdm(plan, desc="patients", unit="patient", disable=not progress):
            volumes = _load_patient(patient, first, last)  # seq -> (X, Y, n_slices)
            for k, (leaf, z) in enumerate(leaves):
                channels = {seq: volumes[seq][:, :, k] for seq in MODALITIES}
                seg = volumes[SEG][:, :, k]
                write_brats_leaf(os.path.join(staging, split, leaf), patient.code, z, channels, seg)
                if split == "testing" and write_label_dir:
                    os.makedirs(os.path.join(staging, "test_labels"), exist_ok=True)
                    write_nifti_gz(os.path.join(staging, "test_labels", label_filename(leaf)), seg)
                split_record["leaves"][leaf] = {
                    "patient": patient.name,
                    "slice": z,
                    "split": split,
                    "tumour": bool((seg > 0).any()),
                }
        save_json(os.path.join(staging, SPLIT_FILE), split_record)
    tumour = sum(leaf["tumour"] for leaf in split_record["leaves"].values())
    return {
        "patients": {"training": len(train), "testing": len(test)},
        "slices": {
            "training": len(train) * n_slices,
            "testing": len(test) * n_slices,
            "with_tumour": tumour,
        },
    }


def _volume_shape(path: str) -> tuple[int, int, int]:
    shape = read_nifti_shape(path)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise UserError(f"{path}: expected a 3-D volume, found shape {shape}")
    return shape


def _load_patient(patient: BratsPatient, first: int, last: int) -> dict[str, np.ndarray]:
    """The normalised modalities and the segmentation of ``patient``, slices first..last."""
    volumes = {}
    for seq, path in patient.files.items():
        volume = read_nifti(path).reshape(patient.shape)
        if not np.isfinite(volume).all():
            raise UserError(f"{path}: {int((~np.isfinite(volume)).sum())} NaN or infinite voxels")
        if seq == SEG:
            if volume.min() < 0 or not np.array_equal(volume, np.round(volume)):
                raise UserError(f"{path}: expected non-negative integer labels (0, 1, 2, 4)")
        else:
            volume = normalise_volume(volume, path)
        volumes[seq] = np.ascontiguousarray(volume[:, :, first : last + 1], dtype=np.float64)
    return volumes


# ---------------------------------------------------------------------------
# CheXpert.

CHEXPERT_COLUMNS = ("Path", "Frontal/Lateral", "No Finding", "Pleural Effusion")
CHEXPERT_CLASSES = ("healthy", "diseased")
_STUDY_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/[^/]+$")


@dataclass(frozen=True)
class ChestImage:
    patient: str
    study: str
    path: str  # resolved image file
    label: str  # healthy or diseased
    line: int


def select_chexpert_rows(csv_path: str, image_root: str, keep_uncertain: bool = False) -> tuple[list[ChestImage], dict]:
    """Frontal studies labelled healthy (No Finding = 1) or diseased (Pleural Effusion = 1).

    Uncertain effusion (-1) is excluded, or counted as diseased with
    ``keep_uncertain``; rows that are both healthy and diseased, or neither, are
    skipped. Of several frontal views of one study the first by path is kept.
    Returns the images sorted by (patient, study) and counts of skipped rows.
    """
    if not os.path.isfile(csv_path):
        raise MissingInputError(f"--csv {csv_path}: no such file")
    if not os.path.isdir(image_root):
        raise MissingInputError(f"--image_root {image_root}: no such directory")
    skipped = {"lateral": 0, "uncertain": 0, "both": 0, "neither": 0, "extra_view": 0}
    chosen: dict[tuple[str, str], ChestImage] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in CHEXPERT_COLUMNS if c not in columns]
        if missing:
            raise UserError(
                f"{csv_path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})"
            )
        for row in reader:
            line = reader.line_num
            if row["Frontal/Lateral"].strip() != "Frontal":
                skipped["lateral"] += 1
                continue
            healthy = _csv_label(row, "No Finding", csv_path, line) == 1.0
            effusion = _csv_label(row, "Pleural Effusion", csv_path, line)
            if effusion == -1.0 and not keep_uncertain:
                skipped["uncertain"] += 1
                continue
            diseased = effusion in (1.0, -1.0)
            if healthy and diseased:
                skipped["both"] += 1
                continue
            if not healthy and not diseased:
                skipped["neither"] += 1
                continue
            relative = row["Path"].strip().replace("\\", "/")
            match = _STUDY_PATH.search(relative)
            if match is None:
                raise UserError(
                    f"{csv_path} line {line}: Path {relative!r}: expected .../patientNNNNN/studyK/<view>.jpg"
                )
            key = (match.group(1), match.group(2))
            image = ChestImage(*key, os.path.join(image_root, relative), "healthy" if healthy else "diseased", line)
            if key in chosen:
                skipped["extra_view"] += 1
                if image.path >= chosen[key].path:
                    continue
            chosen[key] = image
    images = [chosen[key] for key in sorted(chosen)]
    if not images:
        raise UserError(
            f"{csv_path}: no frontal rows labelled healthy (No Finding = 1) or diseased (Pleural Effusion = 1)"
        )
    for image in images:
        if not os.path.isfile(image.path):
            raise MissingInputError(
                f"{image.path}: no such image (Path of {csv_path} line {image.line}, resolved against --image_root)"
            )
    return images, skipped


def prepare_chexpert(
    csv_path: str,
    image_root: str,
    out: str,
    *,
    image_size: int = 256,
    test_fraction: float = 0.2,
    seed: int = 0,
    keep_uncertain: bool = False,
    progress: bool = True,
) -> dict:
    """Write the CheXpert layout of SPEC section 5 from a CheXpert CSV and its images.

    Output: ``out/{training,testing}/{healthy,diseased}/<patient>_<study>.npy``,
    uint8 of shape S x S x 1 (rows, columns, channel), and ``out/split.json``.
    Images are converted to 8-bit grayscale and resized to S x S with Pillow's
    bilinear filter (no crop: the aspect ratio is not kept). ``Path`` is resolved
    relative to ``image_root``. The split is by patient (``split_patients``).
    Returns counts per split and class and of skipped rows.
    """
    if image_size < 1:
        raise UserError(f"--image_size {image_size}: expected a positive number of pixels")
    images, skipped = select_chexpert_rows(csv_path, image_root, keep_uncertain)
    train, test = split_patients(sorted({image.patient for image in images}), test_fraction, seed)
    test_set = set(test)

    def target(image: ChestImage) -> str:
        split = "testing" if image.patient in test_set else "training"
        return os.path.join(split, image.label, f"{image.patient}_{image.study}.npy")

    check_no_stray_files(out, [SPLIT_FILE] + [target(image) for image in images])
    counts = {split: {label: 0 for label in CHEXPERT_CLASSES} for split in ("training", "testing")}
    with staged_output(out) as staging:
        for split in counts:
            for label in CHEXPERT_CLASSES:
                os.makedirs(os.path.join(staging, split, label), exist_ok=True)
        for image in tqdm(images, desc="images", unit="image", disable=not progress):
            array = _read_chest_image(image.path, image_size)  # (S, S, 1) uint8
            save_npy(os.path.join(staging, target(image)), array)
            counts["testing" if image.patient in test_set else "training"][image.label] += 1
        save_json(
            os.path.join(staging, SPLIT_FILE),
            {
                "dataset": "chexpert",
                "seed": seed,
                "test_fraction": test_fraction,
                "keep_uncertain": keep_uncertain,
                "image_size": image_size,
                "training": train,
                "testing": test,
            },
        )
    return {"images": counts, "patients": {"training": len(train), "testing": len(test)}, "skipped": skipped}


def _csv_label(row: dict, column: str, csv_path: str, line: int) -> float | None:
    text = (row[column] or "").strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(
            f"{csv_path} line {line}: column {column}: expected 1, 0, -1 or empty, found {text!r}"
        ) from None


def _read_chest_image(path: str, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            gray = picture.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except OSError as e:
        raise UserError(f"{path}: not a readable image ({e})") from e
    return np.asarray(gray, dtype=np.uint8)[:, :, None]
