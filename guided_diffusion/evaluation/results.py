"""Per-image result files, the metrics table and its summary (SPEC sections 6 and 6a).

Files in an output folder (names pinned by SPEC 6a):

``<id>.npz``
    ``input`` (C, H, W) float32 and ``healthy`` (C, H, W) float32, images in [0, 1];
    ``anomaly`` (H, W) float32, |input - healthy| summed over channels (the paper's map; the
    translation's ``--map_*`` flags make another, guided_diffusion/maps.py; an ensemble stores
    the mean of its members' maps); ``mask`` (H, W) bool, the Otsu mask of ``anomaly``;
    ``label`` int (0 = healthy, 1 = diseased); ``ground_truth`` (H, W) uint8 0/1, only where
    it is known; ``patient`` (str) and ``slice`` (int), where the loader knows them (BRATS:
    from the file names); plus any ``extra`` arrays the caller adds (ignored by the metrics).
``<id>.png``
    A panel that names what it shows: a title (id, patient and slice where known, label, Dice),
    row 1 the input channels, row 2 the healthy reconstruction's channels, row 3 the anomaly heat
    map with its colour bar, the mask and, when known, the ground truth, each tile captioned.
    Tiles under 128 pixels are enlarged (nearest neighbour). :func:`save_result` draws the Otsu
    mask on the map's own scale; scoring the folder (a translation's end, ``evaluate.py``;
    :func:`guided_diffusion.evaluation.report.write_run`) redraws every panel with the mask of
    that evaluation, its Dice and the method in the title, on one colour scale for the run.
``metrics.csv``
    The columns ``id,label,dice,auroc,auprc``, then ``patient,slice`` where the files
    name them (BRATS: both; CheXpert: the patient; an empty field where a file does not),
    one row per ``.npz`` file, sorted by id. A metric the protocol does not score for an image (no ground truth,
    outside the protocol's selection, or undefined) is an EMPTY field, so every
    non-empty value of a column enters that column's mean in ``summary.json`` (except under
    the volume protocol, whose means are over patients: ``metrics_volume.csv``);
    :func:`read_metrics` reads empty fields back as NaN.
``summary.json``
    Valid JSON (undefined values are ``null``): the protocol, the threshold rule and the
    threshold used, the post-processing flags, counts, mean/std/n of each metric (with a
    ``ci95`` interval of the mean Dice when bootstrapped), pooled pixel AUROC/AUPRC, the
    image-level AUROC, Dice by lesion size, the healthy-slice false-positive rate, plus the
    keys the sampling script adds (``flags``, ``seconds_per_image``, ...), which a later
    :func:`write_metrics` (and so ``scripts/evaluate.py``) keeps.
``metrics_volume.csv``
    Under the volume protocol only: one row per patient, the columns ``PATIENT_COLUMNS``
    (``patient,n_slices,lesion_voxels,dice,auroc,auprc``); the summary's dice, auroc and auprc
    are over these rows, while metrics.csv holds each slice's Dice within its patient's
    3-D mask (and no per-slice AUROC/AUPRC).

Every metric is recomputed from ``anomaly``, ``ground_truth`` and (for the brain mask)
``input`` alone; the stored ``mask`` must equal ``otsu_mask(anomaly)`` (checked; a mismatch
is an error naming the file). The protocols, threshold rules and post-processing are
described in :mod:`guided_diffusion.evaluation.protocols`; the paper protocol with its
defaults is the evaluation of Wolleb et al. 2022 (SPEC 1): Dice of the per-slice Otsu mask
over the diseased slices, pixel AUROC and AUPRC over the slices with more than 20 tumour
pixels. Means and standard deviations (population std, ddof=0) are over the items a metric
scores.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..anomaly import Array, anomaly_map, dice, otsu_mask, to_numpy
from ..maps import MapOptions, make_map
from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write
from .postprocess import brain_of
from .protocols import (
    METRICS,
    MIN_TUMOUR_PIXELS,
    PATIENT_COLUMNS,
    PROTOCOL_DESCRIPTIONS,
    PROTOCOLS,
    Scores,
    Scoring,
    SliceResult,
    fit_threshold,
    prepare_units,
    score_units,
)

__all__ = [
    "LOCATION_COLUMNS", "METRICS", "METRICS_COLUMNS", "MIN_TUMOUR_PIXELS", "PROTOCOLS", "PROTOCOL_DESCRIPTIONS",
    "ResultFileError", "Scoring", "compute_metrics", "format_table", "format_value", "is_done", "load_result",
    "load_slices", "map_scale", "panel_title", "read_metrics", "read_summary", "render_panel", "save_result",
    "score_and_write", "score_folder", "write_metrics", "write_panel", "write_scores", "write_table",
]

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
TABLE_MD = "table.md"
METRICS_COLUMNS = ("id", "label", "dice", "auroc", "auprc")  # SPEC 6a's, always first
LOCATION_COLUMNS = ("patient", "slice")  # then these, where the files name a patient or a slice
REQUIRED_KEYS = ("input", "healthy", "anomaly", "mask", "label")
PINNED_KEYS = REQUIRED_KEYS + ("ground_truth", "patient", "slice")
_SCORED_KEYS = ("anomaly", "mask", "label", "ground_truth", "patient", "slice")  # what the metrics read
METRICS_VOLUME_CSV = "metrics_volume.csv"


# Panel layout.
_MIN_TILE = 128  # smaller images are enlarged to at least this many pixels
_GAP = 4
PANEL_TITLE = 16  # pixels of the title line (id, label, Dice)
PANEL_CAPTION = 12  # pixels of each tile's caption
_TEXT = (235, 235, 235)
_BACKGROUND = (32, 32, 32)
# An "inferno"-like ramp: dark purple -> red -> orange -> pale yellow.
_HEAT_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


class ResultFileError(UserError):
    """A result file that cannot be read or does not follow the pinned format."""


# ---------------------------------------------------------------------------------
# Writing one result


def _check_id(image_id: str) -> None:
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"id {image_id!r}: expected a non-empty string")
    if image_id.startswith(".") or "/" in image_id or "\\" in image_id or os.sep in image_id:
        raise ValueError(
            f"id {image_id!r}: expected a plain file stem (no path separator, no leading '.')"
        )


def _as_label(label: Any, where: str) -> int:
    arr = np.asarray(to_numpy(label, "label") if isinstance(label, torch.Tensor) else label)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"{where}: label: expected an int 0 (healthy) or 1 (diseased), got {label!r}"
        )
    out = int(arr.reshape(()))
    if out not in (0, 1):
        raise ValueError(f"{where}: label: expected 0 (healthy) or 1 (diseased), got {out}")
    return out


def _array(a: Any, name: str) -> np.ndarray:
    if isinstance(a, (list, tuple)):
        return np.asarray(a)
    return to_numpy(a, name)


def result_map(input: np.ndarray, healthy: np.ndarray, anomaly: Array | None = None,
               options: MapOptions | None = None) -> np.ndarray:
    """The stored anomaly map of one image: ``anomaly`` when the method made its own, else the map of
    ``options`` (:func:`guided_diffusion.maps.make_map`; none: the paper's, |input - healthy| summed over
    channels) from float32 images (C, H, W); float32 (H, W)."""
    if anomaly is not None:
        return _array(anomaly, "anomaly").astype(np.float32)
    x, x_healthy = input.astype(np.float32), healthy.astype(np.float32)
    if options is None:
        return anomaly_map(x, x_healthy).astype(np.float32)
    return make_map(x, x_healthy, options).astype(np.float32)


def save_result(
    output_dir: str | os.PathLike,
    id: str,
    *,
    input: Array,
    healthy: Array,
    label: int,
    ground_truth: Array | None = None,
    anomaly: Array | None = None,
    patient: str | None = None,
    slice: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<id>.npz`` and ``<id>.png`` into ``output_dir`` (created if missing).

    The anomaly map is derived here (|input - healthy| summed over channels) unless a method
    defines its own (an ensemble's mean map); the mask is always its Otsu mask.

    :param id: the image's name (BRATS leaf folder, CheXpert file stem); a plain stem.
    :param input: the input image, (C, H, W), values in [0, 1]; stored as float32.
    :param healthy: its healthy translation, (C, H, W); stored as float32.
    :param label: 0 (healthy) or 1 (diseased).
    :param ground_truth: optional (H, W) segmentation; nonzero = anomalous; stored as
        uint8 0/1.
    :param anomaly: optional (H, W) map that replaces the derived one.
    :param patient: the patient the image belongs to, where the loader knows it.
    :param slice: the axial slice number, where the loader knows it (BRATS).
    :param extra: optional further arrays to store in the npz (e.g. the noised image);
        their names must differ from the pinned keys.
    :return: the paths of the npz and png files. Both are written atomically, npz first,
        so :func:`is_done` is only true once both are complete.
    """
    _check_id(id)
    x = _array(input, "input").astype(np.float32)
    x_healthy = _array(healthy, "healthy").astype(np.float32)
    if x.ndim != 3:
        raise ValueError(f"{id}: input: expected (C, H, W), got shape {x.shape}")
    if x_healthy.shape != x.shape:
        raise ValueError(
            f"{id}: healthy: expected shape {x.shape} like input, got {x_healthy.shape}"
        )
    hw = x.shape[1:]
    amap = result_map(x, x_healthy, anomaly)
    if amap.shape != hw:
        raise ValueError(f"{id}: anomaly: expected shape (H, W) = {hw}, got {amap.shape}")
    if not np.isfinite(amap).all():
        raise ValueError(f"{id}: anomaly: expected finite values, found NaN or inf")
    mask_np = otsu_mask(amap)
    arrays: dict[str, np.ndarray] = {
        "input": x,
        "healthy": x_healthy,
        "anomaly": amap,
        "mask": mask_np,
        "label": np.asarray(_as_label(label, id), dtype=np.int64),
    }
    gt = None
    if ground_truth is not None:
        gt = (_array(ground_truth, "ground_truth") != 0).astype(np.uint8)
        if gt.shape != hw:
            raise ValueError(f"{id}: ground_truth: expected shape (H, W) = {hw}, got {gt.shape}")
        arrays["ground_truth"] = gt
    if patient is not None:
        arrays["patient"] = np.asarray(str(patient))
    if slice is not None:
        arrays["slice"] = np.asarray(int(slice), dtype=np.int64)
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key or key in PINNED_KEYS:
            raise ValueError(
                f"{id}: extra key {key!r}: expected a non-empty name other than "
                f"{', '.join(PINNED_KEYS)}"
            )
        arrays[key] = np.asarray(_array(value, key))

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    npz_path, png_path = folder / f"{id}.npz", folder / f"{id}.png"
    with atomic_write(npz_path, "wb") as f:
        np.savez_compressed(f, **arrays)
    title = panel_title(id, int(arrays["label"]), patient, slice,
                        f"Otsu Dice {dice(mask_np, gt):.3f}" if gt is not None else "")
    write_panel(png_path, render_panel(x, x_healthy, amap, mask_np, gt, title=title))
    return npz_path, png_path


def write_panel(path: str | os.PathLike, panel: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 picture (a panel of :func:`render_panel`, a thumbnail) as a PNG, atomically;
    the fastest zlib level, since every evaluation redraws a split's panels."""
    with atomic_write(path, "wb") as f:
        Image.fromarray(panel, mode="RGB").save(f, format="PNG", compress_level=1)


def panel_title(id: str, label: int, patient: str | None = None, slice: int | None = None, *parts: str) -> str:
    """A panel's title: the id, the patient and slice where known, the label, then ``parts``
    (the method with its settings, the evaluation and its Dice), separated by wide gaps."""
    where = " ".join(p for p in (f"patient {patient}" if patient is not None else "",
                                 f"slice {slice}" if slice is not None else "") if p)
    return "   ".join(p for p in (id, where, f"label {label}", *parts) if p)


def map_scale(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """One colour scale for a run's anomaly maps: from min(0, the smallest value) to the largest
    (so a healthy slice with small values stays dark next to a tumour)."""
    low = min([0.0] + [float(m.min()) for m in maps if m.size])
    high = max([low] + [float(m.max()) for m in maps if m.size])
    return low, high


def load_result(path: str | os.PathLike, *, images: bool = True) -> dict[str, Any]:
    """Read one ``<id>.npz`` and check it against the pinned format.

    :param images: also load ``input``, ``healthy`` and any extra arrays; with False
        only the arrays the metrics need are decompressed (faster on large folders).
    :return: a dict with ``input``/``healthy`` (C, H, W) float32, ``anomaly`` (H, W)
        float32, ``mask`` (H, W) bool, ``label`` int, ``ground_truth`` (H, W) bool or
        None, ``patient`` str or None, ``slice`` int or None, plus any extra arrays.
    :raises ResultFileError: naming the file, when it cannot be read or breaks the format.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [key for key in REQUIRED_KEYS if key not in z.files]
            if missing:
                raise ResultFileError(
                    f"{path}: missing key(s) {', '.join(missing)}; "
                    f"expected {', '.join(REQUIRED_KEYS)}"
                )
            wanted = z.files if images else [k for k in _SCORED_KEYS if k in z.files]
            data = {key: z[key] for key in wanted}
    except ResultFileError:
        raise
    except Exception as e:  # zip, zlib, pickle and OS errors all mean "unreadable"
        raise ResultFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if data["anomaly"].ndim != 2:
        raise ResultFileError(
            f"{path}: anomaly: expected (H, W), got shape {data['anomaly'].shape}"
        )
    hw = data["anomaly"].shape
    if images:
        x = data["input"]
        if x.ndim != 3 or x.shape[1:] != hw or data["healthy"].shape != x.shape:
            raise ResultFileError(
                f"{path}: input and healthy: expected (C, H, W) shapes with (H, W) = {hw}, got "
                f"{x.shape} and {data['healthy'].shape}"
            )
        data["input"] = x.astype(np.float32, copy=False)
        data["healthy"] = data["healthy"].astype(np.float32, copy=False)
    for key in ("mask",) + (("ground_truth",) if "ground_truth" in data else ()):
        if data[key].shape != hw:
            raise ResultFileError(
                f"{path}: {key}: expected shape (H, W) = {hw}, got {data[key].shape}"
            )
    try:
        label = _as_label(data["label"], str(path))
    except ValueError as e:
        raise ResultFileError(str(e)) from e
    if not np.isfinite(data["anomaly"]).all():
        raise ResultFileError(f"{path}: anomaly: expected finite values, found NaN or inf")
    data["anomaly"] = data["anomaly"].astype(np.float32, copy=False)
    data["mask"] = data["mask"] != 0
    data["label"] = label
    data["ground_truth"] = data["ground_truth"] != 0 if "ground_truth" in data else None
    data["patient"] = str(data["patient"]) if "patient" in data else None
    data["slice"] = int(data["slice"]) if "slice" in data else None
    return data


def is_done(output_dir: str | os.PathLike, id: str) -> bool:
    """True when ``<id>.npz`` and ``<id>.png`` both exist and the npz loads (for resuming)."""
    folder = Path(output_dir)
    if not (folder / f"{id}.npz").is_file() or not (folder / f"{id}.png").is_file():
        return False
    try:
        load_result(folder / f"{id}.npz")
    except ResultFileError:
        return False
    return True


# ---------------------------------------------------------------------------------
# The PNG panel


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to RGB uint8 with a 256-entry inferno-like ramp.

    :param values: (H, W) floats. :return: (H, W, 3) uint8.
    """
    positions = np.linspace(0.0, 1.0, len(_HEAT_ANCHORS))
    ramp = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(ramp, positions, _HEAT_ANCHORS[:, c]) for c in range(3)], axis=1)
    lut = np.round(lut).astype(np.uint8)  # (256, 3)
    index = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.intp)
    return lut[index]


def _grey_tile(image: np.ndarray) -> np.ndarray:
    grey = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)  # (H, W, 3)


def heat_tile(amap: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 heat map on ``scale`` (low, high); default: this map's own,
    min(0, its minimum) to its maximum."""
    low, high = scale if scale is not None else map_scale([amap])
    scaled = (amap - low) / (high - low) if high > low else np.zeros_like(amap)
    return heat_colormap(scaled)


def _colour_bar_tile(height: int, width: int) -> np.ndarray:
    """(H, W, 3): the heat ramp, high at the top, in the left third; the rest is background (for the labels)."""
    tile = np.empty((height, width, 3), dtype=np.uint8)
    tile[:] = _BACKGROUND
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(max(1, width // 3), axis=1)
    tile[:, : ramp.shape[1]] = heat_colormap(ramp)
    return tile


CHANNEL_NAMES = {4: ("t1", "t1ce", "t2", "flair"), 1: ("xray",)}
"""A panel's captions of an image's channels, by their count: the data sets' channels (BRATS, CheXpert),
which a result file does not name (evaluation does not import the data sets; a test checks the two agree)."""


def _channel_names(channels: int) -> tuple[str, ...]:
    """The names of an image's channels (t1, t1ce, t2, flair for BRATS), else numbered."""
    return CHANNEL_NAMES.get(channels, tuple(f"channel {c}" for c in range(channels)))


def _wrap(title: str, font, width: float) -> list[str]:
    """The title's lines: its parts (separated by three spaces) joined while they fit ``width`` pixels."""
    lines: list[str] = []
    for part in title.split("   ") if title else []:
        if lines and font.getlength(lines[-1] + "   " + part) <= width:
            lines[-1] += "   " + part
        else:
            lines.append(part)
    return lines


def render_panel(
    input: np.ndarray,
    healthy: np.ndarray,
    anomaly: np.ndarray,
    mask: np.ndarray,
    ground_truth: np.ndarray | None = None,
    *,
    title: str = "",
    scale: tuple[float, float] | None = None,
    map_caption: str = "anomaly map",
    mask_caption: str = "Otsu mask",
) -> np.ndarray:
    """The PNG panel of one result as an (rows, cols, 3) uint8 image, labelled so that it reads alone.

    A title line (``title``: the id, patient and slice, label, method and Dice), then three rows,
    each tile captioned: the C input channels ("input t1", ...); the C channels of the healthy
    reconstruction (both clipped to [0, 1]); the anomaly heat map on ``scale`` (the run's shared
    (low, high); default the map's own, min(0, minimum) to maximum), its colour bar with the two ends
    written beside it, the mask (``mask_caption``: the Otsu mask, or the evaluated one) and, when
    given, the ground truth. Each (H, W) tile is enlarged by an integer factor (nearest neighbour) to
    at least 128 pixels per side. Height: ``PANEL_TITLE`` per title line (one when the title fits, or is
    empty) + 3 (``PANEL_CAPTION`` + tile) + 4 gaps.
    """
    channels, height, width = input.shape
    names = _channel_names(channels)
    scale = scale if scale is not None else map_scale([anomaly])
    rows = [
        [(f"input {n}", _grey_tile(c)) for n, c in zip(names, input)],
        [(f"healthy {n}", _grey_tile(c)) for n, c in zip(names, healthy)],
        [(map_caption, heat_tile(anomaly, scale)), ("colour scale", _colour_bar_tile(height, width)),
         (mask_caption, _grey_tile(mask.astype(np.float32)))],
    ]
    if ground_truth is not None:
        rows[2].append(("ground truth", _grey_tile(ground_truth.astype(np.float32))))
    zoom = max(1, math.ceil(_MIN_TILE / min(height, width)))
    tile_h, tile_w = height * zoom, width * zoom
    n_cols = max(len(r) for r in rows)
    row_h = PANEL_CAPTION + tile_h
    panel_w = n_cols * tile_w + (n_cols + 1) * _GAP
    font = ImageFont.load_default()
    lines = _wrap(title, font, panel_w - 2 * _GAP)
    title_h = PANEL_TITLE * max(1, len(lines))
    canvas = Image.new("RGB", (panel_w, title_h + len(rows) * row_h + (len(rows) + 1) * _GAP), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((_GAP, 2 + k * PANEL_TITLE), line, fill=_TEXT, font=font)
    for i, row in enumerate(rows):
        top = title_h + _GAP + i * (row_h + _GAP)
        for j, (caption, tile) in enumerate(row):
            left = _GAP + j * (tile_w + _GAP)
            draw.text((left + 1, top), caption, fill=_TEXT, font=font)
            big = tile.repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas.paste(Image.fromarray(big, mode="RGB"), (left, top + PANEL_CAPTION))
    # the colour bar's ends, right of its ramp (row 3, column 2)
    left, top = _GAP + (tile_w + _GAP) + (width // 3 or 1) * zoom + 3, title_h + _GAP + 2 * (row_h + _GAP) + PANEL_CAPTION
    draw.text((left, top), f"{scale[1]:.3g}", fill=_TEXT, font=font)
    draw.text((left, top + tile_h - 12), f"{scale[0]:.3g}", fill=_TEXT, font=font)
    return np.asarray(canvas)


# ---------------------------------------------------------------------------------
# Metrics over a folder


def _existing_folder(output_dir: str | os.PathLike, what: str = "") -> Path:
    folder = Path(output_dir)
    if not folder.exists():
        raise MissingInputError(f"{what}{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{what}{folder}: expected a folder of result files, found a file")
    return folder


def load_slices(output_dir: str | os.PathLike, *, brain: bool = False, what: str = "") -> list[SliceResult]:
    """Read every ``*.npz`` of a folder (sorted by id) for scoring; each file is read once.

    :param brain: also read ``input`` for the brain mask (pixels where some channel is nonzero).
    :param what: a prefix for error messages (e.g. ``"--val_dir "``).
    :raises MissingInputError: no such folder, or no ``*.npz`` in it.
    :raises ResultFileError: a file that cannot be read, or whose mask is not the Otsu mask of
        its anomaly map.
    """
    folder = _existing_folder(output_dir, what)
    paths = sorted((p for p in folder.glob("*.npz") if p.is_file()), key=lambda p: p.stem)
    if not paths:
        raise MissingInputError(f"{what}{folder}: no *.npz result files")
    slices = []
    for path in paths:
        result = load_result(path, images=brain)
        differ = int((otsu_mask(result["anomaly"]) != result["mask"]).sum())
        if differ:
            raise ResultFileError(
                f"{path}: mask: expected the Otsu mask of anomaly, but {differ} pixels differ"
            )
        slices.append(SliceResult(path, path.stem, result["label"], result["anomaly"], result["ground_truth"],
                                  result["patient"], result["slice"],
                                  brain_of(result["input"]) if brain else None))
    return slices


def score_folder(output_dir: str | os.PathLike, scoring: Scoring | None = None) -> Scores:
    """Score every ``*.npz`` in ``output_dir`` as ``scoring`` says (default: the paper protocol).

    The validation folder of ``--threshold val|fpr`` is read and scored first and let go before
    the test folder is read. Reads the result files only.

    :return: metrics.csv rows (a metric the protocol does not score for an image is NaN),
        per-patient rows (volume protocol, else None) and the JSON-ready summary.
    """
    scoring = scoring or Scoring()
    fit = None
    if scoring.rule in ("val", "fpr"):
        val = load_slices(scoring.val_dir, brain=scoring.brain_mask or scoring.rule == "fpr", what="--val_dir ")
        fit = fit_threshold(prepare_units(val, scoring, scoring.val_dir), scoring)
        del val
    units = prepare_units(load_slices(output_dir, brain=scoring.brain_mask), scoring, str(output_dir))
    if scoring.rule in ("best", "fixed"):
        fit = fit_threshold(units, scoring)
    return score_units(units, scoring, fit)


def compute_metrics(
    output_dir: str | os.PathLike, protocol: str = "paper", **options: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every ``*.npz`` in ``output_dir`` (sorted by id) under ``protocol``.

    :param options: the other fields of :class:`~guided_diffusion.evaluation.protocols.Scoring`
        (``threshold``, ``val_dir``, ``fpr``, ``brain_mask``, ``median``, ``min_component``,
        ``bootstrap``, ``seed``); the defaults are the paper's evaluation.
    :return: ``(rows, summary)``. ``rows``: one dict per image with the keys of
        ``METRICS_COLUMNS`` and ``LOCATION_COLUMNS`` (None where unknown); a metric the
        protocol does not score is NaN. ``summary``: JSON-ready (None where undefined), see
        the module docstring.
    :raises FileNotFoundError: no such folder, or no ``*.npz`` in it.
    :raises ResultFileError: a file that cannot be read, or whose mask is not the Otsu
        mask of its anomaly map.
    """
    scores = score_folder(output_dir, Scoring(protocol=protocol, **options))
    return scores.rows, scores.summary


def _format_float(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), key)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"summary key {key!r}: cannot write a {type(value).__name__} as JSON")


def read_summary(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` of ``output_dir`` as a dict ({} when there is none)."""
    path = Path(output_dir) / SUMMARY_JSON
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ResultFileError(f"{path}: not valid JSON ({e}); delete it to recompute") from e
    if not isinstance(summary, dict):
        raise ResultFileError(f"{path}: expected a JSON object, found {type(summary).__name__}")
    return summary


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv``: ``id`` str, ``label`` int, metrics float (NaN where empty), and
    ``patient`` str and ``slice`` int (None where empty, or where the file has no such columns)."""
    path = Path(output_dir) / METRICS_CSV
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) not in (METRICS_COLUMNS, METRICS_COLUMNS + LOCATION_COLUMNS):
            raise ResultFileError(
                f"{path}: expected the header {','.join(METRICS_COLUMNS)}[,{','.join(LOCATION_COLUMNS)}], "
                f"got {header}"
            )
        rows = []
        for line, fields in enumerate(reader, start=2):
            if len(fields) != len(header):
                raise ResultFileError(f"{path}, line {line}: expected {len(header)} fields")
            try:
                row = {"id": fields[0], "label": int(fields[1])}
                for name, text in zip(METRICS, fields[2:]):
                    row[name] = float(text) if text else math.nan
                patient, slice_ = fields[len(METRICS_COLUMNS):] or ("", "")
                row["patient"] = patient or None
                row["slice"] = int(slice_) if slice_ else None
            except ValueError as e:
                raise ResultFileError(f"{path}, line {line}: {e}") from e
            rows.append(row)
    return rows


def _metrics_cell(value: Any) -> str:
    if value is None:  # a patient or slice the file does not name
        return ""
    return _format_float(value) if isinstance(value, float) else str(value)


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
             cell: Callable[[Any], str] = _metrics_cell) -> str:
    """A CSV table: a header of ``columns``, then each row's values in that order, written by ``cell``
    (default: metrics.csv's, a non-finite float empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row[c]) for c in columns])
    return buffer.getvalue()


def write_metrics(
    output_dir: str | os.PathLike,
    protocol: str = "paper",
    extra_summary: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Recompute and write ``metrics.csv`` and ``summary.json`` of ``output_dir`` (and, under the
    volume protocol, ``metrics_volume.csv``: one row per patient).

    The summary holds the metrics of :func:`compute_metrics`, then every other key of an
    existing ``summary.json`` (so ``flags`` and ``seconds_per_image`` written by the
    sampling script survive a later evaluation), then ``extra_summary`` (which may not
    reuse a metric key). The files are written atomically.

    :param options: the scoring options of :func:`compute_metrics`.
    :return: the summary as written.
    """
    return write_scores(output_dir, Scoring(protocol=protocol, **options), extra_summary)


def write_scores(output_dir: str | os.PathLike, scoring: Scoring,
                 extra_summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`write_metrics` with its scoring given as a :class:`Scoring`."""
    return score_and_write(output_dir, scoring, extra_summary)[0]


def score_and_write(output_dir: str | os.PathLike, scoring: Scoring,
                    extra_summary: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Scores]:
    """:func:`write_scores`, also returning the :class:`Scores` (with their units: the maps and
    masks the numbers came from) for the panels and the report."""
    extra_summary = dict(extra_summary or {})
    scores = score_folder(output_dir, scoring)
    summary = scores.summary
    clashes = sorted(set(extra_summary) & set(summary))
    if clashes:
        raise ValueError(f"extra_summary key(s) {', '.join(clashes)}: would overwrite metrics")
    folder = Path(output_dir)
    for key, value in read_summary(folder).items():
        summary.setdefault(key, value)  # keep flags, seconds_per_image, ...; never old metrics
    summary.update(extra_summary)
    summary = _jsonable(summary, "summary")
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"

    rows = [{**row, "label": int(row["label"])} for row in scores.rows]
    located = any(row.get(k) is not None for row in rows for k in LOCATION_COLUMNS)
    with atomic_write(folder / METRICS_CSV, "w") as f:
        f.write(csv_text(METRICS_COLUMNS + LOCATION_COLUMNS if located else METRICS_COLUMNS, rows))
    if scores.patients is not None:
        with atomic_write(folder / METRICS_VOLUME_CSV, "w") as f:
            f.write(csv_text(PATIENT_COLUMNS, scores.patients))
    elif (folder / METRICS_VOLUME_CSV).exists():
        (folder / METRICS_VOLUME_CSV).unlink()  # a stale table of an earlier volume evaluation
    with atomic_write(folder / SUMMARY_JSON, "w") as f:
        f.write(text)
    return summary, scores


def method_name(summary: Mapping[str, Any]) -> str:
    """The method with its settings: the summary's ``method`` (with L and s or W where its flags
    hold them), a name built from its sampling flags, else "ours"."""
    flags = summary.get("flags")
    settings = ""
    if isinstance(flags, Mapping) and "noise_level" in flags:
        guidance = flags.get("guidance", "classifier")
        scale = {"classifier": ("s", "classifier_scale"), "cfg": ("W", "guidance_scale")}.get(guidance)
        settings = f"L={flags['noise_level']}" + (f", {scale[0]}={flags[scale[1]]}" if scale and scale[1] in flags else "")
    name = _method_name(summary)
    return f"{name} ({settings})" if settings and settings not in name else name


def _method_name(summary: Mapping[str, Any]) -> str:
    if summary.get("method"):
        return str(summary["method"])
    flags = summary.get("flags")
    if isinstance(flags, Mapping) and "noise_level" in flags and "classifier_scale" in flags:
        use_ddim = str(flags.get("use_ddim", True)).lower() in ("true", "1", "yes")
        sampler = "DDIM" if use_ddim else "DDPM"
        return f"{sampler}, L={flags['noise_level']}, s={flags['classifier_scale']}"
    return "ours"


def format_value(mean: Any, std: Any = None, interval: Any = None) -> str:
    """A table cell: ``mean ± std [low, high]`` to 3 decimals, the parts that are given; "n/a" without a mean."""
    if mean is None:
        return "n/a"
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return text + (" [{:.3f}, {:.3f}]".format(*interval) if interval else "")


def _mean_std(stats: Any) -> str:
    if not isinstance(stats, Mapping):
        return "n/a"
    return format_value(stats.get("mean"), stats.get("std"), stats.get("ci95"))


def threshold_text(summary: Mapping[str, Any]) -> str:
    """The rule and the threshold, e.g. ``best (oracle) 0.412`` or ``otsu (per slice)``."""
    rule = summary.get("threshold_rule") or "otsu"
    name = {"otsu": "otsu (per slice)", "best": "best (oracle)", "val": "val", "fpr": "fpr",
            "fixed": "fixed"}.get(rule, rule)
    fit = summary.get("threshold_fit")
    if rule == "fpr" and isinstance(fit, Mapping) and fit.get("fpr") is not None:
        name = f"fpr {fit['fpr']:g}"
    value = summary.get("threshold")
    return name if value is None else f"{name} {value:.4g}"


def postprocessing_text(post: Any) -> str:
    if not isinstance(post, Mapping):
        return "none"
    steps = ["brain mask" if post.get("brain_mask") else "",
             f"{post.get('neighbourhood', '')} median {post['median']}" if post.get("median") else "",
             f"components under {post['min_component']} dropped" if post.get("min_component") else ""]
    return ", ".join(step for step in steps if step) or "none"


def format_table(summary: Mapping[str, Any], method: str | None = None) -> str:
    """A Markdown table like the paper's: Method | Dice | AUROC | AUPRC | image AUROC.

    Metrics are mean ± std over the images (patients, for the volume protocol) the protocol
    scores, with the bootstrap's 95 % interval of the mean Dice in brackets; the image AUROC is
    a single number. Under the best threshold the Dice column reads "Dice (oracle)".
    ``method`` defaults to the summary's ``method``, else a name built from its ``flags``
    (sampler, L, s), else "ours". Lines under the table state the protocol, the threshold
    rule, the post-processing, the pooled scores and the numbers of images.
    """
    name = method if method is not None else _method_name(summary)
    image_auroc = summary.get("image_auroc")
    cells = [
        name,
        _mean_std(summary.get("dice")),
        _mean_std(summary.get("auroc")),
        _mean_std(summary.get("auprc")),
        "n/a" if image_auroc is None else f"{image_auroc:.3f}",
    ]
    counts = ", ".join(
        f"{metric} n={summary[metric]['n']}"
        for metric in METRICS
        if isinstance(summary.get(metric), Mapping)
    )
    dice_header = "Dice (oracle)" if summary.get("threshold_rule") == "best" else "Dice"
    lines = [
        f"| Method | {dice_header} | AUROC | AUPRC | image AUROC |",
        "| --- | --- | --- | --- | --- |",
        "| " + " | ".join(cells) + " |",
        "",
        f"Protocol `{summary.get('protocol', '?')}`: {summary.get('protocol_description', '')}. "
        f"{summary.get('n_images', '?')} images ({counts}).",
    ]
    if "threshold_rule" in summary:
        healthy = summary.get("healthy_fp_rate")
        lines += [
            "",
            f"Threshold: {threshold_text(summary)} ({summary.get('threshold_description', '')}). "
            f"Post-processing: {postprocessing_text(summary.get('postprocessing'))}. "
            f"Pooled AUPRC {format_value(summary.get('auprc_pooled'), None, summary.get('auprc_pooled_ci95'))}, "
            f"pooled AUROC {format_value(summary.get('auroc_pooled'))}; healthy slices with a positive pixel: "
            f"{'n/a' if healthy is None else f'{healthy:.3f}'}.",
        ]
    return "\n".join(lines) + "\n"


def write_table(
    output_dir: str | os.PathLike, summary: Mapping[str, Any], method: str | None = None
) -> str:
    """Write :func:`format_table` of ``summary`` to ``<output_dir>/table.md``; return it."""
    table = format_table(summary, method)
    with atomic_write(Path(output_dir) / TABLE_MD, "w") as f:
        f.write(table)
    return table
