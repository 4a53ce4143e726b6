"""Training loops for the diffusion UNet and the noise-aware classifier.

Shared machinery (``_Trainer``): DistributedDataParallel when a process group is
up, mixed precision with ``torch.autocast`` (+ ``GradScaler`` for fp16, which
unscales *every* parameter's gradient: SPEC section 10), AdamW (fused on CUDA),
atomic checkpoints, exact resume, and per-step seeding so that

* a resumed run reaches the same weights as an uninterrupted one, and
* N processes with batch b reach the same weights as one process with batch N*b:
  each step draws the timesteps and noise of the *global* batch from a generator
  seeded by (seed, step), and each rank takes its slice.

Rank 0 alone writes checkpoints, logs and Visdom.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch as th
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..resample import LossAwareSampler, UniformSampler
from ..util import checkpoint as ckpt
from ..util import dist_util, logger
from ..util.errors import UserError

PRECISIONS = {"fp32": None, "bf16": th.bfloat16, "fp16": th.float16}


def autocast_for(device: th.device, precision: str):
    """Context-manager factory for the chosen precision (fp32: no autocast)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: th.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainConfig:
    """Hyper-parameters shared by both training loops (flag names of the scripts)."""

    batch_size: int = 1  # per process
    microbatch: int = -1  # -1: no gradient accumulation
    lr: float = 1e-4
    weight_decay: float = 0.0
    total_steps: int = 0  # stop after this many steps (0: never)
    anneal_lr: bool = False  # linear decay to 0 at total_steps
    log_interval: int = 10
    save_interval: int = 10000
    precision: str = "fp32"
    seed: int = 0
    resume_checkpoint: str = ""  # a modelNNNNNN.pt, "auto" (newest in log_dir) or ""
    log_dir: str = "."
    use_compile: bool = False
    progress: bool = True


def _step_generator(seed: int, step: int, device: th.device) -> th.Generator:
    gen = th.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return gen


class _Trainer:
    """Optimizer, DDP, precision, checkpoints and the step loop; subclasses define the loss."""

    kind = "model"

    def __init__(self, model: th.nn.Module, diffusion, make_data: Callable[[int], Iterator], config: TrainConfig,
                 schedule_sampler=None, monitor=None, device: th.device | None = None):
        self.model = model
        self.diffusion = diffusion
        self.cfg = config
        self.device = device or next(model.parameters()).device
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.monitor = monitor
        self.rank = dist_util.get_rank()
        self.world = dist_util.get_world_size()
        self.is_main = self.rank == 0
        if config.microbatch > 0 and config.batch_size % config.microbatch:
            raise UserError(f"--microbatch {config.microbatch} must divide --batch_size {config.batch_size}")
        self.microbatch = config.microbatch if config.microbatch > 0 else config.batch_size
        self.autocast = autocast_for(self.device, config.precision)
        self.scaler = th.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.opt = th.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=self.device.type == "cuda")
        self.step = 0
        self._resume()
        dist_util.sync_params(self.model.parameters())
        net = self.model
        if self.world > 1:
            net = DDP(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        if config.use_compile:
            # static shapes: the batch shape is fixed; dynamic-shape graphs are slower and, in torch
            # 2.13's inductor, can fail to compile once a process has compiled another input size
            net = th.compile(net, dynamic=False)
        self.net = net
        self.data = make_data(self.step)
        self._sums: dict[str, th.Tensor] = {}
        self._count = 0

    # -- checkpoints -------------------------------------------------------

    def _extra_files(self, step: int) -> list[str]:
        """Files besides modelNNNNNN.pt that make a checkpoint complete."""
        return [f"opt{step:06d}.pt"]

    def _resume(self) -> None:
        spec = self.cfg.resume_checkpoint
        if not spec:
            return
        if spec == "auto":
            if self.is_main:
                for name in ckpt.remove_stale_temporaries(self.cfg.log_dir):
                    logger.log(f"removed {name}, left half-written by an interrupted run")
            candidates = ckpt.list_model_checkpoints(self.cfg.log_dir)
            for step, path in candidates:
                try:
                    self._load_checkpoint(path, step)
                    logger.log(f"resumed from {path} (step {step})")
                    return
                except ckpt.CheckpointError as e:
                    logger.warn(f"skipping checkpoint: {e}")
            if candidates:
                logger.warn(f"no usable checkpoint in {self.cfg.log_dir}; starting from scratch")
            return
        self._load_checkpoint(spec, ckpt.step_of(spec))
        logger.log(f"resumed from {spec} (step {self.step})")

    def _load_checkpoint(self, path: str, step: int) -> None:
        folder = os.path.dirname(path) or "."
        # load every file first, then apply: a bad file leaves the trainer untouched
        model_state = ckpt.load(path)
        extras = {name: ckpt.load(os.path.join(folder, name)) for name in self._extra_files(step)}
        opt_state = extras[f"opt{step:06d}.pt"]
        if not isinstance(opt_state, dict) or "param_groups" not in opt_state:
            raise ckpt.CheckpointError(f"{os.path.join(folder, f'opt{step:06d}.pt')}: not an optimizer state")
        ckpt.apply_state_dict(self.model, model_state, path, self.kind)  # clear error on a mismatch
        self.opt.load_state_dict({k: opt_state[k] for k in ("state", "param_groups")})
        if "grad_scaler" in opt_state and opt_state["grad_scaler"]:
            self.scaler.load_state_dict(opt_state["grad_scaler"])
        self._load_extras(extras, step)
        self.step = int(opt_state.get("step", step))

    def _load_extras(self, extras: dict, step: int) -> None:
        pass

    def save(self) -> None:
        """Write this step's checkpoint files atomically (rank 0 only)."""
        if self.is_main:
            d = self.cfg.log_dir
            os.makedirs(d, exist_ok=True)
            s = self.step
            opt_state = dict(self.opt.state_dict())
            opt_state["step"] = s
            opt_state["grad_scaler"] = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            # extras first, the model file last: a model file marks a complete checkpoint
            ckpt.save(opt_state, os.path.join(d, f"opt{s:06d}.pt"))
            self._save_extras(s)
            ckpt.save(self.model.state_dict(), os.path.join(d, f"model{s:06d}.pt"))
        dist_util.barrier()

    def _save_extras(self, step: int) -> None:
        pass

    # -- the loop ----------------------------------------------------------

    def _lr_at(self, step: int) -> float:
        if not (self.cfg.anneal_lr and self.cfg.total_steps):
            return self.cfg.lr
        return self.cfg.lr * (1 - step / self.cfg.total_steps)

    def _global_draw(self, step: int, shape):
        """Timesteps and noise for this rank's slice of the global batch at ``step``."""
        gen = _step_generator(self.cfg.seed, step, self.device)
        B = self.cfg.batch_size
        global_b = B * self.world
        t, w = self.schedule_sampler.sample(global_b, self.device, generator=gen)
        noise = th.randn((global_b, *shape[1:]), generator=gen, device=self.device)
        sl = slice(self.rank * B, (self.rank + 1) * B)
        return t[sl], w[sl], noise[sl]

    def run_loop(self) -> None:
        total = self.cfg.total_steps
        bar = None
        if self.cfg.progress and self.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=total or None, initial=self.step, desc=f"train {self.kind}", dynamic_ncols=True)
        try:
            while not total or self.step < total:
                batch, cond = next(self.data)
                for group in self.opt.param_groups:
                    group["lr"] = self._lr_at(self.step)
                th.manual_seed(self.cfg.seed * 7919 + self.step)  # dropout: same stream after resume
                self.run_step(batch.to(self.device, non_blocking=True),
                              {k: v.to(self.device, non_blocking=True) for k, v in cond.items()
                               if th.is_tensor(v)})
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.cfg.log_interval == 0:
                    self.log_step()
                if self.step % self.cfg.save_interval == 0:
                    self.save()
                self.periodic()
            if self.step % self.cfg.save_interval != 0:
                self.save()
            if self._count:
                self.log_step()
        finally:
            if bar is not None:
                bar.close()

    def run_step(self, batch: th.Tensor, cond: dict) -> None:
        self.opt.zero_grad(set_to_none=True)
        t, weights, noise = self._global_draw(self.step, batch.shape)
        n_micro = batch.shape[0] // self.microbatch
        for i in range(0, batch.shape[0], self.microbatch):
            sl = slice(i, i + self.microbatch)
            last = i + self.microbatch >= batch.shape[0]
            sync = contextlib.nullcontext() if last or not isinstance(self.net, DDP) else self.net.no_sync()
            with sync:
                with self.autocast():
                    loss, terms = self.compute_loss(batch[sl], {k: v[sl] for k, v in cond.items()},
                                                    t[sl], weights[sl], noise[sl])
                self.scaler.scale(loss / n_micro).backward()
            self._accumulate(terms)
        self.scaler.step(self.opt)  # unscales all gradients of the optimizer, then steps
        self.scaler.update()
        self.after_step()

    def compute_loss(self, x, cond, t, weights, noise):
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (EMA updates)."""

    def periodic(self) -> None:
        """Called after the step counter advanced (held-out evaluation)."""

    def _accumulate(self, terms: dict) -> None:
        # device-side sums: no host synchronisation inside the step
        for k, v in terms.items():
            v = v.detach().float().mean()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._count += 1

    def log_step(self) -> dict:
        values = {k: (v / self._count).item() for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        if self.is_main:
            for k, v in values.items():
                logger.logkv(k, v)
            logger.logkv("step", self.step)
            logger.logkv("lr", self.opt.param_groups[0]["lr"])
            logger.dumpkvs()
            if self.monitor is not None:
                self.monitor.line(f"{self.kind}_loss", self.step,
                                  {k: v for k, v in values.items() if not k.startswith("acc")},
                                  title=f"{self.kind} training loss")
                acc = {k: v for k, v in values.items() if k.startswith("acc")}
                if acc:
                    self.monitor.line(f"{self.kind}_accuracy", self.step, acc, title=f"{self.kind} accuracy")
        return values


class TrainLoop(_Trainer):
    """Diffusion UNet training with the hybrid loss and EMA weights (guided diffusion's TrainLoop)."""

    kind = "model"

    def __init__(self, model, diffusion, make_data, config: TrainConfig, ema_rate="0.9999", **kwargs):
        self.ema_rate = [float(r) for r in str(ema_rate).split(",")] if str(ema_rate) else []
        self.ema_params = [[p.detach().clone() for p in model.parameters()] for _ in self.ema_rate]
        super().__init__(model, diffusion, make_data, config, **kwargs)

    def _ema_name(self, rate: float, step: int) -> str:
        return f"ema_{rate}_{step:06d}.pt"

    def _extra_files(self, step):
        return super()._extra_files(step) + [self._ema_name(r, step) for r in self.ema_rate]

    def _load_extras(self, extras, step):
        names = [n for n, _ in self.model.named_parameters()]
        for rate, params in zip(self.ema_rate, self.ema_params):
            state = extras[self._ema_name(rate, step)]
            for name, p in zip(names, params):
                if name not in state or state[name].shape != p.shape:
                    raise ckpt.CheckpointError(f"{self._ema_name(rate, step)}: EMA weights do not fit the model")
                p.copy_(state[name])

    def _save_extras(self, step):
        for rate, params in zip(self.ema_rate, self.ema_params):
            ckpt.save(self.ema_state_dict(params), os.path.join(self.cfg.log_dir, self._ema_name(rate, step)))

    def ema_state_dict(self, params) -> dict:
        state = self.model.state_dict()
        for (name, _), p in zip(self.model.named_parameters(), params):
            state[name] = p.detach().clone()
        return state

    def compute_loss(self, x, cond, t, weights, noise):
        losses = self.diffusion.training_losses(self.net, x, t, model_kwargs=cond, noise=noise)
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
        return (losses["loss"] * weights).mean(), losses

    def after_step(self) -> None:
        params = [p.detach() for p in self.model.parameters()]
        for rate, ema in zip(self.ema_rate, self.ema_params):
            th._foreach_lerp_(ema, params, 1.0 - rate)  # ema <- rate * ema + (1 - rate) * p


class ClassifierTrainLoop(_Trainer):
    """Noise-aware classifier: cross entropy of classifier(q_sample(x, t), t) against the label."""

    kind = "classifier"

    def __init__(self, classifier, diffusion, make_data, config: TrainConfig, noised: bool = True,
                 make_val_data: Callable[[], Iterator] | None = None, eval_interval: int = 0, **kwargs):
        self.noised = noised
        self.make_val_data = make_val_data
        self.eval_interval = eval_interval
        super().__init__(classifier, diffusion, make_data, config, **kwargs)

    def _logits_and_terms(self, net, x, y, t, noise):
        if self.noised:
            x = self.diffusion.q_sample(x, t, noise=noise)
        else:
            t = th.zeros_like(t)
        logits = net(x, t)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        acc = (logits.argmax(dim=-1) == y).float()
        return loss, {"loss": loss, "acc": acc}

    def compute_loss(self, x, cond, t, weights, noise):
        loss, terms = self._logits_and_terms(self.net, x, cond["y"], t, noise)
        return loss.mean(), terms

    def periodic(self) -> None:
        if self.make_val_data is not None and self.eval_interval and self.step % self.eval_interval == 0:
            self.evaluate()

    @th.no_grad()
    def evaluate(self, max_batches: int = 4) -> dict:
        """Loss and accuracy on held-out data at random noise levels (seeded per step)."""
        self.model.eval()
        sums = {}
        n = 0
        gen = _step_generator(self.cfg.seed + 1, self.step, self.device)
        for i, (x, cond) in enumerate(self.make_val_data()):
            if i >= max_batches:
                break
            x = x.to(self.device)
            y = cond["y"].to(self.device)
            t = th.randint(0, self.diffusion.num_timesteps, (x.shape[0],), generator=gen, device=self.device)
            noise = th.randn(x.shape, generator=gen, device=self.device)
            with self.autocast():
                _, terms = self._logits_and_terms(self.model, x, y, t, noise)
            for k, v in terms.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + v.float().sum().item()
            n += x.shape[0]
        self.model.train()
        values = {k: v / max(n, 1) for k, v in sums.items()}
        if self.is_main and values:
            for k, v in values.items():
                logger.logkv(k, v)
            if self.monitor is not None:
                self.monitor.line("classifier_accuracy", self.step, {"val_acc": values["val_acc"]},
                                  title="classifier accuracy")
        return values
