"""The loss-second-moment timestep sampler (Nichol & Dhariwal 2021, section 3.3), against values by hand."""
import math
from types import SimpleNamespace

import pytest
import torch as th

from guided_diffusion.resample import LossSecondMomentResampler, UniformSampler

T = 3  # timesteps
HISTORY = 2  # losses kept per timestep
MIX = 0.1  # share of the uniform distribution in the mixture


def sampler() -> LossSecondMomentResampler:
    return LossSecondMomentResampler(SimpleNamespace(num_timesteps=T), history_per_term=HISTORY, uniform_prob=MIX)


def update(s, ts, losses):
    s.update_with_local_losses(th.tensor(ts), th.tensor(losses, dtype=th.float32))


def mixture(histories) -> list[float]:
    """p_t = (1 - MIX) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2]) + MIX / T."""
    rms = [math.sqrt(sum(loss**2 for loss in h) / len(h)) for h in histories]
    return [(1 - MIX) * r / sum(rms) + MIX / T for r in rms]


def test_uniform_until_every_timestep_has_a_full_history():
    s = sampler()
    assert s.weights().tolist() == [1 / T] * T
    # t = 0 three times in one update: its history keeps the last two, 2 and 3
    update(s, [0, 0, 0, 1], [1.0, 2.0, 3.0, 4.0])
    assert s.weights().tolist() == [1 / T] * T  # t = 1 has one loss, t = 2 none
    update(s, [1, 2], [6.0, 5.0])
    assert s.weights().tolist() == [1 / T] * T  # t = 2 has one loss
    t, w = s.sample(5, "cpu", generator=th.Generator().manual_seed(0))
    assert w.tolist() == [1.0] * 5  # 1 / (T * 1/T)


def test_weights_follow_the_root_mean_square_of_the_last_losses():
    s = sampler()
    update(s, [0, 0, 0, 1], [1.0, 2.0, 3.0, 4.0])
    update(s, [1, 2, 2], [6.0, 5.0, 7.0])
    # histories: t=0 [2, 3], t=1 [4, 6], t=2 [5, 7]; rms sqrt(6.5), sqrt(26), sqrt(37)
    expected = mixture([[2, 3], [4, 6], [5, 7]])
    # by hand: rms 2.550, 5.099, 6.083 (sum 13.731); 0.9 * (0.1857, 0.3713, 0.4430) + 0.0333
    assert expected == pytest.approx([0.2004, 0.3675, 0.4320], abs=1e-4)
    assert s.weights().tolist() == pytest.approx(expected, rel=1e-12)
    # a full history drops its oldest loss: t=1 becomes [6, 10]; repeats within one update in order
    update(s, [1, 2, 2], [10.0, 1.0, 2.0])
    expected = mixture([[2, 3], [6, 10], [1, 2]])
    assert s.weights().tolist() == pytest.approx(expected, rel=1e-12)


def test_sample_draws_by_the_weights_and_returns_importance_weights():
    s = sampler()
    update(s, [0, 0, 1, 1, 2, 2], [2.0, 3.0, 4.0, 6.0, 5.0, 7.0])
    p = mixture([[2, 3], [4, 6], [5, 7]])
    t, w = s.sample(20_000, "cpu", generator=th.Generator().manual_seed(0))
    assert t.dtype == th.long and w.dtype == th.float32
    # importance weights 1 / (T p_t) keep the loss estimate unbiased
    assert w.tolist() == pytest.approx([1 / (T * p[i]) for i in t.tolist()], rel=1e-6)
    # frequencies: binomial standard error sqrt(p (1 - p) / n) < 0.0035, so 0.015 is over 4 of them
    freq = th.bincount(t, minlength=T).double() / len(t)
    assert freq.tolist() == pytest.approx(p, abs=0.015)


def test_uniform_sampler_weights_are_one():
    t, w = UniformSampler(SimpleNamespace(num_timesteps=T)).sample(6, "cpu", generator=th.Generator().manual_seed(0))
    assert w.tolist() == [1.0] * 6 and 0 <= t.min() and t.max() < T
