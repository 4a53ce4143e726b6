"""``progress.png``: the curves of a training run's ``progress.csv``, for users without a Visdom server.

matplotlib is imported when a figure is drawn, and drawn on its Agg canvas directly (no pyplot, no
global backend switch), so nothing changes for a caller's own plots and no display is needed.
"""
from __future__ import annotations

import csv
import math
import os

from .fileio import atomic_write

_AXES = ("step", "epoch", "lr")  # what the logger writes besides the loss terms


def _is_accuracy(name: str) -> bool:
    """The accuracy columns of the pieces: ``acc`` and ``val_acc`` (classifier), ``d_acc`` (FixedPoint-GAN)."""
    return name == "acc" or name.endswith("_acc")


def read_progress(path: str) -> dict[str, list[tuple[float, float]]]:
    """The (step, value) points of every numeric column of ``progress.csv`` (empty cells left out)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        try:
            step = float(row.get("step") or i + 1)
        except ValueError:
            step = float(i + 1)
        for name, text in row.items():
            if name in _AXES or name is None or not text:
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            if math.isfinite(value):
                curves.setdefault(name, []).append((step, value))
    return curves


def plot_progress(csv_path: str, png_path: str) -> list[str]:
    """Draw ``csv_path``'s loss terms (and accuracies, where logged) against the step into ``png_path``
    (written atomically). Returns the panels' titles; writes nothing when no curve has a point."""
    curves = read_progress(csv_path)
    panels = [("loss terms", {k: v for k, v in curves.items() if not _is_accuracy(k)}),
              ("accuracy", {k: v for k, v in curves.items() if _is_accuracy(k)})]
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (title, lines) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        for name, points in sorted(lines.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="." if len(points) < 20 else None)
        if title == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        elif all(v > 0 for points in lines.values() for _, v in points):
            ax.set_yscale("log")  # diffusion losses fall by orders of magnitude
        ax.set_title(f"{title} ({os.path.basename(csv_path)})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=max(1, len(lines) // 6))
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png")
    return [title for title, _ in panels]
