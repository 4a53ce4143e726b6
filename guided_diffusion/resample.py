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
        self.update_with_all_losses(local_ts, local_losses)

    @abstractmethod
    def update_with_all_losses(self, ts, losses) -> None:
        ...


class LossSecondMomentResampler(LossAwareSampler):
    """Importance sampling of timesteps (Nichol & Dhariwal 2021, Eq. 18): p_t proportional to
    sqrt(E[L_t^2]) over the last ``history_per_term`` losses of step t, mixed with
    ``uniform_prob`` of the uniform distribution; uniform until every step has a full history.

    The history lives on the device of the losses it is given, and updating and sampling make
    no host synchronisation, so a training step never waits for the GPU.
    """

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = th.zeros(diffusion.num_timesteps, history_per_term, dtype=th.float64)
        self._loss_counts = th.zeros(diffusion.num_timesteps, dtype=th.long)

    def _to(self, device) -> None:
        if self._loss_history.device != th.device(device):
            self._loss_history = self._loss_history.to(device)
            self._loss_counts = self._loss_counts.to(device)

    def _weights(self) -> th.Tensor:
        """The sampling weights as a tensor on the history's device (they sum to 1)."""
        h = self.history_per_term
        w = th.sqrt((self._loss_history**2).mean(dim=-1))
        w = w / w.sum().clamp_min(th.finfo(w.dtype).tiny)
        w = w * (1 - self.uniform_prob) + self.uniform_prob / len(w)
        uniform = th.full_like(w, 1.0 / len(w))
        return th.where((self._loss_counts == h).all(), w, uniform)

    def weights(self):
        return self._weights().cpu().numpy()

    def sample(self, batch_size: int, device, generator: th.Generator | None = None):
        where = generator.device if generator is not None else th.device(device)
        self._to(where)
        p = self._weights()
        indices = th.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[indices])
        return indices.to(device), weights.float().to(device)

    def update_with_all_losses(self, ts, losses) -> None:
        """Append each loss to its step's history (the oldest dropped when full), in order."""
        ts = th.as_tensor(ts, dtype=th.long)
        losses = th.as_tensor(losses, dtype=th.float64)
        self._to(ts.device)
        losses = losses.to(self._loss_history.device)
        h = self.history_per_term
        for t, loss in zip(ts.unbind(), losses.unbind()):  # one (t, loss) at a time: repeats of t stack up
            row, count = self._loss_history[t], self._loss_counts[t]
            shifted = th.cat([row[1:], loss.reshape(1)])
            placed = row.scatter(0, count.clamp(max=h - 1).reshape(1), loss.reshape(1))
            self._loss_history[t] = th.where(count == h, shifted, placed)
            self._loss_counts[t] = (count + 1).clamp(max=h)
