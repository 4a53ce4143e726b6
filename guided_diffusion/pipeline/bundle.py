"""Model bundles: everything needed to apply a trained model, in one folder that can be shared.

``export_bundle`` writes (scripts/export_bundle.py)::

    BUNDLE/model.pt         the translating network's weights, byte for byte (EMA or raw: bundle.json says)
    BUNDLE/classifier.pt    the classifier (classifier guidance only)
    BUNDLE/bundle.json      the method and its settings, every flag of the translation script, the
                            preprocessing, the threshold with the rule that chose it and the validation
                            scores, and the SHA-256 of every other file

from tune.py's choice (``--tune_dir``: its best.json and the validation translation's summary.json,
which holds every flag of that translation) or from a translation script's flags with ``--threshold T``
(or ``otsu``). ``load_bundle`` checks every hash before anything is read and rebuilds the translation
script's config; checkpoints load with ``torch.load(weights_only=True)`` (util.checkpoint). A config
is stored as data, ``flagspec.flag_dict`` (read back with ``flagspec.from_dict``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch as th

from ..datasets.common import CHANNELS
from ..datasets.layout import SPLIT_FILE
from ..datasets.prepare_brats import CLIP_PERCENTILE, RELEASES
from ..evaluation.protocols import fixed_threshold
from ..evaluation.results import read_summary
from ..util import logger
from ..util.checkpoint import parse_checkpoint_name
from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write, sha256_of, staged_folder
from ..util.flags import BundleFlags, OutputFlags, PrepareBratsFlags, SpeedFlags
from ..util.flagspec import config_defaults, flag_dict, from_dict, parse_command, parse_known_flags, part
from .networks import complete_from_checkpoints
from .methods import METHODS, Command
from .methods.diffusion import SampleConfig
from .translate import Translator
from .translators import Levers
from .tune import MAP_FLAGS, SCALE_FLAGS, read_best

BUNDLE_JSON = "bundle.json"
FORMAT = 1
MODEL_FILE = "model.pt"
CLASSIFIER_FILE = "classifier.pt"
PADDING = "zero-padded evenly to image_size x image_size (an odd difference puts the extra pixel after)"
BY_SCRIPT: dict[str, Command] = {m.translation: m.commands[m.translation] for m in METHODS.values()}
"""The methods' translation commands by their script's name (bundle.json's ``method.script``): what a bundle
can hold. Several methods share one (the diffusion family's classifier_sample_known); its flags say which."""
# flags that name this machine's folders: not part of a bundle
_LOCAL_FLAGS = ("data_dir", "label_dir", "output_dir", "log_dir", "val_dir")


@dataclass(frozen=True)
class ExportBundleConfig:
    """scripts/export_bundle.py (the flags of ``--method``'s script follow, without ``--tune_dir``)"""

    bundle: BundleFlags
    output: OutputFlags
    preprocessing: PrepareBratsFlags = part("normalise", "slice_range")
    SCRIPT: ClassVar[str] = "export_bundle"


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle: its folder, its record (bundle.json) and the translation config."""

    folder: str
    record: dict
    config: Any  # the translation script's config, checkpoints pointing into ``folder``

    @property
    def script(self) -> str:
        return self.record["method"]["script"]

    @property
    def slice_range(self) -> tuple[int, int]:
        first, last = self.record["preprocessing"]["slice_range"]
        return int(first), int(last)

    def build_translator(self, device: th.device, speed: SpeedFlags | None = None) -> Translator:
        """The bundle's translator on ``device`` (``speed``: --precision, --compile and
        --channels_last of the caller, for the translators that take them)."""
        cfg = self.config
        if speed is not None and hasattr(cfg, "speed"):
            cfg = dataclasses.replace(cfg, speed=speed)
        return BY_SCRIPT[self.script].translator(cfg, device)


# ------------------------------------------------------------------------------------------ export


def translation_config(script: str, argv: Sequence[str]):
    """The config of translation script ``script`` from the user's flags ``argv``, the network and
    diffusion flags not given taken from the checkpoints (as the translation script itself does)."""
    config_cls = BY_SCRIPT[script].config
    cfg, given = parse_command(config_cls, list(argv), prog=f"export_bundle.py --method {script}")
    return complete_from_checkpoints(cfg, given)


def parse_export(argv: Sequence[str] | None, doc: str = ""):
    """export_bundle.py's flags: (its own config, the rest of the command line)."""
    return parse_known_flags(ExportBundleConfig, argv, doc, prog="export_bundle.py")


def _weights_entry(path: str, file: str, what: str) -> dict:
    if not path:
        raise UserError(f"{what}: required (the checkpoint to bundle)")
    if not os.path.isfile(path):
        raise MissingInputError(f"{path}: no such file ({what})")
    parsed = parse_checkpoint_name(os.path.basename(path))
    entry: dict[str, Any] = {"file": file, "source": os.path.abspath(path)}
    if parsed is not None:
        prefix, step = parsed
        entry["step"] = step
        if prefix.startswith("ema_"):
            entry.update(weights="ema", ema_rate=prefix[len("ema_"):].rstrip("_"))
        else:
            entry["weights"] = "raw"
    else:
        entry["weights"] = "unknown (not a training checkpoint name)"
    return entry


LEVER_FLAGS = tuple(f.name for f in dataclasses.fields(Levers))
"""The flags of the translation levers (each a field of :class:`.translators.Levers`)."""


def _method_settings(script: str, cfg) -> dict:
    """The method in words and its settings (what a reader of bundle.json looks for first): the map's
    flags that differ from the script's defaults (the paper's map; ``map``) and, for a diffusion
    translation, the levers that are on (``levers``: the scale schedule, AutoDDPM, pDDPM's patches)."""
    settings = _method_name(script, cfg)
    values, defaults = flag_dict(cfg), flag_dict(config_defaults(type(cfg)))
    changed = {name: value for name, value in values.items() if value != defaults[name]}
    settings["map"] = {name: value for name, value in changed.items() if name in MAP_FLAGS}
    if script == SampleConfig.SCRIPT:
        settings["levers"] = {name: value for name, value in changed.items() if name in LEVER_FLAGS}
    return settings


def _method_name(script: str, cfg) -> dict:
    if script == "intensity_translate":
        return {"script": script, "name": f"{cfg.intensity.channel} intensity"}
    if script != SampleConfig.SCRIPT:
        return {"script": script, "name": {"vae_translate": "VAE", "fpgan_translate": "FixedPoint-GAN",
                                           "dae_translate": "DAE"}[script]}
    s = cfg.sampling
    settings = {"script": script, "name": "diffusion translation", "sampler": "DDIM" if s.use_ddim else "DDPM",
                "guidance": s.guidance, "noise_level": list(s.noise_level),
                "timestep_respacing": cfg.diffusion.timestep_respacing or "none",
                "diffusion_steps": cfg.diffusion.diffusion_steps, "noise_type": cfg.noise.noise_type}
    if s.guidance in SCALE_FLAGS:
        settings[SCALE_FLAGS[s.guidance]] = getattr(s, SCALE_FLAGS[s.guidance])
    return settings


def _preprocessing(cfg, export: ExportBundleConfig) -> dict:
    """How raw volumes become network inputs: prepare_brats.py's record (split.json beside the data
    folder) where there is one, else --normalise and --slice_range."""
    p = export.preprocessing
    record = {"normalise": p.normalise, "slice_range": list(p.slice_range), "release": "any"}
    data_dir = cfg.data.data_dir
    for folder in (data_dir, os.path.dirname(os.path.normpath(data_dir))) if data_dir else ():
        path = os.path.join(folder, SPLIT_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                split = json.load(f)
            record.update(normalise=split.get("normalise", p.normalise),
                          slice_range=list(split.get("slice_range", p.slice_range)),
                          release=split.get("release", "any"), from_file=os.path.abspath(path))
            logger.log(f"preprocessing from {path}: {record['normalise']}, slices {record['slice_range']}")
            break
    return {"dataset": cfg.data.dataset, "channels": list(CHANNELS[cfg.data.dataset]),
            "trained_on_release": record.pop("release"),
            "release_naming": {name: {seq: f"<patient>{r.suffixes(seq)[0]}" for seq in r.sequences}
                               for name, r in RELEASES.items()},
            "clip_percentile": CLIP_PERCENTILE if record["normalise"] == "percentile" else None,
            "image_size": cfg.data.image_size, "padding": PADDING, **record}


def _threshold_given(cfg, scores: dict | None) -> dict:
    """--threshold T (a fixed global threshold) or otsu, with the post-processing flags."""
    e = cfg.evaluation
    value = fixed_threshold(e.threshold)
    if value is None and e.threshold != "otsu":
        raise UserError(f"--threshold {e.threshold}: export_bundle.py needs the threshold itself: a number T "
                        "(a pixel is positive above it), or otsu (per slice, the paper's rule)")
    return {"rule": "fixed" if value is not None else "otsu", "value": value,
            "chosen_on": "given on export_bundle.py's command line", "validation_scores": scores}


def _postprocessing(cfg) -> dict:
    e = cfg.evaluation
    return {"brain_mask": e.brain_mask, "median": e.median, "min_component": e.min_component,
            "neighbourhood": "3-D" if e.protocol == "volume" else "2-D"}


def config_from_tune(tune_dir: str) -> tuple[Any, dict]:
    """The translation config tune.py chose (from its validation translation's summary.json) and the
    threshold record (its rule, value and the validation scores)."""
    best = read_best(tune_dir)
    folder = best["validation_folder"]
    if not os.path.isabs(folder) and not os.path.isdir(folder):
        folder = os.path.join(tune_dir, os.path.basename(folder))
    summary = read_summary(folder)
    if "flags" not in summary:
        raise UserError(f"{folder}: summary.json holds no flags; rerun tune.py")
    cfg = from_dict(SampleConfig, summary["flags"], where=os.path.join(folder, "summary.json"))
    rule = best.get("threshold_rule") or "otsu"
    value = best.get("threshold")
    if rule == "best":  # tune.py --threshold val fits "best" on the validation folder: val for the test set
        rule = "val"
    threshold = {"rule": rule, "value": value, "chosen_on": f"the validation translation {os.path.abspath(folder)}",
                 "validation_scores": best.get("scores"), "tune_dir": os.path.abspath(tune_dir),
                 "setting": best.get("setting")}
    return cfg, threshold


def _portable_flags(cfg, files: dict[str, str]) -> dict:
    """The config's flags with the checkpoints named by their file in the bundle and this machine's
    folders left out (empty)."""
    flags = flag_dict(cfg)
    for name in _LOCAL_FLAGS:
        if name in flags:
            flags[name] = ""
    if "model_path" in flags:
        flags["model_path"] = [files["model"]] if "model" in files else []
    if "classifier_path" in flags:
        flags["classifier_path"] = files.get("classifier", "")
    return json.loads(json.dumps(flags, default=str))


def write_bundle(out: str, script: str, cfg, threshold: dict, preprocessing: dict) -> dict:
    """Write the bundle folder ``out`` for translation config ``cfg`` of ``script``; returns bundle.json's record."""
    weights: dict[str, dict] = {}
    if script != "intensity_translate":
        paths = cfg.translation.model_path
        if len(paths) != 1:
            raise UserError(f"--model_path {' '.join(paths) or '(none)'}: expected one checkpoint to bundle")
        weights["model"] = _weights_entry(paths[0], MODEL_FILE, "--model_path")
    if script == SampleConfig.SCRIPT and cfg.sampling.guidance == "classifier":
        weights["classifier"] = _weights_entry(cfg.sampling.classifier_path, CLASSIFIER_FILE, "--classifier_path")
    threshold = {**threshold, "postprocessing": _postprocessing(cfg)}
    record = {
        "format": FORMAT,
        "dataset": cfg.data.dataset,
        "method": _method_settings(script, cfg),
        "weights": weights,
        "flags": _portable_flags(cfg, {k: v["file"] for k, v in weights.items()}),
        "preprocessing": preprocessing,
        "threshold": threshold,
    }
    with staged_folder(out, "--out") as staging:
        for entry in weights.values():
            shutil.copyfile(entry["source"], os.path.join(staging, entry["file"]))
        record["files"] = {entry["file"]: sha256_of(os.path.join(staging, entry["file"])) for entry in weights.values()}
        with atomic_write(os.path.join(staging, BUNDLE_JSON), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
    return record


def export_bundle(export: ExportBundleConfig, rest: Sequence[str]) -> dict:
    """scripts/export_bundle.py: tune.py's choice (``--tune_dir``), or ``--method``'s flags in ``rest``."""
    b = export.bundle
    if b.tune_dir:
        if rest:
            raise UserError(f"{' '.join(rest)}: with --tune_dir the bundle holds tune.py's choice; give no "
                            "translation flags")
        script = SampleConfig.SCRIPT
        cfg, threshold = config_from_tune(b.tune_dir)
    else:
        script = b.method
        cfg = translation_config(script, rest)
        scores = None
        if cfg.translation.output_dir and os.path.isfile(os.path.join(cfg.translation.output_dir, "summary.json")):
            scores = read_summary(cfg.translation.output_dir)
            scores.pop("flags", None)
        threshold = _threshold_given(cfg, scores)
    return write_bundle(export.output.out, script, cfg, threshold, _preprocessing(cfg, export))


# ------------------------------------------------------------------------------------------ loading


def load_bundle(folder: str, flag: str = "--bundle") -> Bundle:
    """Read and check a bundle: bundle.json, then the SHA-256 of every file it lists; the translation
    config comes back with its checkpoints pointing into ``folder``."""
    path = os.path.join(folder, BUNDLE_JSON)
    if not os.path.isdir(folder):
        raise MissingInputError(f"{flag} {folder}: no such folder")
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: not found; {folder} is not a bundle (export_bundle.py --out)") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path}: format {record.get('format') if isinstance(record, dict) else None!r}; expected "
                        f"{FORMAT}")
    for name, digest in sorted(record.get("files", {}).items()):
        file = os.path.join(folder, name)
        if os.path.basename(name) != name or not os.path.isfile(file):
            raise MissingInputError(f"{file}: listed in {path} but missing")
        found = sha256_of(file)
        if found != digest:
            raise UserError(f"{file}: SHA-256 {found} does not match {digest} in {path} (changed or damaged)")
    script = record.get("method", {}).get("script")
    if script not in BY_SCRIPT:
        raise UserError(f"{path}: method script {script!r}; expected one of {', '.join(BY_SCRIPT)}")
    flags = dict(record["flags"])
    if flags.get("model_path"):
        flags["model_path"] = [os.path.join(folder, name) for name in flags["model_path"]]
    if flags.get("classifier_path"):
        flags["classifier_path"] = os.path.join(folder, flags["classifier_path"])
    config = from_dict(BY_SCRIPT[script].config, flags, where=path)
    return Bundle(folder, record, config)
