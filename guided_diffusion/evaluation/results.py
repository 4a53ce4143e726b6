"""Per-image result files, the metrics table and its summary (SPEC sections 6 and 6a).

Files in an output folder (names pinned by SPEC 6a):

``<id>.npz``
    ``input`` (C, H, W) float32 and ``healthy`` (C, H, W) float32, images in [0, 1];
    ``anomaly`` (H, W) float32, |input - healthy| summed over channels (an ensemble stores
    the mean of its members' maps); ``mask`` (H, W) bool, the Otsu mask of ``anomaly``;
    ``label`` int (0 = healthy, 1 = diseased); ``ground_truth`` (H, W) uint8 0/1, only where
    it is known; ``patient`` (str) and ``slice`` (int), where the loader knows them (BRATS:
    from the file names); plus any ``extra`` arrays the caller adds (ignored by the metrics).
``<id>.png``
    A panel: row 1 the input channels, row 2 the healthy reconstruction's channels,
    row 3 the anomaly heat map (scaled to its maximum), the Otsu mask and, when known,
    the ground truth. Tiles under 128 pixels are enlarged (nearest neighbour).
``metrics.csv``
    Exactly the columns ``id,label,dice,auroc,auprc``, one row per ``.npz`` file,
    sorted by id. A metric the protocol does not score for an image (no ground truth,
    outside the protocol's selection, or undefined) is an EMPTY field, so every
    non-empty value of a column enters that column's mean in ``summary.json``;
    :func:`read_metrics` reads empty fields back as NaN.
``summary.json``
    Valid JSON (undefined values are ``null``): the protocol, counts, mean/std/n of
    each metric, pooled pixel AUROC/AUPRC, the image-level AUROC, plus the keys the
    sampling script adds (``flags``, ``seconds_per_image``, ...), which a later
    :func:`write_metrics` (and so ``scripts/evaluate.py``) keeps.

Every metric is recomputed from ``anomaly`` and ``ground_truth`` alone: Dice uses
``otsu_mask(anomaly)``, which must equal the stored ``mask`` (checked; a mismatch is an
error naming the file).

Protocols (``protocol=``):

``"paper"`` (the authors' evaluation, SPEC 1)
    Dice of the Otsu mask is averaged over the diseased images (``label`` 1) that
    have ground truth. Pixel AUROC and AUPRC are averaged over the images whose
    ground truth has more than 20 anomalous pixels (``MIN_TUMOUR_PIXELS``), whatever
    their label. The authors' script also restricted Dice to the slices with more
    than 20 tumour pixels (and did not report AUPRC); we follow SPEC 1 instead.
``"all"``
    Every image with ground truth: Dice for all of them (1.0 when ground truth and
    mask are both empty, 0.0 when exactly one is), AUROC and AUPRC for all of them
    where defined (they are undefined, and left out, when the ground truth has one
    class only).

In both protocols the pooled pixel AUROC/AUPRC use all pixels of all images with
ground truth (one ROC curve over the concatenated pixels; memory grows with the
number of pixels), and the image-level AUROC scores ``image_score(anomaly)`` against
``label`` over all images. Means and standard deviations (population std, ddof=0) are
over the images a metric scores.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from ..anomaly import (
    IMAGE_SCORE_PERCENTILE,
    Array,
    anomaly_map,
    dice,
    image_score,
    otsu_mask,
    pixel_auprc,
    pixel_auroc,
    to_numpy,
)
from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
TABLE_MD = "table.md"
METRICS_COLUMNS = ("id", "label", "dice", "auroc", "auprc")
REQUIRED_KEYS = ("input", "healthy", "anomaly", "mask", "label")
PINNED_KEYS = REQUIRED_KEYS + ("ground_truth", "patient", "slice")
_SCORED_KEYS = ("anomaly", "mask", "label", "ground_truth", "patient", "slice")  # what the metrics read
PROTOCOLS = ("paper", "all")
# Paper protocol: AUROC/AUPRC only for slices with more than this many tumour pixels.
MIN_TUMOUR_PIXELS = 20
METRICS = ("dice", "auroc", "auprc")

PROTOCOL_DESCRIPTIONS = {
    "paper": (
        "Dice averaged over diseased images (label 1) with ground truth; pixel AUROC and "
        f"AUPRC averaged over images with more than {MIN_TUMOUR_PIXELS} ground-truth pixels"
    ),
    "all": (
        "Dice averaged over all images with ground truth (1.0 when mask and ground truth "
        "are both empty); pixel AUROC and AUPRC over all images with ground truth where "
        "defined (both classes present)"
    ),
}

# Panel layout.
_MIN_TILE = 128  # smaller images are enlarged to at least this many pixels
_GAP = 4
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
    amap = (anomaly_map(x, x_healthy) if anomaly is None else _array(anomaly, "anomaly")).astype(np.float32)
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
    panel = render_panel(x, x_healthy, amap, mask_np, gt)
    with atomic_write(png_path, "wb") as f:
        Image.fromarray(panel, mode="RGB").save(f, format="PNG")
    return npz_path, png_path


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


def _heat_tile(amap: np.ndarray) -> np.ndarray:
    low, high = min(0.0, float(amap.min())), float(amap.max())
    scaled = (amap - low) / (high - low) if high > low else np.zeros_like(amap)
    return heat_colormap(scaled)


def render_panel(
    input: np.ndarray,
    healthy: np.ndarray,
    anomaly: np.ndarray,
    mask: np.ndarray,
    ground_truth: np.ndarray | None = None,
) -> np.ndarray:
    """The PNG panel of one result as an (rows, cols, 3) uint8 image.

    Row 1: the C input channels; row 2: the C healthy channels (both clipped to
    [0, 1]); row 3: the anomaly heat map (scaled to its maximum), the mask, and the
    ground truth when given. Each (H, W) tile is enlarged by an integer factor
    (nearest neighbour) to at least 128 pixels per side.
    """
    channels, height, width = input.shape
    rows = [
        [_grey_tile(c) for c in input],
        [_grey_tile(c) for c in healthy],
        [_heat_tile(anomaly), _grey_tile(mask.astype(np.float32))],
    ]
    if ground_truth is not None:
        rows[2].append(_grey_tile(ground_truth.astype(np.float32)))
    scale = max(1, math.ceil(_MIN_TILE / min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    n_cols = max(len(r) for r in rows)
    panel = np.empty(
        (len(rows) * tile_h + (len(rows) + 1) * _GAP, n_cols * tile_w + (n_cols + 1) * _GAP, 3),
        dtype=np.uint8,
    )
    panel[...] = _BACKGROUND
    for i, row in enumerate(rows):
        top = _GAP + i * (tile_h + _GAP)
        for j, tile in enumerate(row):
            left = _GAP + j * (tile_w + _GAP)
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            panel[top : top + tile_h, left : left + tile_w] = big
    return panel


# ---------------------------------------------------------------------------------
# Metrics over a folder


def _existing_folder(output_dir: str | os.PathLike) -> Path:
    folder = Path(output_dir)
    if not folder.exists():
        raise MissingInputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a folder of result files, found a file")
    return folder


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def _scores_dice(protocol: str, label: int) -> bool:
    return protocol == "all" or label == 1


def _scores_pixels(protocol: str, gt: np.ndarray) -> bool:
    return protocol == "all" or int(gt.sum()) > MIN_TUMOUR_PIXELS


def _stats(values: list[float]) -> dict[str, Any]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _two_class_score(metric, labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    return float(metric(labels, scores))


def compute_metrics(
    output_dir: str | os.PathLike, protocol: str = "paper"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every ``*.npz`` in ``output_dir`` (sorted by id) under ``protocol``.

    :return: ``(rows, summary)``. ``rows``: one dict per image with the keys of
        ``METRICS_COLUMNS``; a metric the protocol does not score is NaN. ``summary``:
        JSON-ready (None where undefined), see the module docstring.
    :raises FileNotFoundError: no such folder, or no ``*.npz`` in it.
    :raises ResultFileError: a file that cannot be read, or whose mask is not the Otsu
        mask of its anomaly map.
    """
    _check_protocol(protocol)
    folder = _existing_folder(output_dir)
    paths = sorted((p for p in folder.glob("*.npz") if p.is_file()), key=lambda p: p.stem)
    if not paths:
        raise MissingInputError(f"{folder}: no *.npz result files")

    rows: list[dict[str, Any]] = []
    labels, scores = [], []
    pooled_gt, pooled_amap = [], []
    n_ground_truth = 0
    for path in paths:
        result = load_result(path, images=False)
        amap, label, gt = result["anomaly"], result["label"], result["ground_truth"]
        mask = otsu_mask(amap)
        differ = int((mask != result["mask"]).sum())
        if differ:
            raise ResultFileError(
                f"{path}: mask: expected the Otsu mask of anomaly, but {differ} pixels differ"
            )
        row = {"id": path.stem, "label": label}
        row.update({metric: math.nan for metric in METRICS})
        if gt is not None:
            n_ground_truth += 1
            if _scores_dice(protocol, label):
                row["dice"] = dice(mask, gt)
            if _scores_pixels(protocol, gt):
                row["auroc"] = pixel_auroc(amap, gt)
                row["auprc"] = pixel_auprc(amap, gt)
            pooled_gt.append(gt.reshape(-1))
            pooled_amap.append(amap.reshape(-1))
        rows.append(row)
        labels.append(label)
        scores.append(image_score(amap))

    labels_np = np.array(labels)
    pooled_gt_np = np.concatenate(pooled_gt) if pooled_gt else np.zeros(0, dtype=bool)
    pooled_amap_np = np.concatenate(pooled_amap) if pooled_amap else np.zeros(0, dtype=np.float32)
    summary: dict[str, Any] = {
        "protocol": protocol,
        "protocol_description": PROTOCOL_DESCRIPTIONS[protocol],
        "n_images": len(rows),
        "n_healthy": int((labels_np == 0).sum()),
        "n_diseased": int((labels_np == 1).sum()),
        "n_ground_truth": n_ground_truth,
    }
    for metric in METRICS:
        summary[metric] = _stats([row[metric] for row in rows])
    summary["pixel_auroc_pooled"] = _two_class_score(roc_auc_score, pooled_gt_np, pooled_amap_np)
    summary["pixel_auprc_pooled"] = _two_class_score(
        average_precision_score, pooled_gt_np, pooled_amap_np
    )
    summary["image_auroc"] = _two_class_score(roc_auc_score, labels_np == 1, np.array(scores))
    summary["image_score"] = f"{IMAGE_SCORE_PERCENTILE:g}th percentile of the anomaly map"
    return rows, summary


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
    """Rows of ``metrics.csv``: ``id`` str, ``label`` int, metrics float (NaN where empty)."""
    path = Path(output_dir) / METRICS_CSV
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != METRICS_COLUMNS:
            raise ResultFileError(
                f"{path}: expected the header {','.join(METRICS_COLUMNS)}, got {header}"
            )
        rows = []
        for line, fields in enumerate(reader, start=2):
            if len(fields) != len(METRICS_COLUMNS):
                raise ResultFileError(
                    f"{path}, line {line}: expected {len(METRICS_COLUMNS)} fields"
                )
            try:
                row = {"id": fields[0], "label": int(fields[1])}
                for name, text in zip(METRICS, fields[2:]):
                    row[name] = float(text) if text else math.nan
            except ValueError as e:
                raise ResultFileError(f"{path}, line {line}: {e}") from e
            rows.append(row)
    return rows


def write_metrics(
    output_dir: str | os.PathLike,
    protocol: str = "paper",
    extra_summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute and write ``metrics.csv`` and ``summary.json`` of ``output_dir``.

    The summary holds the metrics of :func:`compute_metrics`, then every other key of an
    existing ``summary.json`` (so ``flags`` and ``seconds_per_image`` written by the
    sampling script survive a later evaluation), then ``extra_summary`` (which may not
    reuse a metric key). Both files are written atomically.

    :return: the summary as written.
    """
    extra_summary = dict(extra_summary or {})
    rows, summary = compute_metrics(output_dir, protocol)
    clashes = sorted(set(extra_summary) & set(summary))
    if clashes:
        raise ValueError(f"extra_summary key(s) {', '.join(clashes)}: would overwrite metrics")
    folder = Path(output_dir)
    for key, value in read_summary(folder).items():
        summary.setdefault(key, value)  # keep flags, seconds_per_image, ...; never old metrics
    summary.update(extra_summary)
    summary = _jsonable(summary, "summary")
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for row in rows:
        writer.writerow(
            [row["id"], str(int(row["label"]))] + [_format_float(row[m]) for m in METRICS]
        )
    with atomic_write(folder / METRICS_CSV, "w") as f:
        f.write(buffer.getvalue())
    with atomic_write(folder / SUMMARY_JSON, "w") as f:
        f.write(text)
    return summary


def _method_name(summary: Mapping[str, Any]) -> str:
    if summary.get("method"):
        return str(summary["method"])
    flags = summary.get("flags")
    if isinstance(flags, Mapping) and "noise_level" in flags and "classifier_scale" in flags:
        use_ddim = str(flags.get("use_ddim", True)).lower() in ("true", "1", "yes")
        sampler = "DDIM" if use_ddim else "DDPM"
        return f"{sampler}, L={flags['noise_level']}, s={flags['classifier_scale']}"
    return "ours"


def _mean_std(stats: Any) -> str:
    if not isinstance(stats, Mapping) or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def format_table(summary: Mapping[str, Any], method: str | None = None) -> str:
    """A Markdown table like the paper's: Method | Dice | AUROC | AUPRC | image AUROC.

    Metrics are mean ± std over the images the protocol scores; the image AUROC is a
    single number. ``method`` defaults to the summary's ``method``, else a name built
    from its ``flags`` (sampler, L, s), else "ours". A line under the table states the
    protocol and the numbers of images.
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
    lines = [
        "| Method | Dice | AUROC | AUPRC | image AUROC |",
        "| --- | --- | --- | --- | --- |",
        "| " + " | ".join(cells) + " |",
        "",
        f"Protocol `{summary.get('protocol', '?')}`: {summary.get('protocol_description', '')}. "
        f"{summary.get('n_images', '?')} images ({counts}).",
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
