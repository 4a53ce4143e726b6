"""Every network built from its typed config, and loaded from its checkpoint.

The UNet and the classifier come from guided diffusion's factories (:mod:`script_util`); each baseline's
networks are built in its method's module (:mod:`.methods`) with :func:`load_weights` and the checkpoint
machinery here. A checkpoint that does not fit the flags is an error naming the file and the flags that
shape the network.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch as th

from ..script_util import (
    _attention_ds,
    _channel_mult,
    create_classifier_and_diffusion,
    create_model_and_diffusion,
)
from ..unet_forensics import apply_state_dict, classifier_flags, network_kind, unet_flags
from ..util import checkpoint as ckpt
from ..util.errors import UserError
from ..util.flags import (
    ClassifierFlags,
    DataFlags,
    DiffusionFlags,
    ModelFlags,
    NoiseFlags,
)
from ..util.flagspec import coerce_flags, flag_dict, flag_text, from_dict

def _shape(data: DataFlags) -> dict:
    return {"image_size": data.image_size, "dataset": data.dataset}


def create_unet_and_diffusion(data: DataFlags, model: ModelFlags, diffusion: DiffusionFlags,
                              uncond_label: bool = False):
    """(UNetModel, SpacedDiffusion) of the flags; ``uncond_label``: with classifier-free guidance's extra
    "no class" label."""
    check_unet_flags(data, model)
    return create_model_and_diffusion(**_shape(data), **dataclasses.asdict(model), **dataclasses.asdict(diffusion),
                                      uncond_label=uncond_label)


def create_classifier_net(data: DataFlags, classifier: ClassifierFlags, diffusion: DiffusionFlags):
    """(EncoderUNetModel, SpacedDiffusion) of the flags."""
    check_classifier_flags(data, classifier)
    return create_classifier_and_diffusion(**_shape(data), **dataclasses.asdict(classifier),
                                           **dataclasses.asdict(diffusion))


def load_weights(net: th.nn.Module, path: str, flag: str, what: str, hint: str | None = None,
                 check: Callable[[str, dict], None] | None = None) -> th.nn.Module:
    """Load the state dict at ``path`` (the value of ``flag``) into ``net`` with ``strict=True``;
    ``check(path, state)`` may first refuse the file with a message of its own."""
    if not path:
        raise UserError(f"{flag}: required (a {what} checkpoint, e.g. model010000.pt)")
    state = ckpt.load(path)
    if check is not None:
        check(path, state)
    apply_state_dict(net, state, path, what, hint=hint)
    return net


# -------------------------------------------------------------------------------- flags that cannot build a network

_GROUPS = 32  # GroupNorm's groups (nn.normalization): every width must be a multiple


def _levels(data: DataFlags, channel_mult: str, width: int, mult_flag: str, width_flag: str) -> list[int]:
    """The width of each level; a width that GroupNorm cannot split is a :class:`UserError`."""
    widths = [int(m * width) for m in _channel_mult(channel_mult, data.image_size, mult_flag)]
    bad = sorted({w for w in widths if w <= 0 or w % _GROUPS})
    if bad:
        mult = f" and {mult_flag} {channel_mult}" if channel_mult else ""
        raise UserError(f"{width_flag} {width}{mult}: level widths {', '.join(map(str, bad))} are not multiples of "
                        f"{_GROUPS} (GroupNorm's {_GROUPS} groups); use a {width_flag} that is a multiple of {_GROUPS}")
    side = data.image_size
    if side % 2 ** (len(widths) - 1):
        raise UserError(f"--image_size {side}: {len(widths)} levels ({mult_flag} {channel_mult or 'default'}) halve it "
                        f"{len(widths) - 1} times; expected a multiple of {2 ** (len(widths) - 1)}")
    return widths


def _attention_widths(widths: list[int], resolutions: str, image_size: int, flag: str) -> list[int]:
    ds = _attention_ds(resolutions, image_size, flag)
    return [w for level, w in enumerate(widths) if 2 ** level in ds]


def check_unet_flags(data: DataFlags, model: ModelFlags) -> None:
    """A one-line :class:`UserError` naming the flags when the model flags cannot build a UNet."""
    widths = _levels(data, model.channel_mult, model.num_channels, "--channel_mult", "--num_channels")
    attention = _attention_widths(widths, model.attention_resolutions, data.image_size, "--attention_resolutions")
    if model.num_head_channels != -1:
        heads = [("--num_head_channels", model.num_head_channels, "channels per head")]
    else:
        heads = [("--num_heads", model.num_heads, "heads"),
                 ("--num_heads_upsample", model.num_heads_upsample, "heads")]
    for flag, n, what in heads:
        if n == -1 and flag == "--num_heads_upsample":
            continue
        bad = sorted({w for w in attention if n <= 0 or w % n})
        if bad:
            raise UserError(f"{flag} {n}: the attention levels (--attention_resolutions {model.attention_resolutions}) "
                            f"have {', '.join(map(str, bad))} channels, which do not split into {n} {what}")


def check_classifier_flags(data: DataFlags, classifier: ClassifierFlags) -> None:
    """A one-line :class:`UserError` naming the flags when the classifier flags cannot build a classifier."""
    widths = _levels(data, classifier.classifier_channel_mult, classifier.classifier_width,
                     "--classifier_channel_mult", "--classifier_width")
    attention = _attention_widths(widths, classifier.classifier_attention_resolutions, data.image_size,
                                  "--classifier_attention_resolutions")
    if classifier.classifier_pool == "attention":
        attention.append(widths[-1])  # the attention pool's heads split the last level
    n = classifier.classifier_num_head_channels
    bad = sorted({w for w in attention if n <= 0 or w % n})
    if bad:
        raise UserError(f"--classifier_num_head_channels {n}: the classifier's attention (--classifier_attention_"
                        f"resolutions {classifier.classifier_attention_resolutions}, --classifier_pool "
                        f"{classifier.classifier_pool}) has levels of {', '.join(map(str, bad))} channels, which do "
                        f"not split into heads of {n}")


# -------------------------------------------------------------------------------- the flags a checkpoint carries


def flag_names(group, *leave_out: str) -> tuple[str, ...]:
    """The names of a flag group's flags, but ``leave_out``."""
    return tuple(f.name for f in dataclasses.fields(group) if f.name not in leave_out)


SHAPE_FLAGS = ("image_size", "dataset")
"""What every network's checkpoint fixes."""
_DIFFUSION = flag_names(DiffusionFlags, "timestep_respacing")  # respacing is a choice of the sampling, not the network
UNET_NETWORK_FLAGS = SHAPE_FLAGS + flag_names(ModelFlags, "use_fp16", "use_checkpoint")
"""What a UNet's checkpoint fixes (the denoising autoencoder's too)."""
UNET_FLAGS = UNET_NETWORK_FLAGS + _DIFFUSION + flag_names(NoiseFlags)
"""What a diffusion model checkpoint fixes (precision and gradient checkpointing stay the user's choice)."""
CLASSIFIER_FLAGS = SHAPE_FLAGS + flag_names(ClassifierFlags, "classifier_use_fp16")


@dataclass(frozen=True)
class CheckpointFlags:
    """Which flags of a script a checkpoint flag's file fixes, and where they are read: the
    ``flags_<train_script>.json`` that training saved beside it, else (``shapes``: "unet" or
    "classifier") what its tensor shapes tell."""

    path_flag: str  # the flag that names the checkpoint (model_path, classifier_path, resume_checkpoint)
    train_script: str  # whose saved flags lie beside it
    names: tuple[str, ...]  # the flags it fixes
    shapes: str = ""


def flags_file(checkpoint: str, train_script: str) -> str:
    """The one name of the flags a training run saves beside its checkpoints,
    ``<folder>/flags_<train_script>.json``, for ``checkpoint`` (a file, or the run's folder)."""
    folder = checkpoint if os.path.isdir(checkpoint) or not os.path.splitext(checkpoint)[1] else \
        os.path.dirname(checkpoint) or "."
    return os.path.join(folder, f"flags_{train_script}.json")


def _saved_flags(config_cls, path: str, names: list[str]) -> dict[str, Any] | None:
    """The ``names`` a saved flags file holds, typed as ``config_cls`` takes them; None without the file."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable saved flags ({err})") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: expected a JSON object of flags")
    return coerce_flags(config_cls, {k: saved[k] for k in names if k in saved}, path)


def _shape_flags(config_cls, cfg, path: str, kind: str, names: list[str]) -> dict[str, Any]:
    """What the tensor shapes of the checkpoint at ``path`` tell of ``names`` (attention levels read
    at the config's --image_size); nothing for a file that is not a network of ``kind``."""
    state = ckpt.load(path)
    if not isinstance(state, dict) or network_kind(state) != kind:
        return {}  # loading names what the file is
    image_size = cfg.data.image_size
    if kind == "unet":
        found = unet_flags(state, image_size)
    else:
        found = classifier_flags(state, image_size)
    text = {k[2:]: v for k, v in found.items() if k.startswith("--") and k[2:] in names}
    text = {k: "" if v == '""' else v for k, v in text.items() if "image_size/" not in v}
    return coerce_flags(config_cls, text, f"{path} (its tensor shapes)")


def _same(name: str, a: Any, b: Any, image_size: int) -> bool:
    """Two values of one flag that build the same network (``16,8`` and ``8,16``; a default multiplier)."""
    if name.endswith("attention_resolutions"):
        return sorted(_attention_ds(a, image_size, name)) == sorted(_attention_ds(b, image_size, name))
    if name.endswith("channel_mult"):
        try:
            return _channel_mult(a, image_size, name) == _channel_mult(b, image_size, name)
        except UserError:
            return a == b
    return a == b


def _paths(cfg, path_flag: str) -> list[str]:
    values = flag_dict(cfg)
    value = values.get(path_flag, "")
    paths = [p for p in (value if isinstance(value, tuple) else (value,)) if p]
    if path_flag == "resume_checkpoint" and paths == ["auto"]:
        log_dir = values.get("log_dir") or os.environ.get("OPENAI_LOGDIR", "")
        return [log_dir] if log_dir else []
    return paths


def complete_from_checkpoints(cfg, given: frozenset[str] | set[str]):
    """``cfg`` with every flag of its checkpoints (``type(cfg).CHECKPOINTS``, a tuple of
    :class:`CheckpointFlags`) that the command line did not give (``given``) taken from the
    checkpoint; a given flag that contradicts a checkpoint, or two checkpoints that disagree, is
    one :class:`UserError` listing every contradiction with the value the file needs."""
    config_cls = type(cfg)
    values = flag_dict(cfg)
    known: dict[str, tuple[Any, str]] = {}  # flag -> (value, where it was read)
    wrong: dict[str, tuple[Any, list[str]]] = {}  # given flag -> (the value the files need, the files)
    problems: list[str] = []
    image_size = values.get("image_size", 0)
    for spec in getattr(config_cls, "CHECKPOINTS", ()):
        names = [n for n in spec.names if n in values]
        for path in _paths(cfg, spec.path_flag):
            saved_path = flags_file(path, spec.train_script)
            found = _saved_flags(config_cls, saved_path, names)
            where = saved_path
            if found is None:
                if not spec.shapes or not os.path.isfile(path):
                    continue
                found, where = _shape_flags(config_cls, cfg, path, spec.shapes, names), f"the tensor shapes of {path}"
            size = found.get("image_size", image_size)
            for name, value in found.items():
                other = known.get(name)
                if other is not None and not _same(name, other[0], value, size):
                    problems.append(f"--{name}: {other[1]} says {flag_text(other[0])}, {where} says "
                                    f"{flag_text(value)} (give checkpoints that agree)")
                    continue
                known.setdefault(name, (value, where))
                if name in given and not _same(name, values[name], value, size):
                    wrong.setdefault(name, (value, []))[1].append(where)
    problems = [_contradiction(name, values[name], needed, files, image_size)
                for name, (needed, files) in wrong.items()] + problems
    if problems:
        raise UserError(f"{len(problems)} flag(s) contradict the checkpoints: " + "; ".join(problems))
    values.update({name: value for name, (value, _) in known.items() if name not in given})
    done = from_dict(config_cls, values, "flags")
    if values.get("image_size", image_size) != image_size and any(w.startswith("the tensor shapes") for _, w in
                                                                   known.values()):
        # shapes were read at the old --image_size (attention levels as resolutions): read them again
        return complete_from_checkpoints(done, given)
    return done


def _contradiction(name: str, given: Any, needed: Any, files: list[str], image_size: int) -> str:
    where = " and ".join(files)
    if name == "image_size":
        return (f"--image_size {given} differs from the checkpoint's image size: the network was trained on "
                f"{needed} x {needed} images ({where}); give --image_size {needed} or leave it out")
    text = f"--{name} {flag_text(given)}: the checkpoint needs --{name} {flag_text(needed)} ({where})"
    if name.endswith("attention_resolutions") and any(w.startswith("the tensor shapes") for w in files):
        text += (f" (the shapes show attention levels, read as resolutions of --image_size {image_size}: "
                 "if the image size is what differs, give the checkpoint's --image_size)")
    return text
