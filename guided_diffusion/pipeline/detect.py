"""A bundle applied to whole BraTS volumes as downloaded (scripts/detect.py).

Per patient: the volumes are found and checked, and normalised and cut to the bundle's slice
range by prepare_brats.py's own functions (:func:`datasets.prepare_brats.read_patient_folder`,
:func:`~datasets.prepare_brats.load_patient`); each axial slice becomes the network input the
loader makes (:func:`datasets.brats.network_input`); the slices are translated in batches by the
bundle's method, and each slice's map is the one the translation scripts store
(:func:`evaluation.results.result_map`), cut back from the padding. Slice k of the range is the
image named ``leaf_name(k + 1)``, the name prepare_brats.py gives it in a release holding this
patient alone, so that methods seeded per image draw the same noise: a patient's maps are then
those of prepare_brats.py followed by the translation script, bit for bit.

Outputs, in the space of the input (shape, affine, qform and sform, voxel sizes):
``<patient>_anomaly.nii.gz`` (float32, 0 outside the slice range), ``<patient>_mask.nii.gz`` (uint8:
the map after the bundle's post-processing, above its threshold, or Otsu's per slice), optionally
``<patient>_overlay.png``, and ``summary.csv`` over every patient of OUT. Rank r of N takes patients
r, r + N, ...; a patient whose files and row are complete is skipped.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch as th
from PIL import Image
from scipy import ndimage

from ..anomaly import dice, image_score
from ..datasets.brats import network_input
from ..datasets.common import check_fits, crop_from_size
from ..datasets.layout import MODALITIES, SEG, leaf_name
from ..datasets.nifti import nifti_like_bytes, read_nifti_image
from ..datasets.prepare_brats import (
    NORMALISERS,
    RELEASES,
    BratsPatient,
    check_patient,
    load_patient,
    read_patient_folder,
)
from ..evaluation.postprocess import PostProcessing, brain_of, process_map, process_mask
from ..evaluation.results import result_map
from ..evaluation.thresholds import otsu_masks
from ..util import dist_util, logger
from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_save_bytes, atomic_write, ensure_writable_dir, sha256_of
from ..util.flags import DataFlags, DetectFlags, RunFlags, SpeedFlags
from ..util.flagspec import part
from .bundle import BUNDLE_JSON, Bundle, load_bundle
from .translate import map_options

SUMMARY_CSV = "summary.csv"
ROWS_DIR = ".detect"  # one finished patient's row each: the marker that it is done
SUMMARY_COLUMNS = ("patient", "lesion_ml", "lesion_voxels", "positive_slices", "slices", "image_score", "dice_3d",
                   "voxel_ml")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class DetectConfig:
    """scripts/detect.py"""

    detection: DetectFlags
    run: RunFlags = part("device", "progress")
    data: DataFlags = part("batch_size")
    speed: SpeedFlags
    SCRIPT: ClassVar[str] = "detect"
    DEFAULTS: ClassVar[dict] = {"batch_size": 8}


# ------------------------------------------------------------------------------------------ inputs


def _patient_of_files(pairs: Sequence[str], slice_range: tuple[int, int]) -> BratsPatient:
    """``t1=FILE t1ce=FILE t2=FILE flair=FILE [seg=FILE]`` as one patient (named after the flair file)."""
    files: dict[str, str] = {}
    for word in pairs:
        seq, sep, path = word.partition("=")
        if not sep or seq not in MODALITIES + (SEG,):
            raise UserError(f"--input {word}: expected one folder, or SEQ=FILE for SEQ in "
                            f"{', '.join(MODALITIES + (SEG,))}")
        if seq in files:
            raise UserError(f"--input {word}: {seq} is given twice")
        if not os.path.isfile(path):
            raise MissingInputError(f"{path}: no such file (--input {seq}=)")
        files[seq] = path
    missing = [seq for seq in MODALITIES if seq not in files]
    if missing:
        raise MissingInputError(f"--input: no {missing[0]}=FILE (expected the four volumes t1=, t1ce=, t2=, flair=, "
                                "and seg= optionally)")
    return check_patient(os.path.dirname(os.path.abspath(files["flair"])), RELEASES["2021"], files, slice_range,
                         name=_stem(os.path.basename(files["flair"])))


def _stem(file_name: str) -> str:
    """A patient's name from its FLAIR file: without the release's ending (``_flair.nii.gz``, ``-t2f.nii``),
    else without ``.nii[.gz]``."""
    endings = sorted({s for r in RELEASES.values() for s in r.suffixes("flair")} | set(_NIFTI_SUFFIXES), key=len,
                     reverse=True)
    ending = next((e for e in endings if file_name.lower().endswith(e)), "")
    return file_name[: len(file_name) - len(ending)] or file_name


def _has_volumes(folder: str) -> bool:
    return any(n.lower().endswith(_NIFTI_SUFFIXES) for n in os.listdir(folder))


def find_patients(inputs: Sequence[str], slice_range: tuple[int, int]) -> list[BratsPatient]:
    """The patients of ``--input``: a patient folder, a folder of patient folders, or SEQ=FILE words;
    each checked from its headers (3-D, one shape and affine, deep enough for the slice range)."""
    if len(inputs) > 1 or "=" in inputs[0]:
        return [_patient_of_files(inputs, slice_range)]
    folder = inputs[0]
    if not os.path.isdir(folder):
        raise MissingInputError(f"--input {folder}: no such folder")
    if _has_volumes(folder):
        return [read_patient_folder(folder, slice_range)[1]]
    subfolders = sorted(n for n in os.listdir(folder)
                        if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))
    if not subfolders:
        raise MissingInputError(f"--input {folder}: no NIfTI volumes and no patient folders")
    patients = [read_patient_folder(os.path.join(folder, n), slice_range)[1] for n in subfolders]
    names = [p.name for p in patients]
    if len(set(names)) != len(names):
        raise UserError(f"--input {folder}: two patients share a name")
    return patients


# ------------------------------------------------------------------------------------------ one patient


def translate_patient(bundle: Bundle, translator, patient: BratsPatient, device: th.device, batch_size: int,
                      on_slices=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The anomaly maps of the patient's processed slices, (X, Y, n) float32 for the n slices of the
    range, and the normalised volumes they were made from (seq -> (X, Y, n))."""
    first, last = bundle.slice_range
    normaliser = NORMALISERS[bundle.record["preprocessing"]["normalise"]]
    image_size = int(bundle.record["preprocessing"]["image_size"])
    height, width = patient.shape[:2]
    check_fits(patient.files["flair"], (height, width), image_size, "axial slice")
    volumes = load_patient(patient, first, last, normaliser)  # seq -> (X, Y, n) float64
    n = last - first + 1
    maps = np.zeros((height, width, n), dtype=np.float32)
    options = map_options(bundle.config.maps)  # the translation's --map_* flags, as its folders were made
    with th.no_grad():
        for start in range(0, n, batch_size):
            ks = list(range(start, min(n, start + batch_size)))
            x = th.stack([network_input(np.stack([volumes[m][:, :, k] for m in MODALITIES]), image_size)
                          for k in ks]).to(device)  # (B, 4, S, S)
            out = translator(x, [leaf_name(k + 1) for k in ks], None)
            healthy, amaps = out if isinstance(out, tuple) else (out, None)
            x_cpu, healthy_cpu = x.float().cpu(), healthy.float().cpu()
            for j, k in enumerate(ks):
                own = None if amaps is None else amaps[j].float().cpu().numpy()
                amap = result_map(x_cpu[j].numpy(), healthy_cpu[j].numpy(), own, options)  # (S, S)
                maps[:, :, k] = crop_from_size(amap, height, width)
            if on_slices is not None:
                on_slices(len(ks))
    return maps, volumes


def mask_of(bundle: Bundle, maps: np.ndarray, volumes: dict) -> np.ndarray:
    """The bundle's threshold and post-processing applied to one patient's maps (X, Y, n): uint8 (X, Y, n)."""
    t = bundle.record["threshold"]
    post_record = t.get("postprocessing", {})
    post = PostProcessing(bool(post_record.get("brain_mask")), int(post_record.get("median", 0)),
                          int(post_record.get("min_component", 0)))
    volumetric = post_record.get("neighbourhood") == "3-D"
    stack = np.moveaxis(maps, 2, 0)  # (n, X, Y)
    brain = None
    if post.brain_mask:
        brain = np.stack([brain_of(np.stack([volumes[m][:, :, k] for m in MODALITIES]))
                          for k in range(maps.shape[2])])
    processed = process_map(stack, brain, post, volumetric)
    if t.get("value") is None:  # Otsu per slice (the paper's rule)
        masks = otsu_masks(processed, brain)
    else:
        masks = processed > np.float32(t["value"])
    masks = process_mask(masks, brain, post, volumetric)
    return np.moveaxis(masks, 0, 2).astype(np.uint8)


def _full(volume_shape: tuple[int, ...], part_xyn: np.ndarray, first: int, dtype) -> np.ndarray:
    out = np.zeros(volume_shape, dtype=dtype)
    out[:, :, first : first + part_xyn.shape[2]] = part_xyn
    return out


def overlay_png(flair: np.ndarray, mask: np.ndarray, columns: int = 8) -> bytes:
    """A mosaic of the processed axial FLAIR slices (X, Y, n) in [0, 1] with the mask's contour in red."""
    n = flair.shape[2]
    rows = -(-n // columns)
    h, w = flair.shape[1], flair.shape[0]  # shown with x to the right, y up (radiological display aside)
    canvas = np.zeros((rows * h, min(n, columns) * w, 3), dtype=np.uint8)
    for k in range(n):
        grey = np.rot90(np.clip(flair[:, :, k], 0, 1))
        edge = np.rot90(mask[:, :, k].astype(bool) & ~ndimage.binary_erosion(mask[:, :, k].astype(bool)))
        tile = np.repeat((grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        tile[edge] = (255, 0, 0)
        r, c = divmod(k, columns)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def process_patient(bundle: Bundle, translator, patient: BratsPatient, out: str, device: th.device, batch_size: int,
                    overlay: bool = False, on_slices=None) -> dict:
    """Translate, threshold and write one patient; returns its summary row (written last: the done marker)."""
    first, _ = bundle.slice_range
    maps, volumes = translate_patient(bundle, translator, patient, device, batch_size, on_slices)
    mask = mask_of(bundle, maps, volumes)
    reference = read_nifti_image(patient.files["flair"])
    shape = patient.shape
    full_map = _full(shape, maps, first, np.float32)
    full_mask = _full(shape, mask, first, np.uint8)
    atomic_save_bytes(os.path.join(out, f"{patient.name}_anomaly.nii.gz"), nifti_like_bytes(full_map, reference))
    atomic_save_bytes(os.path.join(out, f"{patient.name}_mask.nii.gz"), nifti_like_bytes(full_mask, reference))
    if overlay:
        atomic_save_bytes(os.path.join(out, f"{patient.name}_overlay.png"), overlay_png(volumes["flair"], mask))
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
    voxels = int(full_mask.sum())
    row = {"patient": patient.name, "lesion_ml": voxels * voxel_ml, "lesion_voxels": voxels,
           "positive_slices": int(mask.any(axis=(0, 1)).sum()), "slices": int(mask.shape[2]),
           "image_score": float(max(image_score(maps[:, :, k]) for k in range(maps.shape[2]))),
           "dice_3d": None, "voxel_ml": voxel_ml}
    if SEG in patient.files:
        seg = np.asarray(read_nifti_image(patient.files[SEG]).dataobj).reshape(shape)
        row["dice_3d"] = float(dice(full_mask.astype(bool), seg > 0))
    with atomic_write(os.path.join(out, ROWS_DIR, f"{patient.name}.json"), "w") as f:
        json.dump(row, f)
    return row


def _claim_output(out: str, bundle: Bundle) -> None:
    """OUT holds the results of one bundle: the first run records its bundle.json's SHA-256, a later
    run with another bundle is refused (its finished patients would be skipped, the rows mixed)."""
    os.makedirs(os.path.join(out, ROWS_DIR), exist_ok=True)
    digest = sha256_of(os.path.join(bundle.folder, BUNDLE_JSON))
    path = os.path.join(out, ROWS_DIR, "bundle.sha256")
    if os.path.isfile(path):
        with open(path) as f:
            found = f.read().strip()
        if found != digest:
            raise UserError(f"--output {out}: holds the results of another bundle (bundle.json SHA-256 {found}, "
                            f"this one {digest}); choose a new folder")
        return
    if dist_util.is_main_process():
        with atomic_write(path, "w") as f:
            f.write(digest + "\n")


def _done(out: str, name: str) -> bool:
    return all(os.path.isfile(os.path.join(out, f)) for f in (f"{name}_anomaly.nii.gz", f"{name}_mask.nii.gz",
                                                                os.path.join(ROWS_DIR, f"{name}.json")))


def write_summary_csv(out: str) -> list[dict]:
    """summary.csv from every finished patient's row in OUT (sorted by patient)."""
    folder = os.path.join(out, ROWS_DIR)
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(folder, name)) as f:
                rows.append(json.load(f))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in SUMMARY_COLUMNS})
    with atomic_write(os.path.join(out, SUMMARY_CSV), "w") as f:
        f.write(text.getvalue())
    return rows


# ------------------------------------------------------------------------------------------ the run


def check_dataset(bundle: Bundle) -> None:
    """detect.py reads BraTS volumes: a bundle made for another data set is refused."""
    if bundle.record.get("dataset") != "brats":
        raise UserError(f"{os.path.join(bundle.folder, 'bundle.json')}: made for --dataset "
                        f"{bundle.record.get('dataset')}; detect.py applies BraTS (brats) bundles to MR volumes")


def detect(cfg: DetectConfig) -> list[dict] | None:
    """scripts/detect.py: every patient of --input through the bundle; summary.csv on rank 0."""
    d = cfg.detection
    dist_util.setup_dist()
    try:
        bundle = load_bundle(d.bundle)
        check_dataset(bundle)
        if cfg.data.batch_size < 1:
            raise UserError(f"--batch_size {cfg.data.batch_size}: expected a positive integer")
        patients = find_patients(d.input, bundle.slice_range)
        ensure_writable_dir(d.output, "--output")
        _claim_output(d.output, bundle)
        rank, world = dist_util.get_rank(), dist_util.get_world_size()
        todo = [p for i, p in enumerate(patients) if i % world == rank and not _done(d.output, p.name)]
        logger.log(f"rank {rank}: {len(todo)} of {len(patients)} patients to process")
        device = dist_util.dev(cfg.run.device or None)
        translator = bundle.build_translator(device, cfg.speed) if todo else None
        n_slices = bundle.slice_range[1] - bundle.slice_range[0] + 1
        bar = None
        if cfg.run.progress and rank == 0 and todo:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(todo) * n_slices, desc="detect", unit="slice", dynamic_ncols=True)
        try:
            for i, patient in enumerate(todo):
                if bar is not None:
                    bar.set_description(f"patient {i + 1}/{len(todo)} {patient.name}")
                process_patient(bundle, translator, patient, d.output, device, cfg.data.batch_size, d.overlay,
                                on_slices=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        dist_util.barrier()
        if rank != 0:
            return None
        return write_summary_csv(d.output)
    finally:
        dist_util.cleanup()
