"""Choosing L, s, the checkpoint and further levers on held-out data (scripts/tune.py).

The paper set the noise level L and the guidance scale s by hand, and Dice moves a lot with L, s
and the checkpoint (upstream issue 5 of the original repository). :func:`tune` translates a
labelled validation folder once per (checkpoint, L, s, levers), scores each translation under the
evaluation flags and keeps the setting with the best mean Dice. The levers (``--grid NAME=V1,V2``,
repeatable) are any on/off, choice or number flags of classifier_sample_known.py: the anomaly map's
(``map_residual``, ``map_normalise``, ``map_smooth``) or the sampler's; every combination of their
values is tried with every (checkpoint, L, s), the last lever varying fastest.

``<out>/<setting>/``   the validation folder's translation (result files; a rerun resumes it), named
                       ``<checkpoint>_L<L>_s<s>`` and ``_<lever>-<value>`` for each lever that varies
``<out>/tune.csv``     one row per setting: checkpoint, L, scale, one column per varying lever and
                       every number of its summary
``<out>/best.json``    the best setting, its levers, its scores and, under ``--threshold val``, the
                       threshold, the test translation's flags (``flags``, data, the chosen levers
                       among them) and the two command lines that apply it to the test set (the
                       translation scores as evaluate.py will)
``<out>/report.html``  the validation Dice over L and s (or W) as a heat map per checkpoint (the best
                       over the other levers in each cell), the choice outlined, and the settings,
                       each linking to its own page

A setting that differs from an earlier one only in the map levers translates nothing: its folder is
written from the earlier folder's saved inputs and healthy images, each map made again with its own
options (:func:`.runs.remap_translation`). A noise-level ensemble stores only the mean of its members'
healthy images, from which the members' maps cannot be made again, so an ensemble is translated anew.

Under ``--threshold val`` (or ``auto`` with a slice or volume protocol) a setting is scored with the
global threshold that is best on the validation folder itself: the threshold ``evaluate.py
--threshold val --val_dir <out>/<setting>`` then applies unchanged to the test set.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from ..evaluation.protocols import Scoring
from ..evaluation.report import write_tune_report
from ..evaluation.results import csv_text
from ..util import dist_util, logger
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import EvaluationFlags, MapFlags, OutputFlags, SamplingFlags, TranslateFlags, TuneFlags
from ..util.flagspec import (
    coerce_flags,
    config_defaults,
    declared_flags,
    flag_dict,
    flag_text,
    from_dict,
    part,
    replace_flags,
    str2bool,
    to_argv,
)
from .evaluate import scoring_of
from .networks import CLASSIFIER_FLAGS, UNET_FLAGS
from .methods.diffusion import SampleConfig, run_translation
from .runs import remap_translation
from .settings import NOT_SETTINGS, result_settings

TUNE_CSV = "tune.csv"
BEST_JSON = "best.json"
PLACEHOLDERS = ("TEST_DIR", "TEST_LABELS", "TEST_OUTPUT_DIR")
"""The words of best.json's command lines that stand for the test set's folders."""
TEST_DIR, TEST_LABELS, TEST_OUTPUT_DIR = PLACEHOLDERS
SCALE_NAMES = {"classifier": "s", "cfg": "W"}
"""What the scale of each guidance is called: s (classifier guidance), W (classifier-free guidance)."""
SCALE_FLAGS = {"classifier": "classifier_scale", "cfg": "guidance_scale"}
"""The flag that holds each guidance's scale (unguided translation has none)."""
MAP_FLAGS = tuple(f.name for f in dataclasses.fields(MapFlags))
"""The levers that change only the anomaly map, not the translation."""
GRID_ELSEWHERE = {"noise_level": "--noise_levels", "classifier_scale": "--classifier_scales",
                  "guidance_scale": "--guidance_scales", "guidance": "one --guidance per tuning run",
                  "model_path": "--model_path (several checkpoints)"}
"""Flags that --grid leaves to tune.py's own flags."""
FOLDERS = ("data_dir", "label_dir", "output_dir", "log_dir")
"""The test translation's flags that best.json leaves to whoever applies it."""


@dataclass(frozen=True)
class TuneConfig(SampleConfig):
    """scripts/tune.py: classifier_sample_known.py's flags but the settings it tries, the grid and the
    output folder."""

    translation: TranslateFlags = part("model_path", "num_samples")
    sampling: SamplingFlags = part("classifier_path", "use_ddim", "clip_denoised", "guidance")
    tune: TuneFlags
    output: OutputFlags
    SCRIPT: ClassVar[str] = "tune"
    HELP: ClassVar[dict] = {"num_samples": "translate the first N images of each validation translation (-1: all; "
                                           "not carried over to the test set)"}


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    checkpoint: str
    noise_level: tuple[int, ...]  # one level, or the levels of an ensemble
    scale: float  # s for classifier guidance, W for classifier-free guidance, unused without guidance
    guidance: str = "classifier"
    levers: tuple[tuple[str, Any], ...] = ()  # (flag, value) of each --grid lever, in --grid's order
    varied: tuple[str, ...] = ()  # the levers with more than one value: they name the setting

    @property
    def name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.checkpoint))[0]
        letter = SCALE_NAMES.get(self.guidance)
        name = f"{stem}_L{self.levels}" + (f"_{letter}{self.scale:g}" if letter else "")
        return name + "".join(f"_{lever}-{lever_text(value)}" for lever, value in self.levers if lever in self.varied)

    @property
    def levels(self) -> str:
        return "+".join(map(str, self.noise_level))


def lever_text(value: Any) -> str:
    """A lever's value in a setting's name and tune.csv: numbers as short as they read (1.0 is 1)."""
    return f"{value:g}" if isinstance(value, float) else flag_text(value)


def grid_levers(cfg: TuneConfig) -> tuple[tuple[str, tuple], ...]:
    """``--grid``'s levers, ``((flag, (value, ...)), ...)``, each value typed as classifier_sample_known.py
    parses it. A lever must be an on/off, choice or number flag of that script that changes its results,
    is not a checkpoint's network flag and is not tuned by tune.py's own flags; anything else is a
    :class:`UserError` naming the item."""
    flags = declared_flags(SampleConfig)
    own, own_defaults = flag_dict(cfg), flag_dict(config_defaults(TuneConfig))
    levers: dict[str, tuple] = {}
    for item in cfg.tune.grid:
        name, sep, text = item.partition("=")
        where = f"--grid {item}"
        if not sep or not name or not text:
            raise UserError(f"{where}: expected NAME=V1,V2,... (a flag of classifier_sample_known.py and its values)")
        if name in GRID_ELSEWHERE:
            raise UserError(f"{where}: --{name} is tuned by {GRID_ELSEWHERE[name]}")
        if name not in flags:
            raise UserError(f"{where}: classifier_sample_known.py has no flag --{name}")
        f = flags[name]
        if name in NOT_SETTINGS:
            raise UserError(f"{where}: --{name} does not change the translation ({NOT_SETTINGS[name]})")
        if name in UNET_FLAGS or name in CLASSIFIER_FLAGS:
            raise UserError(f"{where}: --{name} is fixed by the checkpoints (the network they hold), not a lever")
        if f.nargs or not (f.choices or f.type in (str2bool, int, float)):
            raise UserError(f"{where}: --{name} is not an on/off, choice or number flag")
        if name in levers:
            raise UserError(f"{where}: --{name} is in --grid twice; give all its values in one item")
        if name in own and own[name] != own_defaults[name]:
            raise UserError(f"{where}: --{name} {flag_text(own[name])} is given too; give its values in --grid only")
        values = tuple(coerce_flags(SampleConfig, {name: word}, where)[name] for word in text.split(","))
        if len(set(values)) < len(values):
            raise UserError(f"{where}: a value is given twice")
        bad = [lever_text(v) for v in values if not all(c.isalnum() or c in "._+-" for c in lever_text(v))]
        if bad:
            raise UserError(f"{where}: {bad[0]!r} cannot name a folder (letters, digits and . _ + - only)")
        levers[name] = values
    return tuple(levers.items())


def grid(cfg: TuneConfig) -> list[Setting]:
    """Every (checkpoint, L, scale, levers) of the flags, in this order (the last lever varying fastest);
    the scales are those of the guidance in use. Two settings of one folder name are an error."""
    t, guidance = cfg.tune, cfg.sampling.guidance
    scales = {"classifier": t.classifier_scales, "cfg": t.guidance_scales, "none": (0.0,)}[guidance]
    if not cfg.translation.model_path:
        raise UserError("--model_path: required (one or more diffusion model checkpoints to compare)")
    levers = grid_levers(cfg)
    varied = tuple(name for name, values in levers if len(values) > 1)
    combinations = [tuple(zip([name for name, _ in levers], values))
                    for values in itertools.product(*(values for _, values in levers))]
    settings = [Setting(path, level, scale, guidance, combination, varied) for path in cfg.translation.model_path
                for level in t.noise_levels for scale in scales for combination in combinations]
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--model_path, --noise_levels and the scales: two settings would share the folder "
                        f"{twice[0]} (checkpoints of one file name, or scales equal to 6 digits); give each once")
    return settings


def setting_config(cfg: TuneConfig, setting: Setting, folder: str) -> SampleConfig:
    """classifier_sample_known.py's config for one setting, translating into ``folder``."""
    sampling = {"noise_level": setting.noise_level}
    if cfg.sampling.guidance in SCALE_FLAGS:
        sampling[SCALE_FLAGS[cfg.sampling.guidance]] = setting.scale
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SampleConfig)}
    fields["sampling"] = dataclasses.replace(cfg.sampling, **sampling)
    fields["evaluation"] = dataclasses.replace(cfg.evaluation, threshold=validation_scoring(cfg).threshold)
    fields["translation"] = dataclasses.replace(cfg.translation, model_path=(setting.checkpoint,), output_dir=folder)
    return replace_flags(SampleConfig(**fields), dict(setting.levers))


def translation_key(config: SampleConfig) -> str:
    """What the translation of ``config`` depends on: its result settings but the map levers (and the
    output folder), as text; two configs of one key differ at most in how the maps are made."""
    settings = {k: v for k, v in result_settings(config).items() if k not in MAP_FLAGS}
    return json.dumps(settings, sort_keys=True, default=str)


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


def applied_evaluation(cfg: TuneConfig, val_folder: str) -> EvaluationFlags:
    """The evaluation flags that score the test translation as the validation was scored: the
    threshold chosen on the validation folder (``--threshold val --val_dir``) or the same rule."""
    e = cfg.evaluation
    if e.threshold == "val":
        return dataclasses.replace(e, val_dir=val_folder)
    rule = validation_scoring(cfg).rule
    return dataclasses.replace(e, threshold=e.threshold if rule == "fixed" else rule)  # a number stays that number


def applied_config(cfg: TuneConfig, setting: Setting, val_folder: str, test_dir: str = TEST_DIR,
                test_labels: str = TEST_LABELS, output_dir: str = TEST_OUTPUT_DIR) -> SampleConfig:
    """classifier_sample_known.py's config that applies ``setting`` to the test set: the tuning run's
    flags but the tuning-only ones, the evaluation of the validation, the test folders."""
    sample = setting_config(cfg, setting, output_dir)
    defaults = config_defaults(SampleConfig)
    run = dataclasses.replace(sample.run, progress=defaults.run.progress, log_dir="")
    translation = dataclasses.replace(sample.translation, num_samples=defaults.translation.num_samples)
    data = dataclasses.replace(sample.data, data_dir=test_dir, label_dir=test_labels)
    return dataclasses.replace(sample, run=run, translation=translation, data=data,
                               evaluation=applied_evaluation(cfg, val_folder))


def applied_flags(config: SampleConfig, levers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The test translation's flags as data (best.json's ``flags``): what differs from the script's
    defaults, and the chosen setting (L, the scale, the sampler, the ``levers`` tuned) even where it is
    a default (so the record keeps its meaning)."""
    values = flag_dict(config)
    defaults = flag_dict(config_defaults(SampleConfig))
    chosen = {"noise_level", "use_ddim", "guidance", SCALE_FLAGS.get(config.sampling.guidance), *levers}
    return {k: v for k, v in values.items() if k not in FOLDERS and (k in chosen or v != defaults[k])}


def _translate_command(config: SampleConfig, levers: tuple[str, ...] = ()) -> str:
    """The classifier_sample_known.py line of a test config (placeholders for the folders)."""
    flags = applied_flags(config, levers)  # the chosen setting written even at its default
    argv = ["--data_dir", TEST_DIR, "--label_dir", TEST_LABELS, "--output_dir", TEST_OUTPUT_DIR,
            *to_argv(from_dict(SampleConfig, flags), given=flags)]
    return shlex.join(["python", "scripts/classifier_sample_known.py", *argv])


def _evaluate_command(config: SampleConfig) -> str:
    """The evaluate.py line that scores the test translation as the validation was scored."""
    e = config.evaluation
    words = ["python", "scripts/evaluate.py", TEST_OUTPUT_DIR, "--protocol", e.protocol, "--threshold", e.threshold]
    if e.threshold == "val":
        words += ["--val_dir", e.val_dir]
    words += [f"--{k}={v}" for k, v in (("brain_mask", e.brain_mask), ("median", e.median),
                                          ("min_component", e.min_component)) if v]
    return shlex.join(words)


def read_best(out: str) -> dict:
    """``<out>/best.json`` of a finished tuning run."""
    path = os.path.join(out, BEST_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run tune.py --out {out} first") from None


def best_row(rows: list[dict]) -> dict:
    """The row of the highest mean Dice (``dice_mean``); of equals, the first in the grid's order
    (checkpoints as given, then L, then the scale, then the levers), so a tie never depends on how the
    rows sort."""
    return max(rows, key=lambda r: (r["dice_mean"], -rows.index(r)))


def tune(cfg: TuneConfig, monitor=None) -> dict:
    """Translate and score the validation folder for every setting; write tune.csv and best.json;
    with ``--test_dir``, translate and score the test folder with the chosen setting (``"test"``
    of the returned record holds its summary)."""
    settings = grid(cfg)
    t = cfg.tune
    if t.test_dir and not t.test_output_dir:
        raise UserError(f"--test_dir {t.test_dir}: needs --test_output_dir (where its translation goes)")
    if (t.test_label_dir or t.test_output_dir) and not t.test_dir:
        raise UserError("--test_label_dir and --test_output_dir: need --test_dir (the test folder to translate)")
    out = cfg.output.out
    rows = []
    translated: dict[str, str] = {}  # translation_key -> the folder of its first single-level translation
    for i, setting in enumerate(settings):
        folder = os.path.join(out, setting.name)
        config = setting_config(cfg, setting, folder)
        key = translation_key(config)
        if key in translated:  # only the map levers differ from an earlier setting: make its maps again
            logger.log(f"setting {i + 1} of {len(settings)}: {setting.name} (maps of {translated[key]})")
            summary = remap_translation(config, translated[key])
        else:
            logger.log(f"setting {i + 1} of {len(settings)}: {setting.name}")
            summary = run_translation(config, monitor=monitor)  # scored as validation
            if len(setting.noise_level) == 1:  # an ensemble keeps only its members' mean healthy image
                translated[key] = folder
        if summary is None:  # not rank 0
            continue
        rows.append({"setting": setting.name, "checkpoint": setting.checkpoint, "noise_level": setting.levels,
                     "scale": setting.scale, **{lever: lever_text(value) for lever, value in setting.levers
                                                if lever in setting.varied},
                     "folder": folder, **_flatten(summary)})
    if not dist_util.is_main_process():
        return {}
    scored = [r for r in rows if r.get("dice_mean") is not None]
    if not scored:
        raise UserError(f"--data_dir {cfg.data.data_dir}: no setting could be scored by Dice (does the "
                        "validation folder hold ground truth?)")
    best = best_row(scored)
    choice = next(s for s in settings if s.name == best["setting"])
    test = applied_config(cfg, choice, best["folder"])
    levers = tuple(name for name, _ in choice.levers)
    record = {"setting": best["setting"], "checkpoint": choice.checkpoint, "noise_level": choice.noise_level,
              "scale": choice.scale, "scale_name": SCALE_NAMES.get(cfg.sampling.guidance),
              "guidance": cfg.sampling.guidance, "levers": dict(choice.levers), "dice": best["dice_mean"],
              "threshold_rule": best.get("threshold_rule"), "threshold": best.get("threshold"),
              "validation_folder": best["folder"], "scores": best, "flags": applied_flags(test, levers),
              "translate": _translate_command(test, levers), "evaluate": _evaluate_command(test)}
    columns = list(dict.fromkeys(k for r in rows for k in r))  # a column any setting's summary has
    table = csv_text(columns, [{c: r.get(c) for c in columns} for r in rows],
                     cell=lambda value: "" if value is None else str(value))
    with atomic_write(os.path.join(out, TUNE_CSV), "w") as f:
        f.write(table)
    with atomic_write(os.path.join(out, BEST_JSON), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    write_tune_report(out, rows, record, SCALE_NAMES.get(cfg.sampling.guidance) or "scale",
                      levers=settings[0].varied)
    if t.test_dir:
        record = {**record, "test": apply_best(record, t.test_dir, t.test_label_dir, t.test_output_dir,
                                               cfg.run.log_dir, monitor)}
    return record


def apply_best(best: dict, test_dir: str, test_label_dir: str, output_dir: str, log_dir: str = "",
               monitor=None) -> dict | None:
    """Translate ``test_dir`` with best.json's setting (its ``flags``) into ``output_dir``, scored as
    the validation was: the summary (on rank 0), the numbers evaluate.py prints for that folder."""
    flags = {**best["flags"], "data_dir": test_dir, "label_dir": test_label_dir, "output_dir": output_dir,
             "log_dir": log_dir}
    logger.log(f"test: {best['setting']} on {test_dir}")
    return run_translation(from_dict(SampleConfig, flags, f"{BEST_JSON} flags"), monitor=monitor)

