"""The scripts that score result folders: evaluate.py (one folder) and compare.py (several methods)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..evaluation import results
from ..evaluation.compare import load_runs, write_comparison
from ..util.errors import UserError
from ..util.flags import CompareFlags, EvaluationFlags, OutputFlags, ResultsFlags


@dataclass(frozen=True)
class EvaluateConfig:
    """scripts/evaluate.py"""

    results: ResultsFlags
    evaluation: EvaluationFlags
    SCRIPT: ClassVar[str] = "evaluate"


@dataclass(frozen=True)
class CompareConfig:
    """scripts/compare.py"""

    comparison: CompareFlags
    output: OutputFlags
    SCRIPT: ClassVar[str] = "compare"
    DEFAULTS: ClassVar[dict] = {"out": "results/compare"}


def evaluate_folder(cfg: EvaluateConfig) -> str:
    """Rewrite ``metrics.csv``, ``summary.json`` and ``table.md`` of a folder from its ``.npz``
    files alone; returns the table."""
    summary = results.write_metrics(cfg.results.run_dir, protocol=cfg.evaluation.protocol)
    return results.write_table(cfg.results.run_dir, summary)


def compare_runs(cfg: CompareConfig) -> dict:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` (see
    :func:`evaluation.compare.write_comparison`)."""
    c = cfg.comparison
    names = [n.strip() for n in c.names.split(",")] if c.names else None
    if names and not all(names):
        raise UserError(f"--names {c.names!r}: expected non-empty names separated by commas")
    return write_comparison(load_runs(c.run_dirs, names), cfg.output.out, examples=c.examples)
