"""A state dict against the network it should fit, and the flags its tensor shapes tell.

Loading a checkpoint into a network built from the flags checks every key and shape first; a
file that does not fit is a :class:`~guided_diffusion.util.checkpoint.CheckpointError` naming the
file and, for guided diffusion's UNetModel and EncoderUNetModel (:mod:`guided_diffusion.unet`),
the flags the file was made with (read back from its tensor shapes: widths, levels, residual
blocks, attention, pooling, input channels and so the data set). The same readers tell a
translation the flags of a checkpoint that carries no saved flags
(:func:`guided_diffusion.pipeline.networks.complete_from_checkpoints`).
"""
from __future__ import annotations

import math

import torch as th

from .script_util import DATASET_CHANNELS
from .util.checkpoint import CheckpointError, load

def load_state_dict_into(module: th.nn.Module, path: str, what: str = "model") -> None:
    """Load a state-dict file into ``module`` with ``strict=True`` (see :func:`apply_state_dict`)."""
    apply_state_dict(module, load(path), path, what)


def apply_state_dict(module: th.nn.Module, state, path: str, what: str = "model", hint: str | None = None) -> None:
    """Check ``state`` against ``module`` (:func:`check_state_dict`) and load it with ``strict=True``."""
    check_state_dict(module, state, path, what, hint=hint)
    module.load_state_dict(state, strict=True)


def check_state_dict(module: th.nn.Module, state, path: str, what: str = "model", hint: str | None = None) -> None:
    """Raise a :class:`CheckpointError` naming the file when ``state`` does not fit ``module``.

    The message names each flag whose value the file's tensor shapes imply and the flags
    contradict (``model.pt: does not fit the diffusion model: made with --num_channels 32
    (flags say 64)``), for the diffusion
    UNet and the classifier; a given ``hint`` wins, and when nothing specific can be read
    from the shapes it lists the mismatching keys and the flags to check.
    """
    if not isinstance(state, dict) or not all(isinstance(v, th.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors for the {what}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return
    if hint is None:
        try:
            specific = _specific_message(module, own, state, what)
        except IndexError:  # tensors of unexpected ranks: the file is no UNet the shapes can be read from
            specific = None
        if specific:
            raise CheckpointError(f"{path}: does not fit the {what}: {specific}")
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} "
                     f"in the file vs {tuple(own[wrong[0]].shape)} from the flags")
    if missing:
        parts.append(f"{len(missing)} keys missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    hint = hint or _flag_hint(wrong, missing, unexpected)
    raise CheckpointError(f"{path}: does not fit the {what} built from the flags: "
                          + "; ".join(parts) + f" ({hint})")


def _flag_hint(wrong, missing, unexpected) -> str:
    """The flags to check when the shapes say nothing more specific."""
    if wrong:
        key = wrong[0]
        if key.startswith("input_blocks.0.0"):
            return "check --dataset (input channels), --num_channels / --classifier_width"
        if key.startswith("out."):
            return "check --learn_sigma (output channels), --dataset, --classifier_pool and --image_size"
        if key.startswith("label_emb"):
            return "check --class_cond"
        return "check --num_channels / --classifier_width / --channel_mult"
    keys = missing + unexpected
    if any(k.startswith("label_emb") for k in keys):
        return "check --class_cond"
    if any(".qkv." in k or ".norm." in k for k in keys):
        return "check --attention_resolutions / --classifier_attention_resolutions"
    return "check --num_res_blocks / --classifier_depth / --channel_mult / --image_size"


# ---------------------------------------------------------------------------------
# Flags read back from the tensor shapes of a UNetModel or EncoderUNetModel state dict
# (key names as guided diffusion's unet.py). Each reader returns {flag: value as typed}
# for what the shapes fix; comparing the file's values with those of the module's own
# state dict names the flags that differ, without building a network.

_DATASET_OF_CHANNELS = {channels: dataset for dataset, channels in DATASET_CHANNELS.items()}


def _specific_message(module: th.nn.Module, own: dict, state: dict, what: str) -> str | None:
    """``made with --flag <file's value> (flags say <value>), ...``, or None when the shapes
    name no flag (another kind of network, or a difference no flag explains)."""
    own_kind, file_kind = _network_kind(own), _network_kind(state)
    if own_kind is None or file_kind is None:
        return None
    if own_kind != file_kind:
        found = "a diffusion UNet (it has output blocks)" if file_kind == "unet" else \
            "a classifier (an encoder without output blocks)"
        return f"it holds {found}: check --model_path and --classifier_path"
    if own_kind == "unet":
        image_size = getattr(module, "image_size", None)
        file_flags, own_flags = _unet_flags(state, image_size), _unet_flags(own, image_size)
    else:
        file_flags, own_flags = _classifier_flag_pair(module, own, state)
    clauses = _differences(file_flags, own_flags)
    return "made with " + ", ".join(clauses) if clauses else None


def _classifier_flag_pair(module: th.nn.Module, own: dict, state: dict) -> tuple[dict, dict]:
    """The classifier flags of the file and of the module, attention levels written as
    resolutions of one image size where either side shows it (an attention pool does)."""
    levels = _encoder_levels(module)
    own_size = getattr(module, "image_size", None) or _pool_image_size(own, levels)
    own_flags = _classifier_flags(own, levels, own_size)
    file_size = _pool_image_size(state, levels) or own_size
    file_flags = _classifier_flags(state, levels, file_size, own_flags.get("channel_mult"))
    if own_size is None and "--image_size" in file_flags:
        own_flags = _classifier_flags(own, levels, int(file_flags["--image_size"]))
    return file_flags, own_flags


def network_kind(state: dict) -> str | None:
    """"unet" (guided diffusion's UNetModel), "classifier" (its EncoderUNetModel) or None (neither)."""
    return _network_kind(state)


def unet_flags(state: dict, image_size: int | None) -> dict:
    """``{"--flag": value as text}`` of what a UNet's state dict fixes (attention levels as
    resolutions of ``image_size``)."""
    return _unet_flags(state, image_size)


def classifier_flags(state: dict, image_size: int | None) -> dict:
    """``{"--flag": value as text}`` of what a classifier's state dict fixes. The number of levels is
    the one count that reads the input blocks as a layout (else only width, pool and data set); an
    attention pool tells the image size, which then places the attention levels."""
    fits = [levels for levels in range(1, 9) if _encoder_layout(state, levels) is not None]
    levels = fits[0] if len(fits) == 1 else 0
    size = _pool_image_size(state, levels) if levels else None
    flags = _classifier_flags(state, levels, size or image_size)
    if "channel_mult" in flags:
        flags["--classifier_channel_mult"] = flags.pop("channel_mult")
    return flags


def _network_kind(state: dict) -> str | None:
    """"unet", "classifier" (the encoder half alone) or None (neither)."""
    if "time_embed.0.weight" not in state or "input_blocks.0.0.weight" not in state:
        return None
    return "unet" if any(k.startswith("output_blocks.") for k in state) else "classifier"


def _differences(file_flags: dict, own_flags: dict) -> list[str]:
    """One ``--flag <file> (flags say <own>)`` clause per flag both sides fix differently."""
    own_flags = {"--p_uncond": "0", **own_flags}  # no "no class" row: trained without dropping labels
    clauses = []
    for flag, value in file_flags.items():
        if flag.startswith("--") and flag in own_flags and own_flags[flag] != value:
            clauses.append(f"{flag} {value} (flags say {own_flags[flag]})")
    # an input channel count that is no data set's: say the count
    if "--dataset" not in file_flags and file_flags["input channels"] != own_flags["input channels"]:
        clauses.append(f"{file_flags['input channels']} input channels (flags say {own_flags['input channels']})")
    return clauses


def _input_flags(state: dict) -> dict:
    """Width and data set: the first convolution is (width * channel_mult[0], C, 3, 3), and the
    time embedding's first layer (4 * width, width) gives the width itself."""
    channels = state["input_blocks.0.0.weight"].shape[1]
    flags = {"width": str(state["time_embed.0.weight"].shape[1]), "input channels": str(channels)}
    if channels in _DATASET_OF_CHANNELS:
        flags["--dataset"] = _DATASET_OF_CHANNELS[channels]
    return flags


def _unet_flags(state: dict, image_size: int | None) -> dict:
    """The diffusion UNet's flags that its state dict fixes."""
    base = _input_flags(state)
    flags = {"--num_channels": base.pop("width"), **base}
    channels = int(base["input channels"])
    out = state.get("out.2.weight")
    if out is not None and out.shape[0] in (channels, 2 * channels):  # eps, or eps and the variance
        flags["--learn_sigma"] = str(out.shape[0] == 2 * channels)
    label_rows = state["label_emb.weight"].shape[0] if "label_emb.weight" in state else 0
    flags["--class_cond"] = str(label_rows > 0)
    if label_rows in (2, 3):  # healthy, diseased (and "no class" for classifier-free guidance)
        flags["--p_uncond"] = "> 0" if label_rows == 3 else "0"
    layout = _unet_layout(state)
    if layout is not None:
        flags.update(_layout_flags(layout, int(flags["--num_channels"]), image_size, ""))
        flags["--channel_mult"] = _mult_string(layout, int(flags["--num_channels"]))
    return flags


def _classifier_flags(state: dict, levels: int, image_size: int | None, channel_mult: str | None = None) -> dict:
    """The classifier's flags that its state dict fixes (attention levels written as resolutions
    of ``image_size``). A downsampling block of the encoder can look like a residual block, so
    the blocks are read as ``levels`` levels (the flags' count) and, given the flags'
    ``channel_mult``, only trusted when their widths follow it."""
    base = _input_flags(state)
    width = int(base["width"])
    flags = {"--classifier_width": base.pop("width"), **base}
    pool = _pool_of(state)
    if pool is not None:
        flags["--classifier_pool"] = pool
    layout = _encoder_layout(state, levels)
    if layout is not None and channel_mult not in (None, _mult_string(layout, width)):
        layout = None  # read with the wrong number of levels: its depth would be a guess
    if layout is not None:
        flags["channel_mult"] = _mult_string(layout, width)  # not reported (see above)
        pool_size = _pool_image_size(state, levels)  # an attention pool shows the image size
        if pool_size is not None:
            flags["--image_size"] = str(pool_size)
        flags.update(_layout_flags(layout, width, image_size, "classifier_"))
    return flags


def _layout_flags(layout: dict, width: int, image_size: int | None, prefix: str) -> dict:
    flags = {f"--{prefix}use_scale_shift_norm": str(layout["scale_shift"])}
    flags["--classifier_depth" if prefix else "--num_res_blocks"] = str(layout["res_blocks"])
    flags[f"--{prefix}attention_resolutions"] = _resolutions(layout["attention"], image_size)
    if layout["updown"] is not None:
        flags[f"--{prefix}resblock_updown"] = str(layout["updown"])
    return flags


def _mult_string(layout: dict, width: int) -> str:
    mults = [w / width for w in layout["widths"]]
    return ",".join(str(int(m)) if m == int(m) else str(m) for m in mults)


def _resolutions(levels: set[int], image_size: int | None) -> str:
    """Attention levels as the flag takes them: resolutions image_size / 2^level, largest first."""
    if not levels:
        return '""'
    if image_size is None:  # a classifier without attention pooling does not show its image size
        return ",".join(f"image_size/{2**level}" for level in sorted(levels))
    return ",".join(str(image_size // 2**level) for level in sorted(levels))


def _blocks(state: dict, prefix: str) -> list[dict[int, dict[str, tuple]]] | None:
    """``[{layer: {rest of key: shape}}]`` of the keys ``<prefix>.<block>.<layer>.<rest>``."""
    tree: dict[int, dict[int, dict[str, tuple]]] = {}
    for key, value in state.items():
        parts = key.split(".", 3)
        if len(parts) == 4 and parts[0] == prefix and parts[1].isdigit() and parts[2].isdigit():
            tree.setdefault(int(parts[1]), {}).setdefault(int(parts[2]), {})[parts[3]] = tuple(value.shape)
    if sorted(tree) != list(range(len(tree))):
        return None
    return [tree[i] for i in range(len(tree))]


def _is_res(layer: dict) -> bool:
    return "out_layers.3.weight" in layer and "emb_layers.1.weight" in layer


def _is_attention(layer: dict) -> bool:
    return "qkv.weight" in layer


def _res_width(layer: dict) -> int:
    return layer["out_layers.3.weight"][0]


def _scale_shift(layer: dict) -> bool:
    """``use_scale_shift_norm``: the embedding projects to scale and shift, twice the width."""
    return layer["emb_layers.1.weight"][0] == 2 * _res_width(layer)


def _unet_layout(state: dict) -> dict | None:
    """Levels, residual blocks per level and attention levels from the decoder, which is
    unambiguous: each level has num_res_blocks + 1 blocks, and every level but the top one ends
    in an upsampling layer (a convolution, or a residual block with ``--resblock_updown``)."""
    out = _blocks(state, "output_blocks")
    if not out or any(0 not in block or not _is_res(block[0]) for block in out):
        return None
    ups = [j for j, block in enumerate(out) if _upsampling_layers(block)]
    per_level = ups[0] + 1 if ups else len(out)
    levels, rest = divmod(len(out), per_level)
    if rest or ups != [level * per_level + per_level - 1 for level in range(levels - 1)]:
        return None
    widths: list[int | None] = [None] * levels
    attention = set()
    for j, block in enumerate(out):
        level = levels - 1 - j // per_level  # the decoder runs from the deepest level up
        if widths[level] not in (None, _res_width(block[0])):
            return None
        widths[level] = _res_width(block[0])
        if any(_is_attention(layer) for layer in block.values()):
            attention.add(level)
    updown = any(_is_res(layer) for layer in _upsampling_layers(out[ups[0]])) if ups else None
    return {"res_blocks": per_level - 1, "widths": widths, "attention": attention, "updown": updown,
            "scale_shift": _scale_shift(out[0][0])}


def _upsampling_layers(block: dict) -> list[dict]:
    """The layers after a decoder block's residual block that are not attention."""
    return [layer for k, layer in block.items() if k > 0 and not _is_attention(layer)]


def _encoder_layout(state: dict, levels: int) -> dict | None:
    """The classifier's layout if its input blocks fit ``levels`` levels: each level has
    classifier_depth residual blocks (with attention at attention levels), every level but the
    last then a downsampling block (a strided convolution, or a residual block with
    ``--classifier_resblock_updown``)."""
    blocks = _blocks(state, "input_blocks")
    if blocks is None or levels < 1:
        return None
    blocks = blocks[1:]  # block 0 is the first convolution
    per_level, rest = divmod(len(blocks) + 1, levels)
    if rest or per_level < 2:
        return None
    widths: list[int | None] = [None] * levels
    attention, downs = set(), []
    for i, block in enumerate(blocks):
        level, position = divmod(i, per_level)
        first = block.get(0, {})
        if position == per_level - 1:  # the level's downsampling block keeps the level's width
            if len(block) != 1 or _down_width(first) in (None, 0) or _down_width(first) != widths[level]:
                return None
            downs.append(_is_res(first))
            continue
        if not _is_res(first) or len(block) > 2 or (len(block) == 2 and not _is_attention(block.get(1, {}))):
            return None
        if widths[level] not in (None, _res_width(first)):
            return None
        widths[level] = _res_width(first)
        if len(block) == 2:
            attention.add(level)
    updown = downs[0] if downs and len(set(downs)) == 1 else None
    return {"res_blocks": per_level - 1, "widths": widths, "attention": attention, "updown": updown,
            "scale_shift": _scale_shift(blocks[0][0])}


def _down_width(layer: dict) -> int | None:
    """Width of a downsampling layer (a strided convolution ``op`` or a residual block, both
    width -> width), 0 for a layer that changes the width, None for another layer."""
    if "op.weight" in layer:
        shape = layer["op.weight"]
    elif _is_res(layer) and "in_layers.2.weight" in layer:
        shape = layer["in_layers.2.weight"]
    else:
        return None
    return shape[0] if shape[0] == shape[1] else 0


def _encoder_levels(module: th.nn.Module) -> int:
    """Levels of the module's encoder: one more than its downsampling blocks (a strided
    convolution ``op``, or a residual block made with ``down=True``)."""
    downs = 0
    for block in getattr(module, "input_blocks", []):
        first = block[0]
        if hasattr(first, "op") or getattr(first, "updown", False):
            downs += 1
    return downs + 1


def _pool_of(state: dict) -> str | None:
    """``--classifier_pool`` from the head's keys (see EncoderUNetModel)."""
    if "out.2.positional_embedding" in state:
        return "attention"
    if "out.3.weight" in state:
        return "adaptive" if state["out.3.weight"].ndim == 4 else "spatial_v2"
    if "out.2.weight" in state and state["out.2.weight"].ndim == 2:
        return "spatial"
    return None


def _pool_image_size(state: dict, levels: int) -> int | None:
    """The image size an attention pool was made for: its positional embedding covers the
    (image_size / 2^(levels-1))^2 positions of the last level plus the mean token."""
    embedding = state.get("out.2.positional_embedding")
    if embedding is None:
        return None
    side = math.isqrt(embedding.shape[1] - 1)
    return side * 2 ** (levels - 1)
