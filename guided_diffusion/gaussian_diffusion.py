"""Gaussian diffusion: schedules, forward noising, DDPM/DDIM steps, losses, translation loops.

References:
- DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
- Learned variances and the hybrid loss: Nichol & Dhariwal 2021, "Improved DDPM".
- Classifier guidance: Dhariwal & Nichol 2021, "Diffusion Models Beat GANs".
- DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models".
- Anomaly detection by guided DDIM translation: Wolleb et al. 2022 (SPEC section 3).

The maths takes the network as an argument and never builds one or picks a
device: every tensor follows the input ``x``. Schedules are computed once in
float64 and gathered per sample into float32.

Symbols: ``t`` timestep index (B,), ``x_t`` the noisy sample, ``x_start`` /
``pred_xstart`` the clean image x_0 (or its prediction), ``eps`` the noise,
``alpha_bar`` = prod_{s<=t} (1 - beta_s).
"""
from __future__ import annotations

import enum
import math
from typing import Callable, Iterator

import numpy as np
import torch as th

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat
from .util.errors import UserError

# --------------------------------------------------------------------------- schedules


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas of a named schedule as a float64 array of length ``num_diffusion_timesteps``.

    "linear": Ho et al. 2020, rescaled so any T behaves like T = 1000
    (1e-4 * 1000/T to 0.02 * 1000/T). "cosine": Nichol & Dhariwal 2021, Eq. 17.
    """
    if schedule_name == "linear":
        if num_diffusion_timesteps <= 20:
            raise UserError(f"--diffusion_steps {num_diffusion_timesteps}: the linear schedule needs more than "
                             "20 steps (its last beta, 0.02 * 1000 / T, must stay below 1)")
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise UserError(f"--noise_schedule {schedule_name!r}: expected 'linear' or 'cosine'")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(t), t in [0, 1], into betas (clipped at max_beta)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


class ModelMeanType(enum.Enum):
    """What the network predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    LEARNED = enum.auto()  # the network outputs log sigma^2
    FIXED_SMALL = enum.auto()  # posterior variance beta-tilde
    FIXED_LARGE = enum.auto()  # beta
    LEARNED_RANGE = enum.auto()  # the network interpolates between the two (Improved DDPM Eq. 15)


class LossType(enum.Enum):
    MSE = enum.auto()  # MSE (+ the variational bound when the variance is learned)
    RESCALED_MSE = enum.auto()  # same, with the VB term rescaled to T = 1000
    KL = enum.auto()  # the variational bound
    RESCALED_KL = enum.auto()

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _check_noise_level(noise_level: int, num_timesteps: int) -> int:
    if isinstance(noise_level, bool) or int(noise_level) != noise_level or not 1 <= noise_level <= num_timesteps:
        raise UserError(
            f"--noise_level {noise_level}: expected an integer in 1..{num_timesteps} "
            f"(steps of the {'respaced ' if num_timesteps != 1000 else ''}process)"
        )
    return int(noise_level)


# --------------------------------------------------------------------------- diffusion


class GaussianDiffusion:
    """The diffusion process of a network; see the module docstring.

    Args:
        betas: float64 array of the per-step betas (length T).
        model_mean_type, model_var_type, loss_type: see the enums.
        rescale_timesteps: hand the network t * 1000 / T (floats) instead of t.
    """

    def __init__(self, *, betas, model_mean_type: ModelMeanType, model_var_type: ModelVarType,
                 loss_type: LossType, rescale_timesteps: bool = False):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0), Ho et al. Eq. 6-7
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the variance is 0 at t = 0: log-clip it with the value at t = 1
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self._log_betas = np.log(betas)
        fixed_large = np.append(self.posterior_variance[1], betas[1:])
        self._fixed_large_variance = fixed_large
        self._fixed_large_log_variance = np.log(fixed_large)
        self._cache: dict = {}

    # ---- per-sample coefficients

    def _coef(self, name: str, t: th.Tensor, shape) -> th.Tensor:
        """Gather schedule array ``name`` at timesteps ``t`` (B,) and shape it to broadcast with ``shape``."""
        key = (name, t.device)
        table = self._cache.get(key)
        if table is None:
            # float64 -> float32 once per device; identical to rounding after the gather
            table = th.from_numpy(getattr(self, name)).to(device=t.device, dtype=th.float32)
            self._cache[key] = table
        out = table[t]
        return out.reshape(out.shape[0], *([1] * (len(shape) - 1))).expand(shape)

    @staticmethod
    def _per_sample(x: th.Tensor) -> tuple:
        """(B, 1, ..., 1): the shape of a per-sample coefficient that broadcasts against ``x``.

        Arithmetic among coefficients alone (1 - alpha_bar, its square root, ...) is done at
        this shape, once per sample, instead of on views expanded to the full image size.
        """
        return (x.shape[0],) + (1,) * (x.ndim - 1)

    def _scale_timesteps(self, t: th.Tensor) -> th.Tensor:
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ---- forward process

    def q_mean_variance(self, x_start: th.Tensor, t: th.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._coef("sqrt_alphas_cumprod", t, x_start.shape) * x_start
        variance = 1.0 - self._coef("alphas_cumprod", t, x_start.shape)
        log_variance = self._coef("log_one_minus_alphas_cumprod", t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: th.Tensor, t: th.Tensor, noise: th.Tensor | None = None) -> th.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I)."""
        if noise is None:
            noise = th.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (self._coef("sqrt_alphas_cumprod", t, x_start.shape) * x_start
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start: th.Tensor, x_t: th.Tensor, t: th.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self._coef("posterior_mean_coef1", t, x_t.shape) * x_start
                + self._coef("posterior_mean_coef2", t, x_t.shape) * x_t)
        variance = self._coef("posterior_variance", t, x_t.shape)
        log_variance = self._coef("posterior_log_variance_clipped", t, x_t.shape)
        return mean, variance, log_variance

    # ---- reverse process

    def p_mean_variance(self, model, x: th.Tensor, t: th.Tensor, clip_denoised: bool = True,
                        denoised_fn=None, model_kwargs: dict | None = None) -> dict:
        """Run the network and form p(x_{t-1} | x_t).

        Returns dict(mean, variance, log_variance, pred_xstart), each shaped like x.
        ``pred_xstart`` is passed through ``denoised_fn`` and clipped to [-1, 1]
        when ``clip_denoised``.
        """
        model_kwargs = model_kwargs or {}
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)
        return self._p_mean_variance_from_output(model_output, x, t, clip_denoised, denoised_fn)

    def _p_mean_variance_from_output(self, model_output, x, t, clip_denoised=True, denoised_fn=None) -> dict:
        C = x.shape[1]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"learned variance needs {2 * C} output channels, the model gave "
                                 f"{model_output.shape[1]} (check --learn_sigma)")
            model_output, var_values = th.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = var_values
            else:
                # Improved DDPM Eq. 15: v in [-1, 1] interpolates log beta-tilde .. log beta
                min_log = self._coef("posterior_log_variance_clipped", t, x.shape)
                max_log = self._coef("_log_betas", t, x.shape)
                frac = (var_values + 1) / 2
                model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = th.exp(model_log_variance)
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            model_variance = self._coef("_fixed_large_variance", t, x.shape)
            model_log_variance = self._coef("_fixed_large_log_variance", t, x.shape)
        else:
            model_variance = self._coef("posterior_variance", t, x.shape)
            model_log_variance = self._coef("posterior_log_variance_clipped", t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, model_output))
            model_mean = model_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart}

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t.shape) * eps)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        # invert the posterior mean: x_{t-1} = coef1 x_0 + coef2 x_t
        return (xprev - self._coef("posterior_mean_coef2", t, x_t.shape) * x_t) \
            / self._coef("posterior_mean_coef1", t, x_t.shape)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t - pred_xstart) \
            / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t.shape)

    # ---- classifier guidance

    def condition_mean(self, cond_fn, p_mean_var: dict, x: th.Tensor, t: th.Tensor,
                       model_kwargs: dict | None = None) -> th.Tensor:
        """Guided DDPM mean (Dhariwal & Nichol 2021, Alg. 1): mu + Sigma * grad log p(y | x_t)."""
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var: dict, x: th.Tensor, t: th.Tensor,
                        model_kwargs: dict | None = None) -> dict:
        """Guided score for DDIM (Dhariwal & Nichol 2021, Alg. 2):
        eps' = eps - sqrt(1 - alpha_bar) * grad log p(y | x_t); x_0 and the mean are recomputed from eps'.
        """
        alpha_bar = self._coef("alphas_cumprod", t, self._per_sample(x))
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ---- single steps

    def p_sample(self, model, x: th.Tensor, t: th.Tensor, clip_denoised: bool = True, denoised_fn=None,
                 cond_fn=None, model_kwargs: dict | None = None, noise: th.Tensor | None = None) -> dict:
        """One ancestral DDPM step x_t -> x_{t-1}; returns dict(sample, pred_xstart).

        Draws one ``randn_like(x)`` unless ``noise`` is given. No noise is added at t = 0.
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if noise is None:
            noise = th.randn_like(x)
        mean = out["mean"]
        if cond_fn is not None:
            mean = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        sample = mean + nonzero * th.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x: th.Tensor, t: th.Tensor, clip_denoised: bool = True, denoised_fn=None,
                    cond_fn=None, model_kwargs: dict | None = None, eta: float = 0.0,
                    noise: th.Tensor | None = None) -> dict:
        """One DDIM step x_t -> x_{t-1} (Song et al. 2021, Eq. 12); guided when ``cond_fn`` is given.

        Deterministic for eta = 0 (no random draw); returns dict(sample, pred_xstart).
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        # Eq. 12 with eps re-derived from the (possibly guided) x_0 prediction
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = self._coef("alphas_cumprod", t, self._per_sample(x))
        alpha_bar_prev = self._coef("alphas_cumprod_prev", t, self._per_sample(x))
        sigma = eta * th.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * th.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = out["pred_xstart"] * th.sqrt(alpha_bar_prev) + th.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta:
            if noise is None:
                noise = th.randn_like(x)
            nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x: th.Tensor, t: th.Tensor, clip_denoised: bool = True,
                            denoised_fn=None, model_kwargs: dict | None = None, eta: float = 0.0) -> dict:
        """One deterministic DDIM encoding step x_t -> x_{t+1} (the ODE run forwards)."""
        if eta != 0.0:
            raise ValueError("eta: the reverse DDIM step is deterministic, expected eta=0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = self._coef("alphas_cumprod_next", t, self._per_sample(x))
        sample = out["pred_xstart"] * th.sqrt(alpha_bar_next) + th.sqrt(1 - alpha_bar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # ---- loops (each written once; the public names below wrap them)

    def _run(self, step, model, x, timesteps, *, progress=False, callback=None, phase="decode",
             noise_fn=None, **kwargs) -> Iterator[dict]:
        """Apply ``step`` for each timestep in order; yields each step's output dict."""
        if progress:
            from tqdm.auto import tqdm
            timesteps = tqdm(timesteps, desc=phase, leave=False)
        for i in timesteps:
            t = th.full((x.shape[0],), i, device=x.device, dtype=th.long)
            if noise_fn is not None:
                kwargs["noise"] = noise_fn(x, i)
            with th.no_grad():
                out = step(model, x, t, **kwargs)
            x = out["sample"]
            out["t"] = i
            out["phase"] = phase
            if callback is not None:
                callback(out)
            yield out

    @staticmethod
    def _last(gen: Iterator[dict], x: th.Tensor) -> th.Tensor:
        for out in gen:
            x = out["sample"]
        return x

    def _initial(self, shape, noise, device):
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} != shape {tuple(shape)}")
            return noise.to(device) if device is not None else noise
        return th.randn(*shape, device=device)

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  callback=None, noise_fn=None):
        """Generate from pure noise with DDPM, yielding every step's dict(sample, pred_xstart, t)."""
        x = self._initial(shape, noise, device)
        yield from self._run(self.p_sample, model, x, range(self.num_timesteps)[::-1], progress=progress,
                             callback=callback, noise_fn=noise_fn, clip_denoised=clip_denoised,
                             denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, callback=None, noise_fn=None):
        """Generate from pure noise with all T DDPM steps; returns the final sample."""
        x = self._initial(shape, noise, device)
        return self._last(self.p_sample_loop_progressive(
            model, shape, x, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress,
            callback, noise_fn), x)

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     callback=None, noise_fn=None):
        """Generate from pure noise with DDIM, yielding every step's dict(sample, pred_xstart, t)."""
        x = self._initial(shape, noise, device)
        yield from self._run(self.ddim_sample, model, x, range(self.num_timesteps)[::-1], progress=progress,
                             callback=callback, noise_fn=noise_fn, clip_denoised=clip_denoised,
                             denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs, eta=eta)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, callback=None, noise_fn=None):
        """Generate from pure noise with all T DDIM steps (SPEC section 10: the original ran none)."""
        x = self._initial(shape, noise, device)
        return self._last(self.ddim_sample_loop_progressive(
            model, shape, x, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress, eta,
            callback, noise_fn), x)

    def _known_input(self, shape, img, device):
        if not th.is_tensor(img):
            raise TypeError(f"img must be a tensor of shape {tuple(shape)}, got {type(img).__name__}")
        if tuple(img.shape) != tuple(shape):
            raise ValueError(f"img shape {tuple(img.shape)} != shape {tuple(shape)}")
        return img.to(device) if device is not None else img

    def ddim_sample_loop_known(self, model, shape, img, clip_denoised=True, denoised_fn=None, cond_fn=None,
                               model_kwargs=None, device=None, progress=False, eta=0.0, noise_level=500,
                               noise=None, callback=None, decode_model=None):
        """Translate ``img`` towards the class in ``model_kwargs["y"]`` (Wolleb et al. 2022, SPEC section 3).

        1. x = q_sample(img, t=0, noise) (one standard-normal draw shaped like img unless ``noise``);
        2. deterministic DDIM encoding with t = 1, ..., L-1;
        3. DDIM decoding with ``cond_fn`` guidance, t = L-2, ..., 0.

        Args: img (B, C, H, W) in the model's value range; ``noise_level`` L in 1..T (T = steps
        of this, possibly respaced, process). ``callback`` gets each step's dict (with "phase"
        "encode" or "decode"). ``decode_model`` replaces ``model`` in the decoding half (the
        classifier-free guided network); the encoding always uses ``model``.
        Returns (sample, x_noisy, img), each (B, C, H, W).
        """
        img = self._known_input(shape, img, device)
        L = _check_noise_level(noise_level, self.num_timesteps)
        if noise is None:
            noise = th.randn_like(img)
        t0 = th.zeros(img.shape[0], dtype=th.long, device=img.device)
        x_noisy = self.q_sample(img, t0, noise=noise)
        common = dict(progress=progress, callback=callback, clip_denoised=clip_denoised,
                      denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        x = self._last(self._run(self.ddim_reverse_sample, model, x_noisy, range(1, L), phase="encode",
                                 **common), x_noisy)
        x = self._last(self._run(self.ddim_sample, decode_model or model, x, range(L - 1)[::-1], phase="decode",
                                 cond_fn=cond_fn, eta=eta, **common), x)
        return x, x_noisy, img

    def p_sample_loop_known(self, model, shape, img, clip_denoised=True, denoised_fn=None, cond_fn=None,
                            model_kwargs=None, device=None, progress=False, noise_level=500, noise=None,
                            callback=None, noise_fn=None):
        """Stochastic (DDPM) translation: noise ``img`` to level L-1 with q_sample, then run
        guided ``p_sample`` from t = L-1 down to 0 (SPEC section 10: not a fixed t = 499).

        ``noise`` fixes the q_sample draw; ``noise_fn(x, t)`` may supply each step's noise.
        Returns (sample, x_noisy, img).
        """
        img = self._known_input(shape, img, device)
        L = _check_noise_level(noise_level, self.num_timesteps)
        t = th.full((img.shape[0],), L - 1, dtype=th.long, device=img.device)
        x_noisy = self.q_sample(img, t, noise=noise)
        x = self._last(self._run(self.p_sample, model, x_noisy, range(L)[::-1], progress=progress,
                                 callback=callback, noise_fn=noise_fn, clip_denoised=clip_denoised,
                                 denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs), x_noisy)
        return x, x_noisy, img

    # ---- training

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None,
                      model_output=None) -> dict:
        """The variational-bound term of step t in bits per dimension: KL for t > 0,
        the discretised decoder NLL at t = 0. Returns dict(output (B,), pred_xstart)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        if model_output is None:
            out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        else:
            out = self._p_mean_variance_from_output(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll) / np.log(2.0)
        return {"output": th.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start: th.Tensor, t: th.Tensor, model_kwargs: dict | None = None,
                        noise: th.Tensor | None = None) -> dict:
        """Per-sample training losses at timesteps t: dict(loss, mse, vb), each (B,).

        With a learned variance the loss is the hybrid MSE + VB of Improved DDPM; the VB
        term sees the mean prediction detached, so it only trains the variance.
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = th.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        C = x_t.shape[1]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"learned variance needs {2 * C} output channels, got {model_output.shape[1]}")
            model_output, var_values = th.split(model_output, C, dim=1)
            frozen = th.cat([model_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(None, x_start, x_t, t, clip_denoised=False,
                                             model_output=frozen)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = noise
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
