"""The page of a run, of a comparison and of a tuning: ``report.html``, opened from disk.

A static page with everything it needs in its folder or inline (no server, no network, no CDN),
light on a test split of 2,000 slices: small thumbnails loaded lazily, each linking to its full
panel (``<id>.png``).

A run's folder after :func:`write_run`::

    report.html            settings, evaluation, summary numbers, plots, the cases worst first
    report/thumbs/<id>.png input | map on the run's colour scale | evaluated mask (red) and ground truth (green)
    report/curves.png      pooled pixel ROC and PR curves
    report/histogram.png   map values inside tumours and in healthy brain, the threshold drawn on them
    <id>.png               the panels, redrawn with the evaluated mask on the run's colour scale

The table lists patients (volume protocol) or slices, sorted by Dice, worst first (a case the
protocol gives no Dice comes last); a header click sorts by that column. The plots are drawn
with matplotlib from counts in ``BINS`` bins over the run's colour scale; the exact pooled AUROC
and AUPRC are those of ``summary.json`` (:mod:`~guided_diffusion.evaluation.ranking`).
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..util.fileio import atomic_write
from .postprocess import brain_of
from .protocols import Scores, Scoring
from .results import (
    format_value,
    heat_tile,
    load_result,
    map_scale,
    method_name,
    panel_title,
    postprocessing_text,
    render_panel,
    score_and_write,
    threshold_text,
    write_panel,
)

REPORT_HTML = "report.html"
ASSETS = "report"
THUMB = 64  # pixels per side of each thumbnail tile
BINS = 256  # histogram bins over the run's colour scale
FLAIR = 3  # channel shown for a 4-channel BRATS image (t1, t1ce, t2, flair): tumours are brightest there

__all__ = ["REPORT_HTML", "SUMMARY_KEYS", "draw_run", "html_page", "html_table", "mask_overlay", "thumbnail",
           "write_html", "write_report", "write_run", "write_tune_report"]

SUMMARY_KEYS = (
    ("dice.mean", "Dice"),
    ("auroc.mean", "pixel AUROC"),
    ("auprc.mean", "pixel AUPRC"),
    ("auprc_pooled", "pooled AUPRC"),
    ("auroc_pooled", "pooled AUROC"),
    ("image_auroc", "image AUROC"),
    ("healthy_fp_rate", "healthy slices with a positive pixel"),
)
"""The summary's numbers on a run's page (dotted paths into summary.json) and their names."""

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#eee}th.sort{cursor:pointer}th.sort:after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums}img.thumb{image-rendering:pixelated;display:block}
.plots img{max-width:48%;margin-right:1%}.note{color:#555}details>summary{cursor:pointer}
.tiles td{text-align:center;vertical-align:top}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th.sort').forEach(function(th){
    th.addEventListener('click', function(){
      var col = th.cellIndex, body = table.tBodies[0], asc = th.dataset.order !== 'asc';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = parseFloat(a.cells[col].dataset.sort), y = parseFloat(b.cells[col].dataset.sort);
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        return asc ? x - y : y - x;
      });
      rows.forEach(function(r){ body.appendChild(r); });
      table.querySelectorAll('th.sort').forEach(function(h){ delete h.dataset.order; });
      th.dataset.order = asc ? 'asc' : 'desc';
    });
  });
});
"""


# ---------------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def html_page(title: str, body: str) -> str:
    """A complete page: inline CSS and the table-sorting script, nothing fetched (an empty data: icon
    keeps the browser from asking for /favicon.ico)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{_CSS}</style></head>\n"
            f"<body>\n<h1>{_e(title)}</h1>\n{body}\n<script>{_SORT_JS}</script>\n</body></html>\n")


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", sortable: Sequence[bool] = ()) -> str:
    """A table from cells that are already HTML (``<td ...>...</td>`` or plain text, wrapped here)."""
    head = "".join(f"<th class=\"sort\">{_e(h)}</th>" if i < len(sortable) and sortable[i] else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                     for row in rows)
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table class=\"{cls}\">{head}<tbody>\n{body}\n</tbody></table>"


def _num_cell(value: Any, digits: int = 3) -> str:
    sort = "NaN" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(value)
    return f"<td class=\"num\" data-sort=\"{sort}\">{_number(value, digits)}</td>"


def write_html(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


# ---------------------------------------------------------------------------------- pictures


def display_channel(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> the (H, W) channel shown in pictures: FLAIR of a 4-channel image, else channel 0."""
    return image[FLAIR] if image.shape[0] == 4 else image[0]


def _resize(tile: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size * W / H, 3): nearest neighbour up, box filter down."""
    h, w = tile.shape[:2]
    shape = (max(1, round(size * w / h)), size)
    resample = Image.Resampling.NEAREST if size >= h else Image.Resampling.BOX
    return np.asarray(Image.fromarray(tile, mode="RGB").resize(shape, resample))


def mask_overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    """(H, W) image in [0, 1], masks (H, W) bool -> (H, W, 3) uint8: the image dimmed, the mask red,
    the ground truth green, both yellow."""
    grey = np.round(np.clip(np.nan_to_num(image), 0, 1) * 150).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=2)
    gt = np.zeros_like(mask) if gt is None else gt
    out[mask & ~gt] = (230, 40, 40)
    out[gt & ~mask] = (40, 200, 60)
    out[mask & gt] = (250, 230, 40)
    return out


def thumbnail(input: np.ndarray, amap: np.ndarray, mask: np.ndarray, gt: np.ndarray | None,
              scale: tuple[float, float]) -> np.ndarray:
    """Three ``THUMB``-pixel tiles side by side: the input, the map on ``scale``, the mask overlay."""
    shown = display_channel(input)
    grey = np.repeat((np.clip(np.nan_to_num(shown), 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    tiles = [_resize(t, THUMB) for t in (grey, heat_tile(amap, scale), mask_overlay(shown, mask, gt))]
    gap = np.full((THUMB, 2, 3), 255, dtype=np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)


@dataclass
class Pixels:
    """Counts of map values per bin of ``edges`` over the run: tumour pixels, the other pixels of
    slices with ground truth (for the curves) and healthy brain pixels (for the histogram)."""

    edges: np.ndarray
    tumour: np.ndarray
    other: np.ndarray
    healthy_brain: np.ndarray
    otsu: list[float] = field(default_factory=list)  # each slice's Otsu cut (otsu rule): its lowest marked value


def _mask_caption(summary: Mapping[str, Any]) -> str:
    rule = summary.get("threshold_rule") or "otsu"
    caption = "Otsu mask" if rule == "otsu" else f"mask: map > {summary['threshold']:.3g}"
    return caption + (" + post" if postprocessing_text(summary.get("postprocessing")) != "none" else "")


def draw_run(folder: str | os.PathLike, scores: Scores, summary: Mapping[str, Any]) -> Pixels:
    """Redraw every panel of ``folder`` with the evaluated mask, the evaluation's Dice and the method
    in its title, on one colour scale for the run; write the thumbnails; count the pixels for the
    plots. Reads each ``.npz`` once more (the input and reconstruction)."""
    folder = Path(folder)
    thumbs = folder / ASSETS / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    scale = map_scale([u.maps for u in scores.units])
    low, high = scale
    edges = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
    counts = {key: np.zeros(BINS, dtype=np.int64) for key in ("tumour", "other", "healthy_brain")}
    otsu: list[float] = []
    rows = {row["id"]: row for row in scores.rows}
    method = method_name(summary)
    protocol = summary.get("protocol", "paper")
    rule = threshold_text(summary)
    volume_dice = {p["patient"]: p["dice"] for p in scores.patients or []}
    post = summary.get("postprocessing") or {}
    map_caption = "anomaly map" + (" (post-processed)" if post.get("brain_mask") or post.get("median") else "")
    for unit in scores.units:
        for z, member in enumerate(unit.members):
            result = load_result(member.path)
            amap, mask = unit.maps[z], unit.masks[z]
            gt = None if unit.gt is None else unit.gt[z]
            dice_value = rows[member.id]["dice"]
            scored = f"{protocol}, {rule}: " + ("no Dice" if not math.isfinite(dice_value) else
                                                f"Dice {dice_value:.3f}")
            if protocol == "volume" and math.isfinite(volume_dice.get(unit.name, math.nan)):
                scored += f" (slice), {volume_dice[unit.name]:.3f} (patient)"
            title = panel_title(member.id, member.label, member.patient, member.slice, method, scored)
            write_panel(member.path.with_suffix(".png"),
                        render_panel(result["input"], result["healthy"], amap, mask, gt, title=title, scale=scale,
                                     map_caption=map_caption,
                                     mask_caption=_mask_caption(summary)))
            write_panel(thumbs / f"{member.id}.png", thumbnail(result["input"], amap, mask, gt, scale))
            brain = unit.brain[z] if unit.brain is not None else brain_of(result["input"])
            if gt is not None:
                counts["tumour"] += np.histogram(amap[gt], edges)[0]
                counts["other"] += np.histogram(amap[~gt], edges)[0]
                counts["healthy_brain"] += np.histogram(amap[brain & ~gt], edges)[0]
            elif member.label == 0:
                counts["healthy_brain"] += np.histogram(amap[brain], edges)[0]
            if mask.any() and (summary.get("threshold_rule") or "otsu") == "otsu":
                otsu.append(float(amap[mask].min()))
    return Pixels(edges, otsu=otsu, **counts)


def _figure(figsize: tuple[float, float]):
    """A matplotlib figure at 90 dpi. matplotlib is loaded here, on first use, not when the module is
    imported: it adds about 0.3 s to the start of every process (training runs draw nothing)."""
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, dpi=90)


def _rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle  # on first use, as in _figure
    return Rectangle(*args, **kwargs)


def _plot_curves(pixels: Pixels, summary: Mapping[str, Any], path: Path) -> bool:
    """Pooled ROC and PR curves from the binned counts (thresholds at the bin edges, high to low)."""
    tp = np.cumsum(pixels.tumour[::-1])
    fp = np.cumsum(pixels.other[::-1])
    if tp[-1] == 0 or fp[-1] == 0:
        return False
    tpr, fpr = np.concatenate(([0.0], tp / tp[-1])), np.concatenate(([0.0], fp / fp[-1]))
    marked = np.maximum(tp + fp, 1)
    precision = np.concatenate(([1.0], tp / marked))
    fig = _figure((8, 3.6))
    roc, pr = fig.subplots(1, 2)
    roc.plot(fpr, tpr, color="C0")
    roc.plot([0, 1], [0, 1], ls=":", color="grey")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate",
            title=f"pixel ROC (pooled AUROC {_number(summary.get('auroc_pooled'))})")
    pr.plot(tpr, precision, color="C1")
    pr.axhline(tp[-1] / (tp[-1] + fp[-1]), ls=":", color="grey")
    pr.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02),
           title=f"pixel PR (pooled AUPRC {_number(summary.get('auprc_pooled'))})")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return True


def _plot_histogram(pixels: Pixels, summary: Mapping[str, Any], path: Path) -> bool:
    """Densities of the map values inside tumours and in healthy brain, the threshold drawn on them."""
    if pixels.tumour.sum() == 0 and pixels.healthy_brain.sum() == 0:
        return False
    width = pixels.edges[1] - pixels.edges[0]
    fig = _figure((8, 3.4))
    ax = fig.subplots()
    for counts, name, colour in ((pixels.healthy_brain, "healthy brain", "C0"), (pixels.tumour, "tumour", "C3")):
        if counts.sum():
            ax.stairs(counts / counts.sum() / width, pixels.edges, fill=True, alpha=0.5, color=colour,
                      label=f"{name} ({int(counts.sum())} pixels)")
    threshold = summary.get("threshold")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold_text(summary)}")
    elif pixels.otsu:
        ax.axvline(float(np.median(pixels.otsu)), color="k", ls="--",
                   label=f"median of the per-slice Otsu thresholds ({len(pixels.otsu)} slices)")
    ax.set(xlabel="anomaly map value", ylabel="density", title="map values by ground truth")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return True


# ---------------------------------------------------------------------------------- a run's page


def _lookup(summary: Mapping[str, Any], dotted: str) -> Any:
    value: Any = summary
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _key_cell(key: str, value: Any) -> str:
    """A cell showing summary.json's ``key`` (a dotted path) to 3 decimals, its exact value in data-value."""
    data = "" if value is None else f" data-value=\"{value!r}\""
    return f"<td class=\"num\" data-key=\"{_e(key)}\"{data}>{_number(value)}</td>"


def _summary_section(summary: Mapping[str, Any]) -> str:
    rows = []
    for key, name in SUMMARY_KEYS:
        value = _lookup(summary, key)
        extra = ""
        if key.endswith(".mean"):
            stats = summary.get(key.split(".")[0]) or {}
            extra = format_value(0.0, stats.get("std"), stats.get("ci95"))[5:] + f" (n = {stats.get('n', 0)})"
        elif key == "auprc_pooled" and summary.get("auprc_pooled_ci95"):
            extra = " [{:.3f}, {:.3f}]".format(*summary["auprc_pooled_ci95"])
        rows.append([_e(name), _key_cell(key, value), _e(extra.strip())])
    table = html_table(["metric", "value", "± std [95 % interval] (n)"], rows, cls="summary")
    size = summary.get("dice_by_size") or {}
    edges = size.get("edges")
    size_rows = []
    for q in range(4):
        span = "n/a" if not edges else f"{edges[q]:g} – {edges[q + 1]:g}"
        mean = (size.get("mean") or [None] * 4)[q]
        size_rows.append([f"quartile {q + 1}", span, str((size.get("n") or [0] * 4)[q]),
                          _key_cell(f"dice_by_size.mean.{q}", mean)])
    by_size = html_table(["lesion size", f"{size.get('unit', 'pixels')}", "n", "mean Dice"], size_rows)
    return f"<h2>Summary</h2>\n{table}\n<h3>Dice by lesion size</h3>\n{by_size}"


def _settings_section(summary: Mapping[str, Any], folder: Path) -> str:
    lines = [f"<p>Folder <code>{_e(folder.resolve())}</code>: {_e(summary.get('n_images'))} images "
             f"({_e(summary.get('n_diseased'))} diseased, {_e(summary.get('n_healthy'))} healthy"
             + (f", {_e(summary['n_patients'])} patients" if summary.get("n_patients") else "") + ").</p>"]
    facts = [("method", method_name(summary))]
    facts += [(key, summary[key]) for key in ("device", "seconds_per_image", "images_timed") if key in summary]
    lines.append(html_table(["", ""], [[_e(k), _e(_number(v, 4) if isinstance(v, float) else v)] for k, v in facts]))
    flags = summary.get("flags")
    if isinstance(flags, Mapping) and flags:
        lines.append("<details><summary>every flag of the run</summary>"
                     + html_table(["flag", "value"], [[f"--{_e(k)}", _e(v)] for k, v in sorted(flags.items())])
                     + "</details>")
    boot = summary.get("bootstrap") or {}
    evaluation = [
        ("protocol", f"{summary.get('protocol')}: {summary.get('protocol_description', '')}"),
        ("threshold", f"{threshold_text(summary)}: {summary.get('threshold_description', '')}"),
        ("post-processing", postprocessing_text(summary.get("postprocessing"))),
        ("bootstrap", f"{boot.get('n', 0)} resamples of the {boot.get('unit', 'images')}s, seed {boot.get('seed', 0)}"
         if boot.get("n") else "none (no intervals)"),
    ]
    lines.append("<h2>Evaluation</h2>\n" + html_table(["", ""], [[_e(k), _e(v)] for k, v in evaluation]))
    return "<h2>Run</h2>\n" + "\n".join(lines)


def _thumb_link(folder: Path, case_id: str) -> str:
    return (f"<a href=\"{_e(case_id)}.png\" title=\"the full panel of {_e(case_id)}\">"
            f"<img class=\"thumb\" loading=\"lazy\" src=\"{ASSETS}/thumbs/{_e(case_id)}.png\" "
            f"alt=\"{_e(case_id)}\" height=\"{THUMB}\"></a>")


def _worst_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By Dice, lowest first; items without a Dice last; ties by name."""
    def key(item):
        value = item["dice"]
        finite = value is not None and math.isfinite(value)
        return (not finite, value if finite else 0.0, item["name"])
    return sorted(items, key=key)


def _cases_section(scores: Scores, folder: Path) -> str:
    members = {m.id: m for u in scores.units for m in u.members}
    if scores.patients is not None:
        units = {u.name: u for u in scores.units}
        items = [{**p, "name": p["patient"]} for p in scores.patients]
        rows = []
        for item in _worst_first(items):
            unit = units[item["name"]]
            lesion = [int(unit.gt[z].sum()) if unit.gt is not None else 0 for z in range(len(unit.members))]
            shown = unit.members[int(np.argmax(lesion))]  # the slice with the largest lesion
            slices = " ".join(f"<a href=\"{_e(m.id)}.png\" title=\"{_e(m.id)}\">{_e(m.slice)}</a>" for m in unit.members)
            rows.append([f"<td data-case=\"{_e(item['name'])}\">{_thumb_link(folder, shown.id)}</td>",
                         _e(item["name"]), _num_cell(item["n_slices"]), _num_cell(item["lesion_voxels"], 0),
                         _num_cell(item["dice"]), _num_cell(item["auroc"]), _num_cell(item["auprc"]),
                         f"<details><summary>{len(unit.members)} slices</summary>{slices}</details>"])
        header = ["", "patient", "slices", "lesion voxels", "Dice", "AUROC", "AUPRC", "panels"]
        sortable = [False, False, True, True, True, True, True, False]
        what = "Patients"
    else:
        items = [{**r, "name": r["id"]} for r in scores.rows]
        rows = []
        for item in _worst_first(items):
            m = members[item["id"]]
            rows.append([f"<td data-case=\"{_e(item['id'])}\">{_thumb_link(folder, item['id'])}</td>",
                         _e(item["id"]), _e(m.patient or ""), _num_cell(m.slice if m.slice is not None else math.nan, 0),
                         _num_cell(item["label"]), _num_cell(item["dice"]), _num_cell(item["auroc"]),
                         _num_cell(item["auprc"])])
        header = ["", "id", "patient", "slice", "label", "Dice", "AUROC", "AUPRC"]
        sortable = [False, False, False, True, True, True, True, True]
        what = "Slices"
    note = ("<p class=\"note\">Worst Dice first (no Dice last); click a column to sort, a thumbnail for its "
            "panel. Thumbnails: input, map on the run's colour scale, evaluated mask red, ground truth green, "
            "both yellow.</p>")
    return f"<h2>{what} ({len(rows)})</h2>\n{note}\n" + html_table(header, rows, cls="sortable cases",
                                                                     sortable=sortable)


def write_report(folder: str | os.PathLike, summary: Mapping[str, Any], scores: Scores, pixels: Pixels) -> Path:
    """Write ``report.html`` and its plots into ``folder`` (thumbnails: :func:`draw_run`); return its path."""
    folder = Path(folder)
    assets = folder / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    plots = []
    if _plot_curves(pixels, summary, assets / "curves.png"):
        plots.append(f"<img src=\"{ASSETS}/curves.png\" alt=\"pixel ROC and PR curves\">")
    if _plot_histogram(pixels, summary, assets / "histogram.png"):
        plots.append(f"<img src=\"{ASSETS}/histogram.png\" alt=\"histogram of map values\">")
    body = "\n".join([
        _settings_section(summary, folder),
        _summary_section(summary),
        "<h2>Pixels</h2>\n<div class=\"plots\">" + ("\n".join(plots) or "<p>No ground truth: no curves.</p>") + "</div>",
        _cases_section(scores, folder),
    ])
    path = folder / REPORT_HTML
    write_html(path, html_page(f"Run report: {method_name(summary)}", body))
    return path


def write_run(folder: str | os.PathLike, scoring: Scoring, extra_summary: Mapping[str, Any] | None = None) -> dict:
    """Score ``folder`` (metrics.csv, summary.json: :func:`results.score_and_write`), redraw its panels
    with the evaluated masks and write ``report.html``; return the summary."""
    summary, scores = score_and_write(folder, scoring, extra_summary)
    write_report(folder, summary, scores, draw_run(folder, scores, summary))
    return summary


# ---------------------------------------------------------------------------------- tuning


def write_tune_report(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any],
                      scale_name: str, levers: Sequence[str] = ()) -> Path:
    """``<out>/report.html`` of a tuning: per checkpoint a heat map of the validation Dice over L
    (rows) and the scale (``scale_name``: s or W; columns), the choice outlined, and the table of
    settings linking to each setting's own report. ``levers``: the further columns of the rows that
    tell settings apart (tune.py's varying ``--grid`` levers); a cell of the heat map then shows the
    best Dice over them."""
    out = Path(out)
    (out / ASSETS).mkdir(parents=True, exist_ok=True)
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    levels = list(dict.fromkeys(str(r["noise_level"]) for r in rows))
    scales = sorted(dict.fromkeys(float(r["scale"]) for r in rows))
    fig = _figure((max(4.0, 1.0 + 1.1 * len(scales)) * len(checkpoints), 1.6 + 0.5 * len(levels)))
    axes = np.atleast_1d(fig.subplots(1, len(checkpoints), squeeze=False)[0])
    for ax, checkpoint in zip(axes, checkpoints):
        grid = np.full((len(levels), len(scales)), np.nan)
        for r in rows:
            if r["checkpoint"] == checkpoint and r.get("dice_mean") is not None:
                cell = levels.index(str(r["noise_level"])), scales.index(float(r["scale"]))
                grid[cell] = np.fmax(grid[cell], r["dice_mean"])  # the best over the levers (NaN: none yet)
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.3f}", ha="center", va="center",
                    color="w" if np.isnan(value) or value < 0.6 else "k", fontsize=8)
        if best.get("checkpoint") == checkpoint:
            i, j = levels.index("+".join(map(str, best["noise_level"]))), scales.index(float(best["scale"]))
            ax.add_patch(_rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
        ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales])
        ax.set_yticks(range(len(levels)), levels)
        ax.set(xlabel=scale_name, ylabel="L", title=os.path.basename(checkpoint)
               + (" (best over " + ", ".join(levers) + ")" if levers else ""))
        fig.colorbar(image, ax=ax, label="validation Dice")
    fig.tight_layout()
    with atomic_write(out / ASSETS / "tune_grid.png", "wb") as f:
        fig.savefig(f, format="png")
    table = []
    for r in sorted(rows, key=lambda r: -(r.get("dice_mean") if r.get("dice_mean") is not None else -1)):
        link = _relative(Path(r["folder"]) / REPORT_HTML, out)
        table.append([f"<a href=\"{_e(link)}\">{_e(r['setting'])}</a>" + (" (chosen)" if r["setting"] == best.get("setting") else ""),
                      _e(r["noise_level"]), _e(f"{float(r['scale']):g}"), *(_e(r.get(lever, "")) for lever in levers),
                      _num_cell(r.get("dice_mean")), _num_cell(r.get("auprc_pooled"))])
    body = (f"<p>Chosen: <b>{_e(best.get('setting'))}</b>, validation Dice {_number(best.get('dice'))} "
            f"(threshold {_e(best.get('threshold_rule'))}).</p>\n"
            f"<img src=\"{ASSETS}/tune_grid.png\" alt=\"validation Dice over L and {scale_name}\">\n"
            "<h2>Settings</h2>\n" + html_table(["setting", "L", scale_name, *levers, "Dice", "pooled AUPRC"], table,
                                               cls="sortable",
                                               sortable=[False, False, False, *(False for _ in levers), True, True])
            + "\n<h2>Apply to the test set</h2>\n"
            f"<pre>{_e(best.get('translate', ''))}\n{_e(best.get('evaluate', ''))}</pre>")
    path = out / REPORT_HTML
    write_html(path, html_page("Tuning report", body))
    return path


