"""The translation methods: what :func:`pipeline.translate.translate_folder` calls per batch.

Each is a small callable with a ``name``: a batch (B, C, H, W) in [0, 1] in, its healthy
reconstruction out (see :class:`pipeline.translate.Method`).

* :class:`DiffusionTranslation`: the paper's guided DDIM (``use_ddim=True``: DDIM encoding to
  L, classifier-guided DDIM decoding) or stochastic DDPM (noise to L, guided ancestral
  sampling). Each image's noise comes from its own generator seeded by (seed, image id), so a
  result does not depend on the batch size, on which images share its batch, or on how many
  processes split the folder.
  Classifier-free guidance, simplex noise and a noise-level ensemble are options of it.
* :class:`NetworkTranslation`: one forward pass of a baseline network (the VAE's
  reconstruction, FixedPoint-GAN's G(x, healthy), the DAE's D(x)).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch as th

from ..maps import MapOptions, make_map
from ..script_util import HEALTHY



def image_seed(seed: int, image_id: str) -> int:
    """A stable 62-bit seed per (run seed, image id)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _generators(seed: int, ids, device) -> list[th.Generator]:
    gens = []
    for image_id in ids:
        g = th.Generator(device=device)
        g.manual_seed(image_seed(seed, image_id))
        gens.append(g)
    return gens


def _draw(gens: list[th.Generator], shape, device) -> th.Tensor:
    """One standard-normal draw per image from its own generator: (B, *shape)."""
    return th.stack([th.randn(shape, generator=g, device=device) for g in gens])


def per_image(noise_fn: Callable) -> Callable:
    """A per-image draw like :func:`_draw` from the forward process's ``noise_fn(shape, generator)``
    (Gaussian or simplex, :func:`pipeline.runs.noise_fn_of`): each image's noise from its own generator."""
    def draw(gens: list[th.Generator], shape, device) -> th.Tensor:
        return th.cat([noise_fn((1, *shape), g) for g in gens])
    return draw


def translate_batch(model_fn, diffusion, cond_fn, x: th.Tensor, ids, *, seed: int, noise_level: int,
                    use_ddim: bool, clip_denoised: bool = True, callback=None, progress: bool = False,
                    decode_fn=None, draw: Callable = _draw, class_cond: bool = True):
    """Healthy reconstructions of a batch ``x`` (B, C, H, W) in [0, 1]; returns (B, C, H, W).

    ``decode_fn`` replaces the network in DDIM's decoding half (classifier-free guidance);
    ``draw`` makes each image's noise (Gaussian, or simplex); ``class_cond`` False calls the network
    without the class label (an unconditional model)."""
    device = x.device
    gens = _generators(seed, ids, device)
    noise = draw(gens, x.shape[1:], device)
    model_kwargs = {"y": th.full((x.shape[0],), HEALTHY, dtype=th.long, device=device)} if class_cond else {}
    kwargs = dict(clip_denoised=clip_denoised, cond_fn=cond_fn, progress=progress, callback=callback,
                  model_kwargs=model_kwargs, noise_level=noise_level, noise=noise)
    if use_ddim:
        sample, _, _ = diffusion.ddim_sample_loop_known(model_fn, tuple(x.shape), x, decode_model=decode_fn, **kwargs)
    else:
        sample, _, _ = diffusion.p_sample_loop_known(
            decode_fn or model_fn, tuple(x.shape), x, noise_fn=lambda x_t, t: draw(gens, x_t.shape[1:], device),
            **kwargs)
    return sample


@dataclass
class DiffusionTranslation:
    """Translation towards "healthy" with a diffusion model: the paper's classifier-guided DDIM
    (Wolleb et al. 2022, SPEC section 3) or DDPM, classifier-free guided DDIM (``decode_fn``),
    unguided denoising from a partial level with simplex noise (AnoDDPM, ``draw``).

    Several ``noise_levels``: one translation per level; the healthy image is their mean and the
    anomaly map the mean of their maps, each made with ``map_options`` (the noise-level ensemble of
    Behrendt et al.'s cDDPM)."""

    model_fn: Callable
    diffusion: object
    cond_fn: Callable | None
    seed: int
    noise_levels: tuple[int, ...]
    use_ddim: bool
    clip_denoised: bool = True
    guidance: str = "classifier"
    scale: float = 0.0
    decode_fn: Callable | None = None
    draw: Callable = _draw
    class_cond: bool = True
    noise_type: str = "gaussian"
    map_options: MapOptions = MapOptions()

    @property
    def name(self) -> str:
        levels = ",".join(map(str, self.noise_levels))
        sampler = "DDIM" if self.use_ddim else "DDPM"
        if self.noise_type == "simplex":
            sampler = f"simplex {sampler}"
        guide = {"classifier": f"s={self.scale:g}", "cfg": f"CFG W={self.scale:g}", "none": "unguided"}[self.guidance]
        return f"{sampler}, L={levels}, {guide}"

    def __call__(self, x: th.Tensor, ids: Sequence[str], callback=None):
        outs = [translate_batch(self.model_fn, self.diffusion, self.cond_fn, x, ids, seed=self.seed, noise_level=level,
                                use_ddim=self.use_ddim, clip_denoised=self.clip_denoised, callback=callback,
                                decode_fn=self.decode_fn, draw=self.draw, class_cond=self.class_cond)
                for level in self.noise_levels]
        if len(outs) == 1:
            return outs[0]
        healthy = th.stack(outs).mean(dim=0)
        return healthy, th.stack([make_map(x.float(), h.float(), self.map_options) for h in outs]).mean(dim=0)


@dataclass
class NetworkTranslation:
    """One forward pass: ``translate(x)`` is the healthy reconstruction."""

    name: str
    translate: Callable[[th.Tensor], th.Tensor]

    @th.no_grad()
    def __call__(self, x: th.Tensor, ids: Sequence[str], callback=None) -> th.Tensor:
        return self.translate(x)
