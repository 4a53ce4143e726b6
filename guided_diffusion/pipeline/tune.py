"""Choosing L, s and the checkpoint on held-out data (scripts/tune.py).

The paper set the noise level L and the guidance scale s by hand, and Dice moves a lot with L, s
and the checkpoint (upstream issue 5 of the original repository). :func:`tune` translates a
labelled validation folder once per (checkpoint, L, s), scores each translation under the
evaluation flags and keeps the setting with the best mean Dice:

``<out>/<setting>/``   the validation folder's translation (result files; a rerun resumes it)
``<out>/tune.csv``     one row per setting: checkpoint, L, scale and every number of its summary
``<out>/best.json``    the best setting, its scores and, under ``--threshold val``, the threshold,
                       and the two command lines that apply it to the test set

Under ``--threshold val`` (or ``auto`` with a slice or volume protocol) a setting is scored with the
global threshold that is best on the validation folder itself: the threshold ``evaluate.py
--threshold val --val_dir <out>/<setting>`` then applies unchanged to the test set.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from ..evaluation.protocols import Scoring
from ..evaluation.results import csv_text
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import EvaluationFlags, OutputFlags, SamplingFlags, TranslateFlags, TuneFlags
from ..util.flagspec import config_defaults, flag_dict, part
from .evaluate import scoring_of
from .runs import SampleConfig, run_translation

TUNE_CSV = "tune.csv"
BEST_JSON = "best.json"
PLACEHOLDERS = ("TEST_DIR", "TEST_LABELS", "TEST_OUTPUT_DIR")
"""The words of best.json's command lines that stand for the test set's folders."""
TEST_DIR, TEST_LABELS, TEST_OUTPUT_DIR = PLACEHOLDERS


@dataclass(frozen=True)
class TuneConfig(SampleConfig):
    """scripts/tune.py: classifier_sample_known.py's flags but the settings it tries, the grid and the
    output folder."""

    translation: TranslateFlags = part("model_path", "num_samples")
    sampling: SamplingFlags = part("classifier_path", "use_ddim", "clip_denoised", "guidance")
    tune: TuneFlags
    output: OutputFlags
    SCRIPT: ClassVar[str] = "tune"


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    checkpoint: str
    noise_level: tuple[int, ...]  # one level, or the levels of an ensemble
    scale: float  # s for classifier guidance, W for classifier-free guidance, unused without guidance

    @property
    def name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.checkpoint))[0]
        return f"{stem}_L{self.levels}_s{self.scale:g}"

    @property
    def levels(self) -> str:
        return "+".join(map(str, self.noise_level))


def grid(cfg: TuneConfig) -> list[Setting]:
    """Every (checkpoint, L, scale) of the flags; the scales are those of the guidance in use."""
    t, guidance = cfg.tune, cfg.sampling.guidance
    scales = {"classifier": t.classifier_scales, "cfg": t.guidance_scales, "none": (0.0,)}[guidance]
    if not cfg.translation.model_path:
        raise UserError("--model_path: required (one or more diffusion model checkpoints to compare)")
    return [Setting(path, level, scale) for path in cfg.translation.model_path for level in t.noise_levels
            for scale in scales]


def setting_config(cfg: TuneConfig, setting: Setting, folder: str) -> SampleConfig:
    """classifier_sample_known.py's config for one setting, translating into ``folder``."""
    sampling = {"noise_level": setting.noise_level}
    if cfg.sampling.guidance == "classifier":
        sampling["classifier_scale"] = setting.scale
    elif cfg.sampling.guidance == "cfg":
        sampling["guidance_scale"] = setting.scale
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SampleConfig)}
    fields["sampling"] = dataclasses.replace(cfg.sampling, **sampling)
    fields["evaluation"] = dataclasses.replace(cfg.evaluation, threshold=validation_scoring(cfg).threshold)
    fields["translation"] = dataclasses.replace(cfg.translation, model_path=(setting.checkpoint,), output_dir=folder)
    return SampleConfig(**fields)


def validation_scoring(cfg: TuneConfig) -> Scoring:
    """How each validation translation is scored: the evaluation flags, with ``--threshold val`` fitted
    on the validation folder itself (``best`` there), since it is the held-out set."""
    e = cfg.evaluation
    if e.threshold == "fpr":
        raise UserError("--threshold fpr: tune.py chooses by Dice; tune with val, best or otsu and apply fpr to the "
                        "test set with evaluate.py")
    if e.val_dir:
        raise UserError(f"--val_dir {e.val_dir}: tune.py scores the validation folder it translates (--data_dir)")
    return scoring_of(dataclasses.replace(e, threshold="best" if e.threshold == "val" else e.threshold), cfg.run.seed)


def _flatten(summary: dict, prefix: str = "") -> dict[str, Any]:
    """The summary's numbers as flat columns (dice_mean, dice_std, auprc_pooled, ...)."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("flags", "postprocessing", "method", "protocol_description", "threshold_description"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _evaluate_command(cfg: TuneConfig, val_folder: str) -> str:
    """The evaluate.py line that scores the test translation as the validation was scored."""
    e = cfg.evaluation
    words = ["python", "scripts/evaluate.py", TEST_OUTPUT_DIR, "--protocol", e.protocol]
    if e.threshold == "val":  # the threshold chosen on the validation folder, applied unchanged
        words += ["--threshold", "val", "--val_dir", val_folder]
    else:
        rule = validation_scoring(cfg).rule
        words += ["--threshold", e.threshold if rule == "fixed" else rule]  # a given number stays that number
    words += [f"--{k}={v}" for k, v in (("brain_mask", e.brain_mask), ("median", e.median),
                                          ("min_component", e.min_component)) if v]
    return shlex.join(words)


def _translate_command(cfg: TuneConfig, setting: Setting) -> str:
    """The classifier_sample_known.py line that applies ``setting`` to the test set."""
    # evaluate.py scores the test set: the translation's own scoring flags are left at their defaults
    skip = {"data_dir", "label_dir", "output_dir", "log_dir", "model_path", "noise_levels", "classifier_scales",
            "guidance_scales", "out", *(f.name for f in dataclasses.fields(EvaluationFlags))}
    flags = {k: v for k, v in flag_dict(setting_config(cfg, setting, TEST_OUTPUT_DIR)).items() if k not in skip}
    defaults = flag_dict(config_defaults(SampleConfig))
    # the setting itself is written out even where it equals a default, so the line keeps its meaning
    scale = {"classifier": "classifier_scale", "cfg": "guidance_scale"}.get(cfg.sampling.guidance)
    chosen = {"noise_level", "use_ddim", "guidance", scale}
    words = ["python", "scripts/classifier_sample_known.py", "--data_dir", TEST_DIR, "--label_dir", TEST_LABELS,
             "--model_path", setting.checkpoint, "--output_dir", TEST_OUTPUT_DIR]
    for key, value in sorted(flags.items()):
        if key not in chosen and defaults.get(key, object()) == value:
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        words += [f"--{key}", text]
    return shlex.join(words)


def read_best(out: str) -> dict:
    """``<out>/best.json`` of a finished tuning run."""
    path = os.path.join(out, BEST_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run tune.py --out {out} first") from None


def fill_command(command: str, test_dir: str, test_labels: str, output_dir: str) -> list[str]:
    """One of best.json's command lines as words, its placeholders replaced by these folders
    (``test_labels`` may be empty: a folder whose leaves hold their seg)."""
    fill = dict(zip(PLACEHOLDERS, (test_dir, test_labels, output_dir)))
    return [fill.get(word, word) for word in shlex.split(command)]


def tune(cfg: TuneConfig, monitor=None) -> dict:
    """Translate and score the validation folder for every setting; write tune.csv and best.json."""
    settings = grid(cfg)
    out = cfg.output.out
    rows = []
    for i, setting in enumerate(settings):
        folder = os.path.join(out, setting.name)
        logger.log(f"setting {i + 1} of {len(settings)}: {setting.name}")
        summary = run_translation(setting_config(cfg, setting, folder), monitor=monitor)  # scored as validation
        if summary is None:  # not rank 0
            continue
        rows.append({"setting": setting.name, "checkpoint": setting.checkpoint, "noise_level": setting.levels,
                     "scale": setting.scale, "folder": folder, **_flatten(summary)})
    if not dist_util.is_main_process():
        return {}
    scored = [r for r in rows if r.get("dice_mean") is not None]
    if not scored:
        raise UserError(f"--data_dir {cfg.data.data_dir}: no setting could be scored by Dice (does the "
                        "validation folder hold ground truth?)")
    best = max(scored, key=lambda r: (r["dice_mean"], -rows.index(r)))  # the first of equals
    choice = next(s for s in settings if s.name == best["setting"])
    record = {"setting": best["setting"], "checkpoint": choice.checkpoint, "noise_level": choice.noise_level,
              "scale": choice.scale, "guidance": cfg.sampling.guidance, "dice": best["dice_mean"],
              "threshold_rule": best.get("threshold_rule"), "threshold": best.get("threshold"),
              "validation_folder": best["folder"], "scores": best,
              "translate": _translate_command(cfg, choice), "evaluate": _evaluate_command(cfg, best["folder"])}
    columns = list(dict.fromkeys(k for r in rows for k in r))  # a column any setting's summary has
    table = csv_text(columns, [{c: r.get(c) for c in columns} for r in rows],
                     cell=lambda value: "" if value is None else str(value))
    with atomic_write(os.path.join(out, TUNE_CSV), "w") as f:
        f.write(table)
    with atomic_write(os.path.join(out, BEST_JSON), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return record

