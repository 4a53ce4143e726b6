"""Turn CheXpert as published (``CheXpert-v1.0-small``: a CSV and its JPEGs) into the CheXpert layout of SPEC section 5.

The CSV's header is ``Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...,Pleural Effusion,...``
with the labels ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or empty (not
mentioned), and ``Path`` is relative to the folder that holds ``CheXpert-v1.0-small/``
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``).

Like the BraTS preparation, every row and image file is checked before anything is written,
the run is staged inside the output folder and moved into place only when it has succeeded,
and a second run with the same arguments rewrites identical files.
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
from .layout import (
    CHEXPERT_CLASSES,
    PARTS,
    SPLIT_FILE,
    VALIDATION,
    check_no_stray_files,
    chexpert_image_filename,
    save_json,
    save_npy,
    staged_output,
)
from .loaders import create_dataset
from .splits import split_train_val_test

CHEXPERT_COLUMNS = ("Path", "Frontal/Lateral", "No Finding", "Pleural Effusion")
"""The columns the selection reads (the CSV has more)."""

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
SKIP_REASONS = ("lateral", "uncertain", "conflict", "neither", "extra_view")
_STUDY_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/[^/]+$")


@dataclass(frozen=True)
class ChestImage:
    patient: str  # patient00001, from the Path
    study: str  # study1
    path: str  # resolved image file
    label: str  # healthy or diseased
    line: int  # of the CSV, for messages


def label_row(no_finding: float | None, effusion: float | None, keep_uncertain: bool = False) -> str:
    """The class of a frontal row: ``healthy``, ``diseased``, or the ``SKIP_REASONS`` entry it is dropped for.

    Healthy: No Finding = 1 and Pleural Effusion not positive. Diseased: Pleural
    Effusion = 1 (also -1 with ``keep_uncertain``). An uncertain effusion is dropped
    otherwise, as is an uncertain No Finding without a positive effusion; a row that
    is both healthy and diseased is a ``conflict``, one that is neither is ``neither``.
    """
    diseased = effusion == POSITIVE or (keep_uncertain and effusion == UNCERTAIN)
    if (effusion == UNCERTAIN and not keep_uncertain) or (no_finding == UNCERTAIN and not diseased):
        return "uncertain"
    healthy = no_finding == POSITIVE
    if healthy and diseased:
        return "conflict"
    if healthy:
        return "healthy"
    return "diseased" if diseased else "neither"


def select_chexpert_rows(csv_path: str, image_root: str, keep_uncertain: bool = False) -> tuple[list[ChestImage], dict]:
    """Frontal studies labelled healthy or diseased by :func:`label_row`, their image files checked.

    Lateral views are skipped; of several frontal views of one study the first by
    path is kept. The patient and study come from the ``Path``. Returns the images
    sorted by (patient, study) and the number of rows skipped for each of
    ``SKIP_REASONS``. A missing image file is an error naming it.
    """
    if not os.path.isfile(csv_path):
        raise MissingInputError(f"--csv {csv_path}: no such file")
    if not os.path.isdir(image_root):
        raise MissingInputError(f"--image_root {image_root}: no such directory")
    skipped = {reason: 0 for reason in SKIP_REASONS}
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
            if (row["Frontal/Lateral"] or "").strip() != "Frontal":
                skipped["lateral"] += 1
                continue
            label = label_row(_csv_label(row, "No Finding", csv_path, line),
                              _csv_label(row, "Pleural Effusion", csv_path, line), keep_uncertain)
            if label not in CHEXPERT_CLASSES:
                skipped[label] += 1
                continue
            relative = (row["Path"] or "").strip().replace("\\", "/")
            match = _STUDY_PATH.search(relative)
            if match is None:
                raise UserError(
                    f"{csv_path} line {line}: Path {relative!r}: expected .../patientNNNNN/studyK/<view>.jpg"
                )
            key = (match.group(1), match.group(2))
            image = ChestImage(*key, os.path.join(image_root, relative), label, line)
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
                f"{image.path}: no such image (Path of {csv_path} line {image.line}, resolved against "
                f"--image_root){_image_root_hint(image_root, image.path)}"
            )
    return images, skipped


def _image_root_hint(image_root: str, path: str) -> str:
    """A hint when --image_root is one level too deep (the CheXpert-v1.0-small folder itself)."""
    top = os.path.relpath(path, image_root).split(os.sep)[0]
    if os.path.isdir(os.path.join(image_root, top)):
        return ""
    return f"; --image_root {image_root} holds no {top}/ folder: pass the folder that holds it"


def prepare_chexpert(
    csv_path: str,
    image_root: str,
    out: str,
    *,
    image_size: int = 256,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    keep_uncertain: bool = False,
    progress: bool = True,
) -> dict:
    """Write the CheXpert layout of SPEC section 5 from a CheXpert CSV and its images.

    Output: ``out/{training,validation,testing}/{healthy,diseased}/<patient>_<study>.npy``,
    uint8 of shape S x S x 1 (rows, columns, channel), ``validation/`` only with
    ``val_fraction`` > 0, each part's slice store in ``<part>/.slice_store/``, and
    ``out/split.json`` (the patients of each part, the healthy and diseased images per part,
    the skipped rows). Images are converted
    to 8-bit grayscale and resized to S x S with Pillow's bilinear filter (no crop:
    the aspect ratio is not kept). ``Path`` is resolved relative to ``image_root``.
    The split is by patient (:func:`split_train_val_test`). Returns the patients
    and images per part and the skipped rows.
    """
    if image_size < 1:
        raise UserError(f"--image_size {image_size}: expected a positive number of pixels")
    images, skipped = select_chexpert_rows(csv_path, image_root, keep_uncertain)
    parts = split_train_val_test(sorted({image.patient for image in images}), test_fraction, val_fraction, seed)
    members = dict(zip(PARTS, parts))
    part_of = {patient: part for part, names in members.items() for patient in names}
    written = [part for part in PARTS if part != VALIDATION or members[part]]

    def target(image: ChestImage) -> str:
        return os.path.join(part_of[image.patient], image.label, chexpert_image_filename(image.patient, image.study))

    check_no_stray_files(out, [SPLIT_FILE] + [target(image) for image in images])
    counts = {part: {label: 0 for label in CHEXPERT_CLASSES} for part in PARTS}
    with staged_output(out) as staging:
        for part in written:  # every class folder, so each part loads even when a class is empty
            for label in CHEXPERT_CLASSES:
                os.makedirs(os.path.join(staging, part, label), exist_ok=True)
        for image in tqdm(images, desc="images", unit="image", disable=not progress):
            array = _read_chest_image(image.path, image_size)  # (S, S, 1) uint8
            save_npy(os.path.join(staging, target(image)), array)
            counts[part_of[image.patient]][image.label] += 1
        save_json(
            os.path.join(staging, SPLIT_FILE),
            {
                "dataset": "chexpert",
                "seed": seed,
                "test_fraction": test_fraction,
                "val_fraction": val_fraction,
                "keep_uncertain": keep_uncertain,
                "image_size": image_size,
                **members,
                "counts": counts,
                "skipped": skipped,
            },
        )
    for part in written:  # each part's slice store, so that its first training run decodes no file
        if sum(counts[part].values()):
            create_dataset(os.path.join(out, part), "chexpert", image_size)
    return {
        "patients": {part: len(members[part]) for part in PARTS},
        "counts": counts,
        "skipped": skipped,
    }


def _csv_label(row: dict, column: str, csv_path: str, line: int) -> float | None:
    """The label of ``column``: 1.0, 0.0, -1.0, or None for an empty cell."""
    text = (row[column] or "").strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (POSITIVE, NEGATIVE, UNCERTAIN):
        raise UserError(f"{csv_path} line {line}: column {column}: expected 1, 0, -1 or empty, found {text!r}")
    return value


def _read_chest_image(path: str, image_size: int) -> np.ndarray:
    """(S, S, 1) uint8: 8-bit grayscale, bilinear resize."""
    try:
        with Image.open(path) as picture:
            gray = picture.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except OSError as e:
        raise UserError(f"{path}: not a readable image ({e})") from e
    return np.asarray(gray, dtype=np.uint8)[:, :, None]
