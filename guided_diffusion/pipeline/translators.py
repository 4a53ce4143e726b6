"""The translators: what :func:`pipeline.translate.translate_folder` calls per batch.

Each is a small callable with a ``name``: a batch (B, C, H, W) in [0, 1] in, its healthy
reconstruction out (see :class:`pipeline.translate.Translator`). A method (:mod:`.methods`) names the
translator its translation script builds.

* :class:`DiffusionTranslation`: the paper's guided DDIM (``use_ddim=True``: DDIM encoding to
  L, classifier-guided DDIM decoding) or stochastic DDPM (noise to L, guided ancestral
  sampling) with the network as guided (:class:`guidance.GuidedModel`). Each image's noise comes
  from its own generator seeded by (seed, image id), so a result does not depend on the batch size,
  on which images share its batch, or on how many processes split the folder.
  Classifier-free guidance, simplex noise and a noise-level ensemble are options of it, and so are
  the levers of :class:`Levers`: a schedule of the classifier's scale, AutoDDPM's mask, stitch and
  resample, pDDPM's patch-wise noising (the maths in :mod:`guided_diffusion.translation_levers`).
* :class:`NetworkTranslation`: one forward pass of a baseline network (the VAE's
  reconstruction, FixedPoint-GAN's G(x, healthy), the DAE's D(x)).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch as th

from ..guidance import GuidedModel
from ..maps import MapOptions, make_map
from ..translation_levers import autoddpm_level, autoddpm_mask, box_mask, keep_known, patch_boxes, stitch


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
    (Gaussian or simplex, :func:`pipeline.methods.diffusion.noise_fn_of`): each image's noise from its own generator."""
    def draw(gens: list[th.Generator], shape, device) -> th.Tensor:
        return th.cat([noise_fn((1, *shape), g) for g in gens])
    return draw


@dataclass(frozen=True)
class Levers:
    """The translation levers of issue 20 (each off by default, which is the paper's translation):

    ``scale_schedule``: s(t) over the decoding steps (:func:`guidance.schedule_cond_fn`);
    ``autoddpm``: AutoDDPM's mask (``autoddpm_quantile`` of the image's first anomaly map, dilated by
    ``autoddpm_dilation`` pixels), stitch and resample at ``autoddpm_level`` (0: L / 4);
    ``patch_size``: pDDPM's patch-wise noising, one translation per patch of the grid."""

    scale_schedule: str = "constant"
    autoddpm: bool = False
    autoddpm_quantile: float = 0.95
    autoddpm_level: int = 0
    autoddpm_dilation: int = 1
    patch_size: int = 0

    def describe(self) -> str:
        """What differs from the paper's translation, for a method's name ("" when nothing does)."""
        parts = []
        if self.scale_schedule != "constant":
            parts.append(f"{self.scale_schedule} s(t)")
        if self.autoddpm:
            level = f"L2={self.autoddpm_level}" if self.autoddpm_level else "L2=L/4"
            parts.append(f"AutoDDPM q={self.autoddpm_quantile:g} {level}")
        if self.patch_size:
            parts.append(f"pDDPM P={self.patch_size}")
        return ", ".join(parts)


def decode_start(diffusion, noise_level: int, use_ddim: bool) -> float:
    """The timestep of the first guided decoding step at level L (DDIM: step L-2, DDPM: L-1 of the
    possibly respaced process) in the units the network and ``cond_fn`` are called with (original
    timesteps, scaled to 0..1000 with ``rescale_timesteps``)."""
    index = max(noise_level - (2 if use_ddim else 1), 0)
    timestep_map = getattr(diffusion, "timestep_map", None)
    t = float(timestep_map[index] if timestep_map is not None else index)
    if diffusion.rescale_timesteps:
        t *= 1000.0 / getattr(diffusion, "original_num_steps", diffusion.num_timesteps)
    return t


def image_noise(seed: int, ids: Sequence[str], device, draw: Callable = _draw) -> Callable:
    """A noise sampler (k-diffusion's ``noise_sampler``, one generator per image): ``noise(shape)``
    returns the next draw (B, *shape) of each image's own generator, seeded by (``seed``, its id), made
    by ``draw`` (:func:`_draw`: standard normal; :func:`per_image`: the forward process's noise)."""
    gens = _generators(seed, ids, device)

    def noise(shape) -> th.Tensor:
        return draw(gens, tuple(shape), device)
    return noise


@dataclass(frozen=True)
class TranslationOptions:
    """How one translation runs: the noise level L (steps of the, possibly respaced, process), DDIM or
    DDPM, clipping of the predicted x_0, the :class:`Levers` (all off: the paper's translation) and a
    progress bar."""

    noise_level: int
    use_ddim: bool = True
    clip_denoised: bool = True
    levers: Levers = Levers()
    progress: bool = False


def translate_batch(model: GuidedModel, diffusion, x: th.Tensor, noise: Callable, options: TranslationOptions,
                    callback=None) -> th.Tensor:
    """Healthy reconstructions of a batch ``x`` (B, C, H, W) in [0, 1] with the guided ``model`` and
    ``diffusion``'s schedule; returns (B, C, H, W).

    ``noise(shape)`` is each image's next noise draw (:func:`image_noise`); ``callback`` gets each
    step's dict (see ``ddim_sample_loop_known``). The default levers give the paper's translation, bit
    for bit: ``diffusion.ddim_sample_loop_known(model.network, ..., cond_fn=model.cond_fn,
    decode_model=model.decode, model_kwargs=model.model_kwargs(...), noise=noise(...))``."""
    device = x.device
    levers = options.levers
    model_kwargs = model.model_kwargs(x.shape[0], device)

    def translate(img: th.Tensor, level: int, guided: GuidedModel, denoised_fn=None) -> th.Tensor:
        """One translation of ``img`` at ``level``, from each image's next draw."""
        first = noise(img.shape[1:])
        guided = guided.scheduled(levers.scale_schedule, decode_start(diffusion, level, options.use_ddim))
        kwargs = dict(clip_denoised=options.clip_denoised, cond_fn=guided.cond_fn, progress=options.progress,
                      callback=callback, model_kwargs=model_kwargs, noise_level=level, noise=first,
                      denoised_fn=denoised_fn)
        if options.use_ddim:
            sample, _, _ = diffusion.ddim_sample_loop_known(guided.network, tuple(img.shape), img,
                                                            decode_model=guided.decode, **kwargs)
        else:
            sample, _, _ = diffusion.p_sample_loop_known(guided.decoder, tuple(img.shape), img,
                                                         noise_fn=lambda x_t, t: noise(x_t.shape[1:]), **kwargs)
        return sample

    def reconstruct(img: th.Tensor, level: int, guided: GuidedModel, denoised_fn=None) -> th.Tensor:
        """A translation of ``img``, or with a patch size, pDDPM's: each patch of the grid noised and
        reconstructed from the clean image around it, the patches tiled."""
        if not levers.patch_size:
            return translate(img, level, guided, denoised_fn)
        out = th.empty_like(img)
        for box in patch_boxes(img.shape[2], img.shape[3], levers.patch_size):
            part = translate(img, level, guided.with_clean_context(img, box_mask(img.shape, box, device)), denoised_fn)
            out[:, :, box[0], box[1]] = part[:, :, box[0], box[1]]
        return out

    healthy = reconstruct(x, options.noise_level, model)
    if not levers.autoddpm:
        return healthy
    # AutoDDPM (Bercea et al. 2023): mask the likely anomalies, stitch the reconstruction into the input there,
    # and resample the stitched image at a lower level with the input held outside the mask
    mask = autoddpm_mask(x, healthy, levers.autoddpm_quantile, levers.autoddpm_dilation)
    resampled = reconstruct(stitch(x, healthy, mask), autoddpm_level(options.noise_level, levers.autoddpm_level),
                            model.masked(mask), denoised_fn=keep_known(x, mask))
    return stitch(x, resampled.to(x.dtype), mask)


@dataclass
class DiffusionTranslation:
    """Translation towards "healthy" with a diffusion model: the paper's classifier-guided DDIM
    (Wolleb et al. 2022, SPEC section 3) or DDPM, classifier-free guided DDIM, unguided denoising from
    a partial level with simplex noise (AnoDDPM, ``draw``); ``model`` says which guidance.

    Several ``noise_levels``: one translation per level; the healthy image is their mean and the
    anomaly map the mean of their maps, each made with ``map_options`` (the noise-level ensemble of
    Behrendt et al.'s cDDPM)."""

    model: GuidedModel
    diffusion: object
    seed: int
    noise_levels: tuple[int, ...]
    use_ddim: bool
    clip_denoised: bool = True
    draw: Callable = _draw
    noise_type: str = "gaussian"
    levers: Levers = Levers()
    map_options: MapOptions = MapOptions()

    @property
    def name(self) -> str:
        levels = ",".join(map(str, self.noise_levels))
        sampler = "DDIM" if self.use_ddim else "DDPM"
        if self.noise_type == "simplex":
            sampler = f"simplex {sampler}"
        levers = self.levers.describe()
        return f"{sampler}, L={levels}, {self.model.describe()}" + (f", {levers}" if levers else "")

    def __call__(self, x: th.Tensor, ids: Sequence[str], callback=None):
        outs = [translate_batch(self.model, self.diffusion, x, image_noise(self.seed, ids, x.device, self.draw),
                                TranslationOptions(level, self.use_ddim, self.clip_denoised, self.levers),
                                callback=callback)
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
