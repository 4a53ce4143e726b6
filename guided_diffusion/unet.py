"""The denoising UNet and the noise-aware classifier (its encoder half).

Architecture of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image
Synthesis"), as in OpenAI's guided diffusion: residual blocks conditioned on a
sinusoidal timestep embedding (plus a class embedding for class-conditional
models), self-attention at chosen resolutions, skip connections from the
encoder to the decoder. Module names and state-dict keys equal the original's,
so checkpoints of the original load with ``strict=True``.

Shapes: images are (B, C, H, W); timesteps are (B,) integers (or floats when
timesteps are rescaled); class labels are (B,) integers, 0 = healthy.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Iterable, Sequence

import torch as th
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

from .nn import (
    avg_pool_nd,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)
from .util.errors import UserError


def _maybe_checkpoint(fn, args: tuple, enabled: bool):
    """Recompute ``fn(*args)`` in the backward pass instead of storing activations."""
    if enabled and th.is_grad_enabled():
        return _grad_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: th.Tensor, emb: th.Tensor) -> th.Tensor:
        ...


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential container that hands the embedding to the blocks that take it."""

    def forward(self, x: th.Tensor, emb: th.Tensor) -> th.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: th.Tensor) -> th.Tensor:
        if self.dims == 3:  # keep depth, upsample the inner two dimensions
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling: a strided 3x3 convolution, or average pooling."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without a convolution cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block: (norm, SiLU, conv) -> add/scale-shift by the embedding -> (norm, SiLU, dropout, conv).

    ``up``/``down`` resample inside the block (BigGAN style); ``use_scale_shift_norm``
    applies the embedding as ``norm(h) * (1 + scale) + shift`` (FiLM) instead of adding it.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: th.Tensor, emb: th.Tensor) -> th.Tensor:
        return _maybe_checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x: th.Tensor, emb: th.Tensor) -> th.Tensor:
        if self.updown:
            # resample between the activation and the convolution
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - 2)))  # (B, C, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: th.Tensor, num_heads: int, legacy: bool) -> th.Tensor:
    """Multi-head softmax attention over packed q, k, v: (B, 3*H*C, T) -> (B, H*C, T).

    ``legacy`` selects how heads are packed: heads outermost (the original
    ``QKVAttentionLegacy``: per head [q; k; v]) or q, k, v outermost
    (``QKVAttention``). Both orders exist in released checkpoints.
    Uses ``scaled_dot_product_attention`` on 4-D (B, H, T, C) tensors: with 3-D inputs PyTorch
    always takes its math path, with 4-D ones a GPU can choose a fused kernel.
    """
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:  # per head [q; k; v]: (B, H, 3C, T), split along the channels
        q, k, v = qkv.reshape(bs, num_heads, 3 * ch, length).split(ch, dim=2)
    else:  # [q; k; v] of all heads: three (B, H*C, T) parts, each (B, H, C, T)
        q, k, v = (part.reshape(bs, num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    # (B, H, C, T) -> (B, H, T, C) for the kernel, and back
    out = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    return out.transpose(2, 3).reshape(bs, num_heads * ch, length)


class QKVAttention(nn.Module):
    """q, k, v packed outermost (parameter-free)."""

    legacy = False

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: th.Tensor) -> th.Tensor:
        return qkv_attention(qkv, self.n_heads, self.legacy)


class QKVAttentionLegacy(QKVAttention):
    """Heads packed outermost, as the original ``AttentionBlock`` default."""

    legacy = True


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection: (B, C, *spatial) -> same."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: th.Tensor) -> th.Tensor:
        return _maybe_checkpoint(self._forward, (x,), self.use_checkpoint)

    def _forward(self, x: th.Tensor) -> th.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T)
        h = self.attention(self.qkv(self.norm(x)))
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """Attention pooling (CLIP): the mean token attends to all positions; returns (B, out)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(th.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: th.Tensor) -> th.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)  # (B, C, HW)
        x = th.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (B, C, HW+1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


def _encoder_blocks(
    *,
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Iterable[int],
    dropout: float,
    channel_mult: Sequence[int],
    conv_resample: bool,
    dims: int,
    use_checkpoint: bool,
    num_heads: int,
    num_head_channels: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
    time_embed_dim: int,
):
    """The downsampling half shared by the UNet and the classifier.

    Returns (input_blocks, channels of every block output, final channels, final downsampling factor).
    """
    attention_resolutions = set(attention_resolutions)
    ch = int(channel_mult[0] * model_channels)
    blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
    chans = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out_ch = int(mult * model_channels)
            layers: list[nn.Module] = [
                ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                         use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm)
            ]
            ch = out_ch
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads,
                                             num_head_channels=num_head_channels,
                                             use_new_attention_order=use_new_attention_order))
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            if resblock_updown:
                down = ResBlock(ch, time_embed_dim, dropout, out_channels=ch, dims=dims,
                                use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm, down=True)
            else:
                down = Downsample(ch, conv_resample, dims=dims, out_channels=ch)
            blocks.append(TimestepEmbedSequential(down))
            chans.append(ch)
            ds *= 2
    return blocks, chans, ch, ds


def _middle_block(ch, time_embed_dim, dropout, dims, use_checkpoint, use_scale_shift_norm,
                  num_heads, num_head_channels, use_new_attention_order):
    def res():
        return ResBlock(ch, time_embed_dim, dropout, dims=dims, use_checkpoint=use_checkpoint,
                        use_scale_shift_norm=use_scale_shift_norm)

    return TimestepEmbedSequential(
        res(),
        AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads,
                       num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order),
        res(),
    )


def _time_embed(model_channels: int, time_embed_dim: int) -> nn.Sequential:
    return nn.Sequential(linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim))


class UNetModel(nn.Module):
    """The full UNet with timestep (and optional class) conditioning.

    Args follow guided diffusion: ``attention_resolutions`` holds downsampling
    factors (1, 2, 4, ...) where attention is used; ``channel_mult`` the channel
    multiplier of each level; ``num_classes`` enables class conditioning (then
    ``forward`` needs ``y``); ``num_heads_upsample`` -1 means ``num_heads``.

    ``forward(x, timesteps, y=None)``: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        # Half precision is applied with torch.autocast by the caller (see pipeline/train.py and pipeline/devices.py);
        # the flag is kept for compatibility of the constructor and checkpoints.
        self.use_fp16 = use_fp16
        self.dtype = th.float32

        time_embed_dim = model_channels * 4
        self.time_embed = _time_embed(model_channels, time_embed_dim)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        common = dict(dropout=dropout, dims=dims, use_checkpoint=use_checkpoint,
                      use_scale_shift_norm=use_scale_shift_norm)
        self.input_blocks, chans, ch, ds = _encoder_blocks(
            in_channels=in_channels, model_channels=model_channels, num_res_blocks=num_res_blocks,
            attention_resolutions=self.attention_resolutions, channel_mult=channel_mult,
            conv_resample=conv_resample, num_heads=num_heads, num_head_channels=num_head_channels,
            resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order,
            time_embed_dim=time_embed_dim, **common)
        self.middle_block = _middle_block(ch, time_embed_dim, num_heads=num_heads,
                                          num_head_channels=num_head_channels,
                                          use_new_attention_order=use_new_attention_order, **common)

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = chans.pop()
                out_ch = int(model_channels * mult)
                layers: list[nn.Module] = [ResBlock(ch + skip_ch, time_embed_dim, out_channels=out_ch, **common)]
                ch = out_ch
                if ds in self.attention_resolutions:
                    layers.append(AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=num_heads_upsample,
                                                 num_head_channels=num_head_channels,
                                                 use_new_attention_order=use_new_attention_order))
                if level and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(ResBlock(ch, time_embed_dim, out_channels=ch, up=True, **common))
                    else:
                        layers.append(Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, int(channel_mult[0] * model_channels), out_channels, 3, padding=1)),
        )

    def forward(self, x: th.Tensor, timesteps: th.Tensor, y: th.Tensor | None = None) -> th.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y (class labels) exactly when the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))  # (B, 4*mc)
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(th.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(nn.Module):
    """The encoder half of the UNet with a pooled head: the noise-aware classifier.

    ``pool``: "adaptive" (global average + 1x1 conv), "attention" (attention
    pooling), "spatial" / "spatial_v2" (per-block spatial means, concatenated,
    then an MLP). ``forward(x, timesteps)``: (B, in_channels, H, W) -> (B, out_channels) logits.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.use_fp16 = use_fp16
        self.dtype = th.float32
        self.pool = pool

        time_embed_dim = model_channels * 4
        self.time_embed = _time_embed(model_channels, time_embed_dim)
        common = dict(dropout=dropout, dims=dims, use_checkpoint=use_checkpoint,
                      use_scale_shift_norm=use_scale_shift_norm)
        self.input_blocks, chans, ch, ds = _encoder_blocks(
            in_channels=in_channels, model_channels=model_channels, num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions, channel_mult=channel_mult,
            conv_resample=conv_resample, num_heads=num_heads, num_head_channels=num_head_channels,
            resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order,
            time_embed_dim=time_embed_dim, **common)
        self.middle_block = _middle_block(ch, time_embed_dim, num_heads=num_heads,
                                          num_head_channels=num_head_channels,
                                          use_new_attention_order=use_new_attention_order, **common)
        # width of the spatial features: one mean per block output plus the middle block
        # (read from the network, not a constant: SPEC section 10)
        self._feature_size = sum(chans) + ch

        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels")
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        elif pool == "spatial_v2":
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))
        else:
            raise UserError(f"--classifier_pool {pool!r}: expected adaptive, attention, spatial or spatial_v2")

    def forward(self, x: th.Tensor, timesteps: th.Tensor) -> th.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        feats = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                feats.append(h.float().mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            feats.append(h.float().mean(dim=(2, 3)))
            return self.out(th.cat(feats, dim=-1))  # (B, feature_size) -> (B, out)
        return self.out(h)
