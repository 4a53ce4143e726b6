"""The comparison table and figure of several methods' output folders (SPEC section 9).

Each run folder is what a translation script wrote (SPEC section 6a): ``summary.json``
(the method's name, flags and time per image) and ``<id>.npz`` files. Every run is scored
again from its ``.npz`` files under one set of evaluation flags
(:class:`~guided_diffusion.evaluation.protocols.Scoring`: protocol, threshold rule,
post-processing, bootstrap), so every method in a table is scored alike; nothing is
written into the run folders. Under ``--threshold val|fpr`` each run takes its threshold
from its own validation folder.

Outputs of :func:`write_comparison`:

``comparison.md``
    One row per method: the protocol, the threshold rule and value ("best (oracle)" for the
    oracle threshold), Dice, pixel AUROC and AUPRC as mean ± std over the images (patients,
    for the volume protocol) the protocol scores (see
    :mod:`guided_diffusion.evaluation.protocols`), the pooled AUPRC, the image-level AUROC,
    the number of images and the network time per image; a note under the table when the
    runs hold different images.
``comparison.csv``
    The same numbers, one column per value (``CSV_COLUMNS``: ``method, folder, protocol,
    threshold_rule, threshold, n_images, dice_mean, dice_std, dice_n, ..., image_auroc,
    auprc_pooled, auroc_pooled, healthy_fp_rate, seconds_per_image``); undefined values are
    empty.
``comparison.png``
    One row per example slice (ids present in every run; diseased first, then by id),
    columns: the input, each method's anomaly map as scored (post-processed where the flags
    say so) on that run's one colour scale (min(0, the run's smallest value) to its largest,
    as in its panels; a colour bar with both ends under each column), and the ground truth.
    The input tile shows the FLAIR channel (index 3) of a 4-channel BRATS image, where
    tumours are brightest, and channel 0 otherwise.
``report.html``
    The page of the comparison (:mod:`~guided_diffusion.evaluation.report`): the table, one row
    per method and evaluation as in ``comparison.md``, each linking to its run's own page, and
    the example slices across methods, each tile the map with its evaluated mask and Dice
    (tiles in ``report/tiles/``).

A method's name is, in order: the one given in ``names``, the summary's ``method``, a
name built from its sampling flags ("DDIM, L=500, s=100"), or the folder's name.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write
from . import report
from .protocols import Scoring, describe_rule
from .results import (
    METRICS,
    SUMMARY_JSON,
    csv_text,
    format_value,
    heat_colormap,
    heat_tile,
    load_result,
    map_scale,
    read_summary,
    score_folder,
    threshold_text,
    write_panel,
)

COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
COMPARISON_PNG = "comparison.png"
CSV_COLUMNS = (
    "method", "folder", "protocol", "threshold_rule", "threshold", "n_images",
    "dice_mean", "dice_std", "dice_n", "dice_ci95_low", "dice_ci95_high",
    "auroc_mean", "auroc_std", "auroc_n",
    "auprc_mean", "auprc_std", "auprc_n",
    "image_auroc", "pixel_auroc_pooled", "auprc_pooled", "auprc_pooled_ci95_low", "auprc_pooled_ci95_high",
    "auroc_pooled", "healthy_fp_rate", "seconds_per_image",
)

_MIN_TILE = 128
_GAP = 4
_HEADER = 20
_BAR = 28  # the colour bar row: the ramp, then its two ends
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)


@dataclass
class Run:
    """One method's output folder."""

    name: str
    folder: Path
    summary: dict[str, Any]

    def ids(self) -> list[str]:
        """Ids of the ``<id>.npz`` files, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.npz") if p.is_file())


def _is_true(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def method_name(summary: Mapping[str, Any], folder: str | os.PathLike) -> str:
    """The summary's ``method``, else a name from its sampling flags, else the folder name."""
    if summary.get("method"):
        return str(summary["method"])
    flags = summary.get("flags")
    if isinstance(flags, Mapping) and "noise_level" in flags and "classifier_scale" in flags:
        sampler = "DDIM" if _is_true(flags.get("use_ddim", True)) else "DDPM"
        return f"{sampler}, L={flags['noise_level']}, s={flags['classifier_scale']}"
    return Path(folder).resolve().name


def load_runs(folders: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> list[Run]:
    """Read the ``summary.json`` of every folder.

    :param names: one name per folder (``--names``), or None/empty to derive them.
    :raises FileNotFoundError: a folder that does not exist or has no ``summary.json``.
    :raises ValueError: a wrong number of names.
    """
    if not folders:
        raise UserError("RUN_DIR: expected at least one output folder")
    if names and len(names) != len(folders):
        raise UserError(f"--names: expected {len(folders)} names (one per RUN_DIR), got {len(names)}")
    runs = []
    for i, folder in enumerate(folders):
        path = Path(folder)
        if not path.is_dir():
            raise MissingInputError(f"{path}: no such folder (expected a translation output folder)")
        if not (path / SUMMARY_JSON).is_file():
            raise MissingInputError(f"{path}: no {SUMMARY_JSON} (run a translation script or "
                                    "scripts/evaluate.py on it first)")
        summary = read_summary(path)
        name = names[i] if names else method_name(summary, path)
        runs.append(Run(name=name, folder=path, summary=summary))
    return runs


# ---------------------------------------------------------------------------------
# Table


def _stat(summary: Mapping[str, Any], metric: str, key: str) -> float | int | None:
    stats = summary.get(metric)
    if not isinstance(stats, Mapping):
        return None
    return stats.get(key)


def comparison_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run with the keys of ``CSV_COLUMNS`` (None where undefined)."""
    rows = []
    for run in runs:
        s = run.summary
        row: dict[str, Any] = {"method": run.name, "folder": str(run.folder)}
        for key in ("protocol", "threshold_rule", "threshold", "n_images"):
            row[key] = s.get(key)
        for metric in METRICS:
            for key in ("mean", "std", "n"):
                row[f"{metric}_{key}"] = _stat(s, metric, key)
        intervals = {"dice_ci95": _stat(s, "dice", "ci95"), "auprc_pooled_ci95": s.get("auprc_pooled_ci95")}
        for key, interval in intervals.items():
            row[f"{key}_low"], row[f"{key}_high"] = interval if interval else (None, None)
        for key in ("image_auroc", "pixel_auroc_pooled", "auprc_pooled", "auroc_pooled", "healthy_fp_rate",
                    "seconds_per_image"):
            row[key] = s.get(key)
        rows.append(row)
    return rows


def _seconds(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}"


def _notes(runs: Sequence[Run]) -> list[str]:
    id_sets = [set(run.ids()) for run in runs]
    if id_sets and any(ids != id_sets[0] for ids in id_sets[1:]):
        common = set.intersection(*id_sets)
        listed = ", ".join(f"{run.name}: {len(ids)}" for run, ids in zip(runs, id_sets))
        return [f"**Warning:** the runs hold different images ({listed}; {len(common)} in common), "
                "so their numbers are not over the same test set."]
    return []


def _threshold_description(runs: Sequence[Run]) -> str:
    """The runs' threshold rule in words; where each run read its own validation folder, said so."""
    descriptions = list(dict.fromkeys(run.summary.get("threshold_description", "") for run in runs))
    first = runs[0].summary
    if len(descriptions) == 1 or first.get("threshold_rule") not in ("val", "fpr"):
        return descriptions[0]
    fpr = (first.get("threshold_fit") or {}).get("fpr", 0.0)
    return describe_rule(first["threshold_rule"], "each run's own validation folder (--val_dir)", fpr)


def format_comparison(runs: Sequence[Run]) -> str:
    """The Markdown table (one row per method) with the protocol, the threshold rule (the
    oracle labelled) and any warnings below it."""
    first = runs[0].summary
    oracle = first.get("threshold_rule") == "best"
    lines = [
        f"| Method | Protocol | Threshold | {'Dice (oracle)' if oracle else 'Dice'} | AUROC | AUPRC | "
        "pooled AUPRC | image AUROC | images | s / image |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run, row in zip(runs, comparison_rows(runs)):
        cells = [
            row["method"].replace("|", "/"),
            str(row["protocol"]),
            threshold_text(run.summary),
            format_value(row["dice_mean"], row["dice_std"], _stat(run.summary, "dice", "ci95")),
            format_value(row["auroc_mean"], row["auroc_std"]),
            format_value(row["auprc_mean"], row["auprc_std"]),
            format_value(row["auprc_pooled"], None, run.summary.get("auprc_pooled_ci95")),
            "n/a" if row["image_auroc"] is None else f"{row['image_auroc']:.3f}",
            str(row["n_images"] if row["n_images"] is not None else "n/a"),
            _seconds(row["seconds_per_image"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    counts = "; ".join(
        f"{run.name}: " + ", ".join(f"{m} n={_stat(run.summary, m, 'n')}" for m in METRICS) for run in runs
    )
    unit = "patients" if first.get("protocol") == "volume" else "images"
    lines.append(f"Every run scored from its .npz files alike. Mean ± std over the {unit} each metric scores "
                 f"(protocol `{first.get('protocol', '?')}`: {first.get('protocol_description', '')}); "
                 "[95 % bootstrap interval] where resampled. "
                 f"Threshold: {_threshold_description(runs)}. "
                 "Image AUROC: one value over all images. "
                 f"s / image: network time per image. Scored: {counts}.")
    for note in _notes(runs):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def format_comparison_csv(runs: Sequence[Run]) -> str:
    return csv_text(CSV_COLUMNS, comparison_rows(runs), _csv_value)


# ---------------------------------------------------------------------------------
# Figure


def example_ids(runs: Sequence[Run], n: int) -> list[str]:
    """Up to ``n`` ids present in every run: diseased (label 1) first, then healthy, each by id."""
    if n <= 0:
        return []
    common = set(runs[0].ids())
    for run in runs[1:]:
        common &= set(run.ids())
    labelled = []
    for image_id in sorted(common):
        label = load_result(runs[0].folder / f"{image_id}.npz", images=False)["label"]
        labelled.append((0 if label == 1 else 1, image_id))
    return [image_id for _, image_id in sorted(labelled)[:n]]


def _input_tile(image: np.ndarray) -> tuple[np.ndarray, str]:
    """(C, H, W) -> the channel shown in the figure (:func:`.report.display_channel`) and its title."""
    return report.display_channel(image), "input (flair)" if image.shape[0] == 4 else "input"


def _grey(image: np.ndarray) -> np.ndarray:
    grey = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)  # (H, W, 3)


@dataclass
class Shown:
    """What a run shows of one example slice: its scored map, evaluated mask and Dice (NaN: none)."""

    map: np.ndarray  # (H, W) float32, post-processed as scored
    mask: np.ndarray  # (H, W) bool
    dice: float


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_comparison(runs: Sequence[Run], ids: Sequence[str], shown: Sequence[Mapping[str, Shown]] | None = None,
                      scales: Sequence[tuple[float, float]] | None = None) -> Image.Image:
    """The figure: a header row of column names, one row per id, a colour bar row (see the module
    docstring). ``shown``/``scales``: per run, the scored maps of the ids and the run's colour scale
    (from :func:`rescore`); without them the stored maps, each run's scale over the ids shown."""
    if not ids:
        raise ValueError("no example ids: the runs have no <id>.npz file in common")
    rows = []
    input_title = "input"
    results_of = [[load_result(run.folder / f"{image_id}.npz") for run in runs] for image_id in ids]
    maps = [[shown[k][i].map if shown is not None else results[k]["anomaly"] for k in range(len(runs))]
            for i, results in zip(ids, results_of)]
    if scales is None:
        scales = [map_scale([row[k] for row in maps]) for k in range(len(runs))]
    for image_id, results, row_maps in zip(ids, results_of, maps):
        picture, input_title = _input_tile(results[0]["input"])
        gt = next((r["ground_truth"] for r in results if r["ground_truth"] is not None), None)
        tiles = [_grey(picture)] + [heat_tile(m, sc) for m, sc in zip(row_maps, scales)]
        tiles.append(_grey(gt.astype(np.float32)) if gt is not None else None)
        rows.append((image_id, results[0]["label"], tiles))
    titles = [input_title] + [run.name for run in runs] + ["ground truth"]

    height, width = rows[0][2][0].shape[:2]
    scale = max(1, math.ceil(_MIN_TILE / min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    n_cols = len(titles)
    canvas = Image.new("RGB", (n_cols * tile_w + (n_cols + 1) * _GAP,
                               _HEADER + len(rows) * tile_h + (len(rows) + 1) * _GAP + _BAR), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    bar_top = _HEADER + len(rows) * tile_h + (len(rows) + 1) * _GAP
    ramp = heat_colormap(np.linspace(0.0, 1.0, tile_w)[None].repeat(_BAR // 2, axis=0))  # (BAR/2, tile_w, 3)
    for k, (low, high) in enumerate(scales):  # each run's colour bar under its column
        left = _GAP + (k + 1) * (tile_w + _GAP)
        canvas.paste(Image.fromarray(ramp, mode="RGB"), (left, bar_top))
        draw.text((left, bar_top + _BAR // 2 + 1), f"{low:.3g}", fill=_TEXT, font=ImageFont.load_default())
        text = f"{high:.3g}"
        draw.text((left + tile_w - draw.textlength(text) - 1, bar_top + _BAR // 2 + 1), text, fill=_TEXT)
    font = ImageFont.load_default()
    for j, title in enumerate(titles):
        draw.text((_GAP + j * (tile_w + _GAP) + 2, 4), _fit(draw, title, font, tile_w - 4), fill=_TEXT, font=font)
    for i, (image_id, label, tiles) in enumerate(rows):
        top = _HEADER + _GAP + i * (tile_h + _GAP)
        for j, tile in enumerate(tiles):
            left = _GAP + j * (tile_w + _GAP)
            if tile is None:
                draw.text((left + 4, top + tile_h // 2), "no ground truth", fill=_TEXT, font=font)
                continue
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            canvas.paste(Image.fromarray(big, mode="RGB"), (left, top))
        caption = _fit(draw, f"{image_id} ({'diseased' if label == 1 else 'healthy'})", font, tile_w - 6)
        box = draw.textbbox((_GAP + 3, top + 3), caption, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((_GAP + 3, top + 3), caption, fill=_TEXT, font=font)
    return canvas


@dataclass
class Rescored:
    """:func:`rescore`'s runs with their new summaries, and per run its colour scale and the example
    slices as scored."""

    runs: list[Run]
    scales: list[tuple[float, float]]
    shown: list[dict[str, Shown]]


def rescore(runs: Sequence[Run], scorings: Sequence[Scoring], ids: Sequence[str] = ()) -> Rescored:
    """The runs with their summaries recomputed from their ``.npz`` files, one :class:`Scoring`
    per run; the stored summary's other keys (method, flags, time per image) are kept. Of the
    ``ids`` the scored map, the evaluated mask and the Dice are kept for the figures."""
    if len(scorings) != len(runs):
        raise ValueError(f"expected one scoring per run ({len(runs)}), got {len(scorings)}")
    out = Rescored([], [], [])
    wanted = set(ids)
    for run, scoring in zip(runs, scorings):
        scores = score_folder(run.folder, scoring)
        summary = scores.summary
        for key, value in run.summary.items():
            summary.setdefault(key, value)
        out.runs.append(Run(run.name, run.folder, summary))
        out.scales.append(map_scale([u.maps for u in scores.units]))
        dice_of = {row["id"]: row["dice"] for row in scores.rows}
        out.shown.append({m.id: Shown(u.maps[z], u.masks[z], dice_of[m.id])
                          for u in scores.units for z, m in enumerate(u.members) if m.id in wanted})
    return out


def write_comparison(runs: Sequence[Run], out_dir: str | os.PathLike, examples: int = 4,
                     scorings: Sequence[Scoring] | None = None) -> dict[str, Any]:
    """Score every run (``scorings``: one per run; default: the paper's evaluation), then write
    ``comparison.md``, ``comparison.csv`` and (when ``examples`` > 0 and the runs share images)
    ``comparison.png`` into ``out_dir``.

    :return: ``{"table": the Markdown text, "files": [paths written], "examples": ids shown}``.
    """
    if examples < 0:
        raise UserError(f"--examples {examples}: expected 0 or more")
    ids = example_ids(runs, examples)
    rescored = rescore(runs, scorings if scorings is not None else [Scoring()] * len(runs), ids)
    runs = rescored.runs
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror})") from None
    table = format_comparison(runs)
    files = []
    with atomic_write(out / COMPARISON_MD, "w") as f:
        f.write("# Comparison\n\n" + table)
    files.append(out / COMPARISON_MD)
    with atomic_write(out / COMPARISON_CSV, "w") as f:
        f.write(format_comparison_csv(runs))
    files.append(out / COMPARISON_CSV)
    if ids:
        figure = render_comparison(runs, ids, rescored.shown, rescored.scales)
        with atomic_write(out / COMPARISON_PNG, "wb") as f:
            figure.save(f, format="PNG")
        files.append(out / COMPARISON_PNG)
    files.append(write_comparison_report(out, rescored, ids))
    return {"table": table, "files": files, "examples": ids}


def write_comparison_report(out: Path, rescored: Rescored, ids: Sequence[str]) -> Path:
    """``<out>/report.html``: the table (one row per method and evaluation, as comparison.md) and the
    example slices across methods, each tile its thumbnail with the evaluated mask and its Dice."""
    runs = rescored.runs
    rows = []
    for run, row in zip(runs, comparison_rows(runs)):
        own = run.folder / report.REPORT_HTML
        name = html.escape(row["method"])
        if own.is_file():
            name = f"<a href=\"{html.escape(Path(os.path.relpath(own, out)).as_posix())}\">{name}</a>"
        rows.append([name, html.escape(str(row["protocol"])), html.escape(threshold_text(run.summary)),
                     html.escape(format_value(row["dice_mean"], row["dice_std"], _stat(run.summary, "dice", "ci95"))),
                     html.escape(format_value(row["auroc_mean"], row["auroc_std"])),
                     html.escape(format_value(row["auprc_mean"], row["auprc_std"])),
                     html.escape(format_value(row["auprc_pooled"], None, run.summary.get("auprc_pooled_ci95"))),
                     html.escape(format_value(row["image_auroc"])), html.escape(str(row["n_images"])),
                     html.escape(_seconds(row["seconds_per_image"]))])
    first = runs[0].summary
    header = ["method", "protocol", "threshold", "Dice (oracle)" if first.get("threshold_rule") == "best" else "Dice",
              "AUROC", "AUPRC", "pooled AUPRC", "image AUROC", "images", "s / image"]
    notes = "".join(f"<p><b>{html.escape(n.replace('**', ''))}</b></p>" for n in _notes(runs))
    body = [f"<h2>Methods</h2>\n{report.html_table(header, rows)}\n{notes}"
            f"<p class=\"note\">Protocol {html.escape(str(first.get('protocol')))}: "
            f"{html.escape(first.get('protocol_description', ''))}. Threshold: "
            f"{html.escape(_threshold_description(runs))}.</p>"]
    if ids:
        tiles = out / report.ASSETS / "tiles"
        tiles.mkdir(parents=True, exist_ok=True)
        grid = []
        for image_id in ids:
            result = load_result(runs[0].folder / f"{image_id}.npz")
            cells = [f"{html.escape(image_id)}<br>{'diseased' if result['label'] == 1 else 'healthy'}"]
            for k, (run, shown, scale) in enumerate(zip(runs, rescored.shown, rescored.scales)):
                item = shown[image_id]
                name = f"{k}_{image_id}.png"
                write_panel(tiles / name, report.thumbnail(result["input"], item.map, item.mask,
                                                           result["ground_truth"], scale))
                dice_text = "no Dice" if not math.isfinite(item.dice) else f"Dice {item.dice:.3f}"
                cells.append(f"<img class=\"thumb\" loading=\"lazy\" src=\"{report.ASSETS}/tiles/{html.escape(name)}\" "
                             f"alt=\"{html.escape(run.name)}: {html.escape(image_id)}\"><br>{dice_text}")
            grid.append(cells)
        body.append("<h2>The same slices across methods</h2>\n<p class=\"note\">Each tile: the input, the map on "
                    "its run's colour scale, the evaluated mask (red) and the ground truth (green; both yellow).</p>\n"
                    + report.html_table(["slice"] + [run.name for run in runs], grid, cls="tiles"))
    path = out / report.REPORT_HTML
    report.write_html(path, report.html_page("Comparison", "\n".join(body)))
    return path
