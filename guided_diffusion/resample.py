"""Timestep samplers for training (importance sampling of Nichol & Dhariwal 2021, section 3.3)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch as th
import torch.distributed as dist

from .util.errors import UserError


def create_named_schedule_sampler(name: str, diffusion) -> "ScheduleSampler":
    """"uniform" or "loss-second-moment" (importance sampling by the recent loss's second moment)."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise UserError(f"--schedule_sampler {name!r}: expected 'uniform' or 'loss-second-moment'")


class ScheduleSampler(ABC):
    """Draws timesteps with probabilities ``weights()`` and returns importance weights
    that keep the loss estimate unbiased."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised positive weights, one per timestep."""

    def sample(self, batch_size: int, device, generator: th.Generator | None = None):
        """Returns (timesteps (B,) long, weights (B,) float) on ``device``."""
        w = self.weights()
        p = th.from_numpy(w / np.sum(w))
        if generator is not None:
            p = p.to(generator.device)
        indices = th.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[indices])
        return indices.to(device), weights.float().to(device)


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights

    def sample(self, batch_size: int, device, generator: th.Generator | None = None):
        # uniform: no multinomial needed, and all weights are exactly 1
        where = generator.device if generator is not None else device
        indices = th.randint(0, self.diffusion.num_timesteps, (batch_size,), generator=generator, device=where)
        return indices.to(device), th.ones(batch_size, device=device)


class LossAwareSampler(ScheduleSampler):
    def update_with_local_losses(self, local_ts: th.Tensor, local_losses: th.Tensor) -> None:
        """Gather (t, loss) pairs from every rank so all ranks keep identical statistics."""
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            ts = [th.zeros_like(local_ts) for _ in range(world)]
            losses = [th.zeros_like(local_losses) for _ in range(world)]
            dist.all_gather(ts, local_ts)
            dist.all_gather(losses, local_losses)
            local_ts, local_losses = th.cat(ts), th.cat(losses)
        self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        ...


class LossSecondMomentResampler(LossAwareSampler):
    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=int)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        w /= np.sum(w)
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]  # drop the oldest
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())
