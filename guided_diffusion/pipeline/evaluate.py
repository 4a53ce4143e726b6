"""The scripts that score result folders: evaluate.py (one folder) and compare.py (several methods)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..evaluation import report, results
from ..evaluation.compare import load_runs, write_comparison
from ..evaluation.protocols import Scoring
from ..util.errors import UserError
from ..util.flags import CompareFlags, EvaluationFlags, OutputFlags, ResultsFlags, RunFlags
from ..util.flagspec import part


@dataclass(frozen=True)
class _ScoringConfig:
    """What both scoring scripts take: the evaluation flags, and --seed for the bootstrap."""

    evaluation: EvaluationFlags
    run: RunFlags = part("seed")
    HELP: ClassVar[dict] = {"seed": "seeds the bootstrap's resampling of patients (--bootstrap)"}


@dataclass(frozen=True)
class EvaluateConfig(_ScoringConfig):
    """scripts/evaluate.py"""

    results: ResultsFlags
    SCRIPT: ClassVar[str] = "evaluate"


@dataclass(frozen=True)
class CompareConfig(_ScoringConfig):
    """scripts/compare.py"""

    comparison: CompareFlags
    output: OutputFlags
    SCRIPT: ClassVar[str] = "compare"
    DEFAULTS: ClassVar[dict] = {"out": "results/compare"}


def scoring_of(evaluation: EvaluationFlags, seed: int = 0, val_dir: str | None = None) -> Scoring:
    """The :class:`~guided_diffusion.evaluation.protocols.Scoring` of the evaluation flags
    (``val_dir`` replaces ``--val_dir``, for one run of compare.py)."""
    options = dataclasses.asdict(evaluation)
    if val_dir is not None:
        options["val_dir"] = val_dir
    return Scoring(**options, seed=seed)


def evaluate_folder(cfg: EvaluateConfig) -> str:
    """Rewrite ``metrics.csv``, ``summary.json`` (and ``metrics_volume.csv`` for the volume
    protocol), ``table.md``, the panels (with this evaluation's masks) and ``report.html`` of a folder
    from its ``.npz`` files alone; returns the table."""
    summary = report.write_run(cfg.results.run_dir, scoring_of(cfg.evaluation, cfg.run.seed))
    return results.write_table(cfg.results.run_dir, summary)


def _val_dirs(text: str, n_runs: int) -> list[str | None]:
    if not text:
        return [None] * n_runs
    dirs = [d.strip() for d in text.split(",")]
    if len(dirs) != n_runs or not all(dirs):
        raise UserError(f"--val_dir {text!r}: expected {n_runs} validation folders (one per RUN_DIR, in their "
                        f"order), comma-separated, got {len(dirs)}")
    return dirs


def compare_runs(cfg: CompareConfig) -> dict:
    """Score every run folder under the same evaluation flags, then write ``comparison.md``,
    ``comparison.csv`` and ``comparison.png`` (see :func:`evaluation.compare.write_comparison`)."""
    c = cfg.comparison
    names = [n.strip() for n in c.names.split(",")] if c.names else None
    if names and not all(names):
        raise UserError(f"--names {c.names!r}: expected non-empty names separated by commas")
    runs = load_runs(c.run_dirs, names)
    scorings = [scoring_of(cfg.evaluation, cfg.run.seed, val_dir)
                for val_dir in _val_dirs(cfg.evaluation.val_dir, len(runs))]
    return write_comparison(runs, cfg.output.out, examples=c.examples, scorings=scorings)
