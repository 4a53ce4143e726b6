"""Timestep respacing: run a diffusion process on a subset of its timesteps.

The respaced process has its own betas (chosen so that alpha_bar matches the
original at the kept steps) and is indexed 0..len(kept)-1, but the networks
were trained on the original timestep numbers: every call into the model *and*
into the classifier's ``cond_fn`` maps indices back (SPEC section 10: the
authors' fork passed respaced indices to the classifier).
"""
from __future__ import annotations

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion
from .util.errors import UserError


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """The set of original timesteps to keep.

    ``section_counts``: "ddimN" (a stride that yields exactly N steps, as in DDIM),
    a comma-separated string "N1,N2,..." or a list: the T steps are cut into equal
    sections and section i keeps N_i evenly spaced steps (first and last included).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired = int(section_counts[len("ddim"):])
            except ValueError:
                raise UserError(f"--timestep_respacing {section_counts!r}: expected ddimN, e.g. ddim100") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise UserError(f"--timestep_respacing {section_counts!r}: no integer stride gives exactly "
                             f"{desired} of {num_timesteps} steps")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise UserError(f"--timestep_respacing {section_counts!r}: expected ddimN or comma-separated "
                             "step counts") from None
    n_sections = len(section_counts)
    size_per, extra = divmod(num_timesteps, n_sections)
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise UserError(f"--timestep_respacing: cannot take {count} steps from a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulate (not j * stride): the original's rounding
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


class _TimestepMap:
    """Shared mapping from respaced indices to (optionally rescaled) original timesteps."""

    def __init__(self, timestep_map, rescale_timesteps: bool, original_num_steps: int):
        self.timestep_map = th.tensor(timestep_map, dtype=th.long)
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps
        self._per_device: dict = {}

    def __call__(self, ts: th.Tensor) -> th.Tensor:
        table = self._per_device.get(ts.device)
        if table is None:
            table = self._per_device[ts.device] = self.timestep_map.to(ts.device)
        new_ts = table[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return new_ts


class _WrappedModel:
    """Calls ``fn(x, mapped_t, **kwargs)``: a network or a cond_fn seen with original timesteps."""

    def __init__(self, fn, mapper: _TimestepMap):
        self.fn = fn
        self.mapper = mapper

    def __call__(self, x, ts, **kwargs):
        return self.fn(x, self.mapper(ts), **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process restricted to ``use_timesteps`` of a base process (``kwargs`` as for
    :class:`GaussianDiffusion`)."""

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(**kwargs)
        self.original_num_steps = base.num_timesteps
        self.timestep_map = []
        new_betas, last_alpha_bar = [], 1.0
        for i, alpha_bar in enumerate(base.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_bar / last_alpha_bar)
                last_alpha_bar = alpha_bar
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)
        self._mapper = _TimestepMap(self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _wrap(self, fn):
        if fn is None or isinstance(fn, _WrappedModel):
            return fn
        return _WrappedModel(fn, self._mapper)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap(cond_fn), *args, **kwargs)

    def _scale_timesteps(self, t):
        return t  # the wrapper maps and scales
