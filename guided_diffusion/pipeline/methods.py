"""The translation methods: what :func:`pipeline.translate.translate_folder` calls per batch.

Each is a small callable with a ``name``: a batch (B, C, H, W) in [0, 1] in, its healthy
reconstruction out (see :class:`pipeline.translate.Method`).

* :class:`DiffusionTranslation`: the paper's guided DDIM (``use_ddim=True``: DDIM encoding to
  L, classifier-guided DDIM decoding) or stochastic DDPM (noise to L, guided ancestral
  sampling). Each image's noise comes from its own generator seeded by (seed, image id), so a
  result does not depend on the batch size, on which images share its batch, or on how many
  processes split the folder.
* :class:`NetworkTranslation`: one forward pass of a baseline network (the VAE's
  reconstruction, FixedPoint-GAN's G(x, healthy)).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch as th

HEALTHY = 0


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


def translate_batch(model_fn, diffusion, cond_fn, x: th.Tensor, ids, *, seed: int, noise_level: int,
                    use_ddim: bool, clip_denoised: bool = True, callback=None, progress: bool = False):
    """Healthy reconstructions of a batch ``x`` (B, C, H, W) in [0, 1]; returns (B, C, H, W)."""
    device = x.device
    gens = _generators(seed, ids, device)
    noise = _draw(gens, x.shape[1:], device)
    kwargs = dict(clip_denoised=clip_denoised, cond_fn=cond_fn, progress=progress, callback=callback,
                  model_kwargs={"y": th.full((x.shape[0],), HEALTHY, dtype=th.long, device=device)},
                  noise_level=noise_level, noise=noise)
    if use_ddim:
        sample, _, _ = diffusion.ddim_sample_loop_known(model_fn, tuple(x.shape), x, **kwargs)
    else:
        sample, _, _ = diffusion.p_sample_loop_known(
            model_fn, tuple(x.shape), x, noise_fn=lambda x_t, t: _draw(gens, x_t.shape[1:], device), **kwargs)
    return sample


@dataclass
class DiffusionTranslation:
    """Guided DDIM or DDPM translation towards "healthy" (Wolleb et al. 2022, SPEC section 3)."""

    model_fn: Callable
    diffusion: object
    cond_fn: Callable | None
    seed: int
    noise_level: int
    use_ddim: bool
    clip_denoised: bool = True
    scale: float = 0.0

    @property
    def name(self) -> str:
        return f"{'DDIM' if self.use_ddim else 'DDPM'}, L={self.noise_level}, s={self.scale:g}"

    def __call__(self, x: th.Tensor, ids: Sequence[str], callback=None) -> th.Tensor:
        return translate_batch(self.model_fn, self.diffusion, self.cond_fn, x, ids, seed=self.seed,
                               noise_level=self.noise_level, use_ddim=self.use_ddim,
                               clip_denoised=self.clip_denoised, callback=callback)


@dataclass
class NetworkTranslation:
    """One forward pass: ``translate(x)`` is the healthy reconstruction."""

    name: str
    translate: Callable[[th.Tensor], th.Tensor]

    @th.no_grad()
    def __call__(self, x: th.Tensor, ids: Sequence[str], callback=None) -> th.Tensor:
        return self.translate(x)
