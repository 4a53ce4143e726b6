"""The training scaffold: one loop for every model.

A model is a small *piece* (:class:`Piece`; the diffusion UNet, the classifier, the VAE,
FixedPoint-GAN and the denoising autoencoder are in :mod:`guided_diffusion.pipeline.pieces`):
it names its networks and parameter groups and computes its losses. The :class:`Trainer`
owns everything else:

* the step loop, the learning rate (constant, or annealed linearly to 0 at the last step) and
  the progress bar;
* randomness: step k draws what it needs for the *global* batch (timesteps, noise, targets)
  from a generator seeded by (seed, k), and each rank takes its slice, so N processes with
  batch b see what one process with batch N*b sees and a resumed run what an uninterrupted
  one saw; dropout masks come from the global RNG seeded by (seed, k, rank), so every rank
  draws its own;
* mixed precision: ``torch.autocast`` and one ``GradScaler`` for all optimizers, which unscales
  *every* parameter's gradient (SPEC section 10: the original unscaled only the first);
* AdamW per parameter group (fused on CUDA), gradient accumulation over micro-batches;
* gradient averaging across ranks: DistributedDataParallel for a piece's main network (with
  ``no_sync`` on all but the last micro-batch), an averaging all-reduce for the others;
* atomic checkpoints with one naming scheme (:func:`util.checkpoint.checkpoint_name`): the
  optimizer file first, the piece's files, its marker file last; resume from any file of a
  checkpoint or ``auto`` (the newest complete one);
* logging: device-side sums of the loss terms (no host sync inside a step), averaged every
  ``log_interval`` steps to one line of stdout, ``log.txt``, ``progress.csv`` and Visdom;
  ``progress.png`` beside ``progress.csv`` at every checkpoint;
* stopping: SIGTERM or SIGUSR1 (a cluster's preemption) ends the run between two steps with a
  checkpoint of the step reached (every rank stops at the same step), then raises
  :class:`~guided_diffusion.util.errors.Stopped`; ``--resume_checkpoint auto`` continues it to the
  weights an uninterrupted run reaches;
* never overwriting: a ``log_dir`` that holds checkpoints is an error unless the run resumes.

Rank 0 alone writes checkpoints, logs and Visdom.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch as th
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..unet_forensics import check_state_dict
from ..util import checkpoint as ckpt
from ..util import dist_util, logger
from ..util.errors import MissingInputError, Stopped, UserError
from ..util.flags import DataFlags, RunFlags, SpeedFlags, TrainFlags
from ..util.progress_plot import plot_progress
from .devices import autocast_for

OPT = "opt"  # prefix of the optimizer file of a checkpoint
# a cluster's notice of preemption: SLURM's scancel and time limit send SIGTERM (``--signal=USR1@120``
# asks for SIGUSR1 ahead of it), torchrun and mpiexec pass SIGTERM on to every process
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_GROUP_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


@dataclass(frozen=True)
class TrainConfig:
    """What the scaffold needs to know: the run's flag groups as parsed, and what a script works out
    from them (defaults: the flag registry's)."""

    training: TrainFlags = field(default_factory=TrainFlags)  # AdamW, micro-batches, intervals, resume
    run: RunFlags = field(default_factory=RunFlags)  # seed, log folder (none: the working folder), progress bar
    # precision (the one a script resolved from --precision and --use_fp16), compile, channels last
    speed: SpeedFlags = field(default_factory=SpeedFlags)
    batch_size: int = DataFlags.batch_size  # per process
    total_steps: int = 0  # stop after this many steps (0: never)
    anneal_lr: bool = False  # linear decay to 0 at total_steps
    fused: bool | None = None  # AdamW's fused kernels; None: on CUDA
    epoch_size: int = 0  # training images, for the logged epoch (0: not logged)


class Piece:
    """What a model plugs into the :class:`Trainer` (override what applies).

    ``kind`` names the model in logs, the progress bar and Visdom windows.
    """

    kind = "model"

    def modules(self) -> dict[str, th.nn.Module]:
        """The networks by checkpoint-file prefix, in the order they are written; the last one's
        file marks a complete checkpoint (and is what translation loads)."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, tuple[list[th.nn.Parameter], dict]]:
        """Optimizer name -> (parameters, extra AdamW options such as betas)."""
        raise NotImplementedError

    def main_module(self) -> th.nn.Module | None:
        """The network DDP wraps (called once per micro-batch through ``trainer.net``), or None:
        the gradients of every optimizer are then averaged across ranks by an all-reduce."""
        return None

    def step(self, trainer: "Trainer", x: th.Tensor, cond: dict) -> None:
        """One training step on this rank's batch: call ``trainer.minimise`` per optimizer."""
        raise NotImplementedError

    def after_step(self, trainer: "Trainer") -> None:
        """After the optimizer steps (EMA updates)."""

    def periodic(self, trainer: "Trainer") -> None:
        """After the step counter advanced (held-out evaluation)."""

    def show(self, trainer: "Trainer", x: th.Tensor) -> None:
        """At each log step, with Visdom on: show what the model makes of ``x``."""

    def state_dicts(self) -> dict[str, dict]:
        """Checkpoint files by prefix (the marker last); default: one per module."""
        return {name: net.state_dict() for name, net in self.modules().items()}

    def check_state_dicts(self, states: dict[str, dict], paths: dict[str, str]) -> None:
        """Raise a :class:`~guided_diffusion.util.checkpoint.CheckpointError` naming the file when a
        state does not fit; called for every file before anything is loaded."""
        for name, net in self.modules().items():
            check_state_dict(net, states[name], paths[name], f"{self.kind} {name}")

    def load_state_dicts(self, states: dict[str, dict]) -> None:
        for name, net in self.modules().items():
            net.load_state_dict(states[name], strict=True)


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global RNG (dropout masks) at ``step`` on ``rank``: each rank its own stream,
    the same one again after a resume."""
    digest = hashlib.sha256(f"dropout:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def step_generator(seed: int, step: int, device: th.device) -> th.Generator:
    """The generator of step ``step``: the global batch's timesteps, noise and targets."""
    gen = th.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return gen


class Trainer:
    """The scaffold (see the module docstring).

    :param piece: the model.
    :param make_data: ``make_data(start_step)`` -> an endless iterator of ``(x, cond)`` batches of
        this rank, starting at global batch ``start_step``.
    """

    def __init__(self, piece: Piece, make_data: Callable[[int], Iterator], config: TrainConfig,
                 monitor=None, device: th.device | None = None):
        self.piece = piece
        self.cfg = config
        modules = piece.modules()
        self.device = device or next(next(iter(modules.values())).parameters()).device
        self.monitor = monitor
        self.rank = dist_util.get_rank()
        self.world = dist_util.get_world_size()
        self.is_main = self.rank == 0
        self.log_dir = config.run.log_dir or "."
        t = config.training
        if config.batch_size < 1:
            raise UserError(f"--batch_size {config.batch_size}: expected a positive integer")
        if t.microbatch > 0 and config.batch_size % t.microbatch:
            raise UserError(f"--microbatch {t.microbatch} must divide --batch_size {config.batch_size}")
        if t.log_interval < 1 or t.save_interval < 1:
            raise UserError(f"--log_interval {t.log_interval} / --save_interval {t.save_interval}: "
                            "expected positive step counts")
        if t.lr <= 0:
            raise UserError(f"--lr {t.lr}: expected a positive learning rate")
        self.microbatch = t.microbatch if t.microbatch > 0 else config.batch_size
        self.autocast = autocast_for(self.device, config.speed.precision)
        self.scaler = th.amp.GradScaler(self.device.type, enabled=config.speed.precision == "fp16")
        self.fused = config.fused if config.fused is not None else self.device.type == "cuda"
        for net in modules.values():
            net.train()
            if config.speed.channels_last:
                net.to(memory_format=th.channels_last)
        self.optimizers = {
            name: th.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=self.fused, **options)
            for name, (params, options) in piece.param_groups().items()}
        self.step = 0
        self._resume()
        self._saved_step = self.step  # the step of the checkpoint on disk (loaded or written)
        for net in modules.values():
            dist_util.sync_params(net.parameters())
        self.net = self._wrap(piece.main_module())
        self.data = make_data(self.step)
        self.global_batch = config.batch_size * self.world
        self.generator: th.Generator | None = None
        self._sums: dict[str, th.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.last_logged: dict[str, float] = {}
        self._signal = 0  # set by the handler of STOP_SIGNALS while run_loop runs
        self._bar = None
        self._plotted = -1  # the size of progress.csv when progress.png was drawn
        # the ranks agree on stopping through a CPU all-reduce: no GPU synchronisation between steps
        self._stop_group = None
        if self.world > 1:
            self._stop_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    @property
    def opt(self) -> th.optim.Optimizer:
        """The optimizer of a one-optimizer piece (guided diffusion's ``TrainLoop.opt``)."""
        if len(self.optimizers) != 1:
            raise AttributeError(f"the {self.piece.kind} has optimizers {', '.join(self.optimizers)}")
        return next(iter(self.optimizers.values()))

    def _wrap(self, net: th.nn.Module | None):
        if net is None:
            return None
        if self.world > 1:
            net = DDP(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        if self.cfg.speed.compile:
            # static shapes: the batch shape is fixed; dynamic-shape graphs are slower and, in torch
            # 2.13's inductor, can fail to compile once a process has compiled another input size
            net = th.compile(net, dynamic=False)
        return net

    # -- randomness of a step ------------------------------------------------

    def mine(self, *global_tensors: th.Tensor):
        """This rank's slice of tensors drawn for the global batch (first axis)."""
        sl = slice(self.rank * self.cfg.batch_size, (self.rank + 1) * self.cfg.batch_size)
        out = tuple(t[sl] for t in global_tensors)
        return out[0] if len(out) == 1 else out

    def randn(self, *item_shape: int) -> th.Tensor:
        """Standard normal noise for this rank's images, drawn for the global batch: (B, *item_shape)."""
        return self.mine(th.randn((self.global_batch, *item_shape), generator=self.generator, device=self.device))

    def rand(self, *item_shape: int) -> th.Tensor:
        """Uniform [0, 1) values for this rank's images, drawn for the global batch."""
        return self.mine(th.rand((self.global_batch, *item_shape), generator=self.generator, device=self.device))

    def randint(self, high: int, *item_shape: int) -> th.Tensor:
        """Integers in [0, high) for this rank's images, drawn for the global batch."""
        return self.mine(th.randint(0, high, (self.global_batch, *item_shape), generator=self.generator,
                                    device=self.device))

    # -- one optimizer step ----------------------------------------------------

    def minimise(self, name: str, loss_fn: Callable[[slice], tuple[th.Tensor, dict]], batch_size: int) -> None:
        """Step optimizer ``name`` on ``loss_fn``, summed over the micro-batches of this rank's batch.

        ``loss_fn(sl)`` returns the mean loss of the images ``sl`` of the batch and a dict of loss
        terms to log (tensors; their means are logged). Gradients are averaged across ranks.
        """
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        n_micro = max(1, batch_size // self.microbatch)
        ddp = isinstance(self.net, DDP) or isinstance(getattr(self.net, "_orig_mod", None), DDP)
        for i in range(0, batch_size, self.microbatch):
            sl = slice(i, i + self.microbatch)
            last = i + self.microbatch >= batch_size
            sync = self._ddp_module().no_sync() if ddp and not last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    loss, terms = loss_fn(sl)
                self.scaler.scale(loss / n_micro).backward()
            self._accumulate(terms)
        if self.world > 1 and not ddp:
            self._average_gradients(opt)
        self.scaler.step(opt)  # unscales all gradients of the optimizer, then steps

    def _ddp_module(self) -> DDP:
        return self.net if isinstance(self.net, DDP) else self.net._orig_mod

    def _average_gradients(self, opt: th.optim.Optimizer) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = th.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def run_step(self, batch: th.Tensor, cond: dict) -> None:
        """One training step on this rank's ``batch`` (the step counter is not advanced)."""
        self.generator = step_generator(self.cfg.run.seed, self.step, self.device)
        if self.cfg.speed.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=th.channels_last)
        self.piece.step(self, batch, cond)
        self.scaler.update()
        self.piece.after_step(self)

    # -- the loop -------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step``: constant, or lr * (1 - step / total_steps) when annealed."""
        if not (self.cfg.anneal_lr and self.cfg.total_steps):
            return self.cfg.training.lr
        return self.cfg.training.lr * (1 - step / self.cfg.total_steps)

    def run_loop(self) -> None:
        """Train to ``total_steps`` (or until stopped). A stop signal between two steps writes the
        checkpoint of the step reached and raises :class:`~guided_diffusion.util.errors.Stopped`."""
        total = self.cfg.total_steps
        bar = None
        if self.cfg.run.progress and self.is_main and (not total or self.step < total):
            from tqdm.auto import tqdm
            bar = tqdm(total=total or None, initial=self.step, desc=f"train {self.piece.kind}", dynamic_ncols=True)
        self._bar = bar
        try:
            with self._stop_signals():
                while not total or self.step < total:
                    signum = self._agreed_stop()
                    if signum:
                        self._stop(signum)
                    self._train_one_step()
            if self._counts:  # the last steps' losses, in the log and progress.png of the last checkpoint
                self.log_step()
            if self._saved_step != self.step:
                self.save()
        finally:
            self._bar = None
            if bar is not None:
                bar.close()

    def _train_one_step(self) -> None:
        batch, cond = next(self.data)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = self.lr_at(self.step)
        th.manual_seed(dropout_seed(self.cfg.run.seed, self.step, self.rank))
        batch = batch.to(self.device, non_blocking=True)
        self.run_step(batch, {k: v.to(self.device, non_blocking=True) for k, v in cond.items() if th.is_tensor(v)})
        self.step += 1
        if self._bar is not None:
            self._bar.update(1)
        if self.step % self.cfg.training.log_interval == 0:
            self.log_step()
            if self.monitor is not None and self.monitor.enabled:
                self.piece.show(self, batch)
        if self.step % self.cfg.training.save_interval == 0:
            self.save()
        self.piece.periodic(self)

    # -- stopping on a signal ---------------------------------------------------

    @contextlib.contextmanager
    def _stop_signals(self):
        """While training: STOP_SIGNALS only set a flag, checked between steps; the previous handlers
        come back afterwards. (Python runs handlers in the main thread only; elsewhere nothing changes.)"""
        self._signal = 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self._signal = signum

        previous = {}
        try:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, handler)
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler not set from Python

    def _agreed_stop(self) -> int:
        """The stop signal, once any rank has received one (every rank asks at the same step), else 0."""
        if self.world == 1:
            return self._signal
        flag = th.tensor([self._signal], dtype=th.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
        return int(flag.item())

    def _stop(self, signum: int) -> None:
        """Checkpoint the step reached (rank 0 writes, atomically) and stop every rank alike."""
        if self._counts:
            self.log_step()
        if self._saved_step != self.step:
            self.save()
        marker = self.checkpoint_path(self.marker_prefix(), self.step)
        raise Stopped(signum, f"stopped by {signal.Signals(signum).name} at step {self.step}, its checkpoint "
                              f"written ({marker}); continue with --resume_checkpoint auto --log_dir "
                              f"{self.log_dir}")

    def _accumulate(self, terms: dict) -> None:
        # device-side sums: no host synchronisation inside the step
        for k, v in terms.items():
            v = v.detach().float().mean()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def log_step(self) -> dict:
        """Average the loss terms since the last log step; rank 0 writes them. Returns the means."""
        values = {k: (v / self._counts[k]).item() for k, v in self._sums.items()}
        self._sums, self._counts = {}, {}
        if self.is_main:
            for k, v in sorted(values.items()):
                logger.logkv(k, v)
            logger.logkv("step", self.step)
            if self.cfg.epoch_size:
                logger.logkv("epoch", self.step * self.global_batch / self.cfg.epoch_size)
            logger.logkv("lr", self.lr_at(max(self.step - 1, 0)))
            with self._bar_cleared():
                logger.dumpkvs()
            if self.monitor is not None:
                kind = self.piece.kind
                losses = {k: v for k, v in values.items() if not k.startswith("acc")}
                self.monitor.line(f"{kind}_loss", self.step, losses, title=f"{kind} training loss")
                acc = {k: v for k, v in values.items() if k.startswith("acc")}
                if acc:
                    self.monitor.line(f"{kind}_accuracy", self.step, acc, title=f"{kind} accuracy")
        self.last_logged = values
        return values

    def _bar_cleared(self):
        """Around a line written to stdout while the progress bar (stderr) shows: the bar is wiped
        first and redrawn under the line, so the two never share a terminal line."""
        if self._bar is None:
            return contextlib.nullcontext()
        return self._bar.external_write_mode(file=sys.stdout)

    # -- checkpoints ------------------------------------------------------------

    def marker_prefix(self) -> str:
        return list(self.piece.state_dicts())[-1]

    def checkpoint_path(self, prefix: str, step: int) -> str:
        return os.path.join(self.log_dir, ckpt.checkpoint_name(prefix, step))

    def save(self) -> None:
        """Write this step's checkpoint files atomically (rank 0 only): the optimizer file first,
        then the piece's files, its marker last, so a marker file means a complete checkpoint."""
        if self.is_main:
            os.makedirs(self.log_dir, exist_ok=True)
            states = {OPT: self._optimizer_state(), **self.piece.state_dicts()}
            for prefix, state in states.items():
                ckpt.save(state, self.checkpoint_path(prefix, self.step))
            self._plot_progress()
        self._saved_step = self.step
        dist_util.barrier()

    def _plot_progress(self) -> None:
        """progress.png beside the logger's progress.csv: the curves so far, for users without Visdom."""
        folder = logger.get_dir()
        csv_path = os.path.join(folder, "progress.csv") if folder else ""
        if not csv_path or not os.path.exists(csv_path) or os.path.getsize(csv_path) == self._plotted:
            return  # no rows, or none since the last figure
        self._plotted = os.path.getsize(csv_path)
        try:
            plot_progress(csv_path, os.path.join(folder, "progress.png"))
        except (OSError, ValueError) as e:  # a figure is not worth the run: say so and train on
            logger.warn(f"{folder}/progress.png: not drawn ({e})")

    def _optimizer_state(self) -> dict:
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        if len(self.optimizers) == 1:  # the layout of guided diffusion's opt files, plus the step
            return {**self.opt.state_dict(), "step": self.step, "grad_scaler": scaler}
        return {"step": self.step, "grad_scaler": scaler,
                **{name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def _resume(self) -> None:
        spec = self.cfg.training.resume_checkpoint
        if not spec:
            self._refuse_to_overwrite()
            return
        if spec == "auto":
            self._resume_newest()
            return
        if not os.path.isfile(spec):
            raise MissingInputError(f"--resume_checkpoint {spec}: no such file")
        prefixes = [OPT, *self.piece.state_dicts()]
        parsed = ckpt.parse_checkpoint_name(spec)
        if parsed is None or parsed[0] not in prefixes:
            raise UserError(f"--resume_checkpoint {spec}: expected a file named "
                            f"{' or '.join(p + 'NNNNNN.pt' for p in prefixes)} of a {self.piece.kind} run")
        self.load(os.path.dirname(spec) or ".", parsed[1])
        logger.log(f"resumed from {spec} (step {self.step})")

    def _refuse_to_overwrite(self) -> None:
        """A fresh run into a folder of checkpoints would overwrite them step by step (model000004.pt of
        this run over the earlier run's): an error that says how to continue or where to start afresh."""
        folder = self.log_dir
        found = sorted((parsed[1], name) for name in (os.listdir(folder) if os.path.isdir(folder) else ())
                       if (parsed := ckpt.parse_checkpoint_name(name)) is not None)
        if found:
            step = found[-1][0]
            names = ", ".join(name for s, name in found if s == step)
            raise UserError(f"--log_dir {folder}: holds the checkpoints of an earlier run (the newest: {names}); "
                            "continue it with --resume_checkpoint auto, or start afresh with another --log_dir")

    def _resume_newest(self) -> None:
        folder = self.log_dir
        if self.is_main:
            for name in ckpt.remove_stale_temporaries(folder):
                logger.warn(f"removed the half-written {name} of an interrupted run")
        dist_util.barrier()
        candidates = ckpt.list_checkpoints(folder, self.marker_prefix())
        for step, _ in candidates:
            try:
                self.load(folder, step)
            except ckpt.CheckpointError as e:
                logger.warn(f"skipping checkpoint: {e}")
                continue
            logger.log(f"resumed from step {step} in {folder}")
            return
        if candidates:
            logger.warn(f"no usable checkpoint in {folder}; starting from scratch")

    def load(self, folder: str, step: int) -> None:
        """Load every file of the checkpoint at ``step``; a bad file leaves everything untouched."""
        prefixes = list(self.piece.state_dicts())
        paths = {prefix: os.path.join(folder, ckpt.checkpoint_name(prefix, step)) for prefix in [OPT, *prefixes]}
        states = {prefix: ckpt.load(paths[prefix]) for prefix in prefixes}
        self.piece.check_state_dicts(states, paths)
        opt_state = ckpt.load(paths[OPT])
        saved = self._optimizer_states(opt_state, paths[OPT])
        before = {name: copy.deepcopy(opt.state_dict()) for name, opt in self.optimizers.items()}
        try:
            for name, opt in self.optimizers.items():
                _load_optimizer(opt, saved[name])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(before[name])
            raise ckpt.CheckpointError(f"{paths[OPT]}: the optimizer state does not fit the flags ({e})") from None
        self.piece.load_state_dicts(states)
        if self.scaler.is_enabled() and opt_state.get("grad_scaler"):
            self.scaler.load_state_dict(opt_state["grad_scaler"])
        self.step = int(opt_state.get("step", step))

    def _optimizer_states(self, opt_state, path: str) -> dict[str, dict]:
        if not isinstance(opt_state, dict):
            raise ckpt.CheckpointError(f"{path}: expected an optimizer state dict")
        if len(self.optimizers) == 1 and "param_groups" in opt_state:
            return {next(iter(self.optimizers)): opt_state}
        missing = [name for name in self.optimizers if not isinstance(opt_state.get(name), dict)]
        if missing:
            raise ckpt.CheckpointError(f"{path}: expected the optimizer states {', '.join(self.optimizers)} "
                                       f"of a {self.piece.kind} run, found {', '.join(map(str, opt_state)) or 'none'}")
        return {name: opt_state[name] for name in self.optimizers}


def _load_optimizer(opt: th.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict(saved)`` keeping this run's kernel options: a checkpoint written
    without fused AdamW (on a CPU, or by the original code) would otherwise switch the fused
    kernel off, and GradScaler would then hand ``grad_scale`` to the foreach path, which refuses
    it; the step counters are also moved where the fused kernel needs them."""
    groups = []
    for group, current in zip(saved.get("param_groups", []), opt.param_groups):
        groups.append({**group, **{k: current[k] for k in _GROUP_OPTIONS if k in current}})
    opt.load_state_dict({**saved, "param_groups": groups})
