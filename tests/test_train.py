"""The training scaffold (pipeline/train.py) and its pieces: exact resume, mixed precision unscaling, checkpoint
files and safe loading."""
import dataclasses
import io
import os
import pickle
import re
import signal
import sys

import pytest
import torch as th
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET, have_cxx_compiler
from PIL import Image

from guided_diffusion.pipeline import runs
from guided_diffusion.pipeline.methods.vae import VAETrainConfig
from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainLoop, TrainLoop
from guided_diffusion.pipeline.train import TrainConfig
from guided_diffusion.pipeline.methods import diffusion
from guided_diffusion.script_util import (
    create_classifier_and_diffusion,
    create_model_and_diffusion,
)
from guided_diffusion.util import checkpoint as ckpt
from guided_diffusion.util import logger
from guided_diffusion.util.errors import Stopped, UserError
from guided_diffusion.util.flags import REGISTRY, RunFlags, SpeedFlags, TrainFlags
from guided_diffusion.util.flagspec import parse_flags
from guided_diffusion.util.progress_plot import plot_progress

TINY = {**TINY_UNET, "dropout": 0.1}


def batches(start):
    """Deterministic data by step, so a resumed run sees what an uninterrupted one sees."""
    step = start
    while True:
        g = th.Generator().manual_seed(1000 + step)
        yield th.rand(4, 4, 16, 16, generator=g), {"y": th.randint(0, 2, (4,), generator=g)}
        step += 1


def make_loop(log_dir, total, resume="", save_interval=2, precision="fp32", microbatch=-1, dropout=0.1,
              use_compile=False, device=None, fused=None, anneal_lr=False, log_interval=100, progress=False):
    th.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**{**TINY, "dropout": dropout})
    cfg = TrainConfig(TrainFlags(lr=1e-3, microbatch=microbatch, log_interval=log_interval, save_interval=save_interval,
                                 resume_checkpoint=resume),
                      RunFlags(log_dir=str(log_dir), seed=5, progress=progress),
                      SpeedFlags(precision=precision, compile=use_compile),
                      batch_size=4, total_steps=total, anneal_lr=anneal_lr, fused=fused)
    return TrainLoop(model.to(device), diffusion, batches, cfg, ema_rate="0.9,0.99", device=device)


def params_of(loop):
    return {k: v.clone() for k, v in loop.model.state_dict().items()}


def test_the_scaffold_takes_the_scripts_flag_groups_as_parsed():
    cfg = parse_flags(diffusion.ImageTrainConfig, ["--lr", "3e-4", "--microbatch", "1", "--seed", "7", "--log_dir", "run",
                                              "--progress", "False", "--channels_last", "True", "--batch_size", "3"])
    train_cfg = runs.train_config(cfg, 10, anneal=True, precision="fp16")
    assert train_cfg.training is cfg.training and train_cfg.run is cfg.run
    assert train_cfg.speed == SpeedFlags(precision="fp16", compile=False, channels_last=True)  # the resolved precision
    assert (train_cfg.batch_size, train_cfg.total_steps, train_cfg.anneal_lr) == (3, 10, True)
    # a script without speed flags trains in fp32, eager
    assert runs.train_config(parse_flags(VAETrainConfig, []), 5, anneal=False).speed == SpeedFlags()
    # no flag is declared again: the config's own fields are what a script works out (the per-process batch,
    # whether to anneal: --anneal_lr for the classifier, --lr_anneal_steps for the diffusion model)
    flags = {f.name for group in REGISTRY for f in group.flags()}
    own = {f.name for f in dataclasses.fields(TrainConfig)} - {"training", "run", "speed"}
    assert own & flags == {"batch_size", "anneal_lr"}


def test_resume_reaches_the_same_weights(tmp_path):
    straight = make_loop(tmp_path / "a", total=4)
    straight.run_loop()
    first = make_loop(tmp_path / "b", total=2)
    first.run_loop()
    names = sorted(os.listdir(tmp_path / "b"))
    assert names == ["ema_0.99_000002.pt", "ema_0.9_000002.pt", "model000002.pt", "opt000002.pt"]
    resumed = make_loop(tmp_path / "b", total=4, resume=str(tmp_path / "b" / "model000002.pt"))
    assert resumed.step == 2
    resumed.run_loop()
    a, b = params_of(straight), params_of(resumed)
    for k in a:
        th.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # EMA weights too
    ema_a = ckpt.load(str(tmp_path / "a" / "ema_0.9_000004.pt"))
    ema_b = ckpt.load(str(tmp_path / "b" / "ema_0.9_000004.pt"))
    for k in ema_a:
        th.testing.assert_close(ema_a[k], ema_b[k], rtol=1e-5, atol=1e-6)
    opt = ckpt.load(str(tmp_path / "b" / "opt000004.pt"))
    assert opt["step"] == 4


def test_annealed_learning_rate_is_what_each_step_uses(tmp_path):
    # lr * (1 - step / total) with lr = 1e-3, total = 4: 1e-3, 7.5e-4, 5e-4, 2.5e-4 (0 would come at step 4)
    loop = make_loop(tmp_path, total=4, save_interval=100, dropout=0.0, anneal_lr=True)
    assert [loop.lr_at(step) for step in range(5)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0], abs=1e-15)
    used = []
    loop.opt.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    loop.run_loop()
    assert used == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4], abs=1e-15)
    # without annealing: the constant rate at every step
    loop = make_loop(tmp_path / "constant", total=3, save_interval=100, dropout=0.0)
    used.clear()
    loop.opt.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    loop.run_loop()
    assert used == [1e-3] * 3


def test_ema_is_the_geometric_average_of_the_weights_after_each_step(tmp_path):
    # after k steps with weights w_1..w_k (w_0 at the start): ema = r^k w_0 + sum_i (1 - r) r^(k-i) w_i
    loop = make_loop(tmp_path, total=3, save_interval=3, dropout=0.0)
    names = [name for name, _ in loop.model.named_parameters()]
    weights = [[p.detach().clone() for p in loop.model.parameters()]]  # w_0
    loop.opt.register_step_post_hook(
        lambda opt, args, kwargs: weights.append([p.detach().clone() for p in loop.model.parameters()]))
    loop.run_loop()
    k = len(weights) - 1
    assert k == 3
    for rate in (0.9, 0.99):
        saved = ckpt.load(str(tmp_path / f"ema_{rate}_000003.pt"))
        for j, name in enumerate(names):
            by_hand = rate**k * weights[0][j] + sum((1 - rate) * rate ** (k - i) * weights[i][j]
                                                    for i in range(1, k + 1))
            # float32 sums of 4 terms: measured max |diff| 2.4e-7 on values up to 3.1 (the norms' scales)
            th.testing.assert_close(saved[name], by_hand, rtol=1e-6, atol=1e-7)
    # the weights moved by about lr per step, so the average is not one of them
    moved = max((a - b).abs().max().item() for a, b in zip(weights[0], weights[k]))
    assert moved > 1e-3



def gradients_at_each_step(loop) -> list[list[th.Tensor]]:
    """The gradients the optimizer is handed at each step (before Adam normalises them away)."""
    seen = []
    loop.opt.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]))
    loop.run_loop()
    return seen


def test_microbatches_accumulate_to_the_full_batch(tmp_path):
    full = gradients_at_each_step(make_loop(tmp_path / "a", total=2, save_interval=100, dropout=0.0))
    micro = gradients_at_each_step(make_loop(tmp_path / "b", total=2, save_interval=100, microbatch=2, dropout=0.0))
    assert len(full) == len(micro) == 2 and len(full[0]) == len(micro[0]) > 0
    for step_full, step_micro in zip(full, micro):
        # the mean over the batch, whatever its split: a doubled or halved micro-batch sum fails here
        total = sum(float(g.abs().sum()) for g in step_full)
        assert total > 0
        for a, b in zip(step_full, step_micro):
            th.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_auto_resume_skips_a_truncated_checkpoint(tmp_path):
    make_loop(tmp_path, total=4).run_loop()
    path = tmp_path / "model000004.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="model000004.pt: truncated or corrupt"):
        make_loop(tmp_path, total=6, resume=str(path))
    loop = make_loop(tmp_path, total=6, resume="auto")
    assert loop.step == 2  # fell back to the previous complete checkpoint


def test_sigusr1_checkpoints_the_step_reached_and_restores_the_callers_handlers(tmp_path):
    # (the resume of a stopped run, bit for bit: tests/test_distributed.py, with SIGTERM to a real process)
    loop = make_loop(tmp_path, total=4, save_interval=100)

    def callers_handler(signum, frame):  # a handler the caller had: it comes back afterwards
        raise AssertionError("the trainer's handler should be in place")

    previous = signal.signal(signal.SIGUSR1, callers_handler)
    term = signal.getsignal(signal.SIGTERM)
    try:
        # the real signal, to this process, in the middle of the second step (its optimizer step)
        loop.opt.register_step_post_hook(lambda *args: loop.step == 1 and os.kill(os.getpid(), signal.SIGUSR1))
        with pytest.raises(Stopped, match=r"stopped by SIGUSR1 at step 2.*--resume_checkpoint auto") as info:
            loop.run_loop()
        assert info.value.signum == signal.SIGUSR1 and loop.step == 2
        assert signal.getsignal(signal.SIGUSR1) is callers_handler and signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sorted(os.listdir(tmp_path)) == ["ema_0.99_000002.pt", "ema_0.9_000002.pt", "model000002.pt",
                                            "opt000002.pt"]
    assert ckpt.load(str(tmp_path / "opt000002.pt"))["step"] == 2
    saved = ckpt.load(str(tmp_path / "model000002.pt"))
    assert all(th.equal(saved[k], v) for k, v in loop.model.state_dict().items())


def test_a_fresh_run_into_a_folder_of_checkpoints_is_refused(tmp_path):
    make_loop(tmp_path, total=2).run_loop()
    before = (tmp_path / "model000002.pt").read_bytes()
    with pytest.raises(UserError, match=rf"--log_dir {tmp_path}: holds the checkpoints of an earlier run \(the "
                                        r"newest: .*model000002.pt.*\); continue it with --resume_checkpoint auto"):
        make_loop(tmp_path, total=2)
    assert (tmp_path / "model000002.pt").read_bytes() == before
    assert make_loop(tmp_path, total=2, resume="auto").step == 2


def test_the_loss_is_one_line_per_log_interval_clear_of_the_progress_bar(tmp_path, monkeypatch):
    # a terminal shows the bar (stderr) and the log lines (stdout) on one screen: one buffer for both
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    logger.configure(str(tmp_path))
    try:
        loop = make_loop(tmp_path, total=4, save_interval=2, log_interval=2, progress=True)
        drawn = []
        save = loop.save
        loop.save = lambda: save() or drawn.append((loop.step, (tmp_path / "progress.png").read_bytes()))
        loop.run_loop()
    finally:
        logger.configure(None)
    # what stays on each terminal line: the text after its last carriage return
    shown = [line.rsplit("\r", 1)[-1] for line in screen.getvalue().split("\n")]
    logged = [line for line in shown if "loss" in line]
    assert len(logged) == 2 and all(re.fullmatch(r"step [24] \| loss \S+ \| lr \S+ \| mse \S+ \| vb \S+", line)
                                    for line in logged), shown
    assert logged[0].startswith("step 2 |") and logged[1].startswith("step 4 |")
    # progress.png beside progress.csv at each checkpoint, redrawn with the rows so far
    assert [step for step, _ in drawn] == [2, 4] and drawn[0][1] != drawn[1][1]
    assert Image.open(tmp_path / "progress.png").size == (700, 300)  # one panel: the loss terms
    assert "step 2 | loss" in (tmp_path / "log.txt").read_text()


def test_progress_png_draws_the_loss_terms_and_the_classifiers_accuracy(tmp_path):
    csv_path, png = tmp_path / "progress.csv", tmp_path / "progress.png"
    csv_path.write_text("acc,loss,lr,step,val_acc,val_loss\n0.5,0.79,1e-4,2,,\n0.75,0.61,1e-4,4,0.7,0.65\n")
    assert plot_progress(str(csv_path), str(png)) == ["loss terms", "accuracy"]
    assert Image.open(png).size == (700, 600)
    csv_path.write_text("loss,lr,mse,step,vb\n1.3,7.5e-05,1.02,2,0.28\n")  # the diffusion model's
    assert plot_progress(str(csv_path), str(png)) == ["loss terms"]
    assert Image.open(png).size == (700, 300)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "model000001.pt"
    with open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ckpt.CheckpointError, match="refused to load"):
        ckpt.load(str(path))
    path2 = tmp_path / "model000002.pt"
    th.save({"weights": th.zeros(2), "obj": Evil()}, path2)
    with pytest.raises(ckpt.CheckpointError, match="refused to load"):
        ckpt.load(str(path2))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_unscales_every_gradient(tmp_path, precision):
    # SPEC section 10: the original fp16 path unscaled only the first parameter's gradient.
    seen = {}
    loops = {}
    for prec in ("fp32", precision):
        # two steps: at the first, the zero-initialised output layers block most gradients
        loop = make_loop(tmp_path / prec, total=2, save_interval=100, precision=prec, dropout=0.0)
        loop.model.train()

        def capture(opt, args, kwargs, prec=prec):
            seen[prec] = [p.grad.detach().clone() for g in opt.param_groups for p in g["params"]]

        loop.opt.register_step_pre_hook(capture)
        loop.run_loop()
        loops[prec] = loop
    # every gradient reaching the optimizer is on the fp32 scale (a scaled one is 2**16 times larger)
    ratios = []
    for g32, gmp in zip(seen["fp32"], seen[precision]):
        n32 = g32.float().norm()
        if n32 > 1e-6:
            ratios.append(float(gmp.float().norm() / n32))
    assert len(ratios) > 10
    assert max(ratios) < 2.0 and min(ratios) > 0.5, (min(ratios), max(ratios))


def test_fp16_fused_run_resumes_a_checkpoint_written_without_fused_adamw(tmp_path):
    # A CPU run's (or the original code's) optimizer file holds fused=False; loading it as saved would
    # switch the fused kernel off, and GradScaler then hands grad_scale to the foreach path, which
    # refuses it. PyTorch has fused AdamW and GradScaler on the CPU, so the GPU path is checked here.
    make_loop(tmp_path, total=2, fused=False, dropout=0.0).run_loop()  # fp32, foreach AdamW
    saved = ckpt.load(str(tmp_path / "opt000002.pt"))
    assert not any(group.get("fused") for group in saved["param_groups"])
    resumed = make_loop(tmp_path, total=4, resume=str(tmp_path / "model000002.pt"), precision="fp16",
                        fused=True, dropout=0.0)
    assert resumed.step == 2
    before = params_of(resumed)
    resumed.run_loop()  # torch 2.13 without the fix: AssertionError in _single_tensor_adam (grad_scale given)
    assert resumed.step == 4 and all(group["fused"] for group in resumed.opt.param_groups)
    after = params_of(resumed)
    assert all(th.isfinite(v).all() for v in after.values())
    assert any(not th.equal(before[k], after[k]) for k in before)  # the steps changed the weights


def gradients_per_step(loop) -> list[list[th.Tensor]]:
    """Run the loop; return the gradients that reached the optimizer at each step."""
    seen = []
    loop.opt.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.detach().float().clone() for p in loop.model.parameters()]))
    loop.run_loop()
    return seen


def relative_difference(grads, reference) -> float:
    num = sum(((a - b) ** 2).sum() for a, b in zip(grads, reference)) ** 0.5
    return float(num / sum((b ** 2).sum() for b in reference) ** 0.5)


@pytest.mark.parametrize("precision, bound", [("bf16", 0.03), ("fp16", 0.005)])
def test_half_precision_training_follows_fp32(tmp_path, precision, bound):
    # The optimised training paths compute the fp32 step up to rounding. Measured relative difference of
    # the whole gradient at each of three steps: UNet bf16 0.3-0.8 %, fp16 0.04-0.06 %; classifier
    # bf16 0.5-2.1 %, fp16 0.07-0.4 %.
    reference = gradients_per_step(make_loop(tmp_path / "fp32", total=3, save_interval=100, dropout=0.0))
    reference_clf = gradients_per_step(make_classifier_loop(tmp_path / "clf32"))
    grads = gradients_per_step(make_loop(tmp_path / precision, total=3, save_interval=100, dropout=0.0,
                                         precision=precision))
    grads_clf = gradients_per_step(make_classifier_loop(tmp_path / f"clf_{precision}", precision=precision))
    assert len(grads) == len(reference) == 3 and len(grads_clf) == len(reference_clf) == 3
    for step in range(3):
        assert relative_difference(grads[step], reference[step]) <= bound, step
        assert relative_difference(grads_clf[step], reference_clf[step]) <= 2 * bound, step


def test_compiled_training_matches_eager(tmp_path):
    # compiling the tiny UNet's forward and backward takes about 40 s on 2 CPU cores
    if not have_cxx_compiler():
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    eager = gradients_per_step(make_loop(tmp_path / "eager", total=2, save_interval=100, dropout=0.0))
    compiled = gradients_per_step(make_loop(tmp_path / "compiled", total=2, save_interval=100, dropout=0.0,
                                            use_compile=True))
    assert len(compiled) == 2
    for step in range(2):
        assert relative_difference(compiled[step], eager[step]) <= 1e-4, step  # measured 4.8e-7


def make_classifier_loop(log_dir, precision="fp32", total=3, resume="", save_interval=100):
    th.manual_seed(0)
    clf, diffusion = create_classifier_and_diffusion(**CLASSIFIER)
    cfg = TrainConfig(TrainFlags(lr=1e-3, log_interval=100, save_interval=save_interval, resume_checkpoint=resume),
                      RunFlags(log_dir=str(log_dir), progress=False), SpeedFlags(precision=precision),
                      batch_size=4, total_steps=total)
    return ClassifierTrainLoop(clf, diffusion, batches, cfg, make_val_data=lambda: batches(500))


CLASSIFIER = TINY_CLASSIFIER


def squares(start, n=8):
    """A learnable task: dark noisy images (B, 4, 16, 16), the diseased ones (label 1) with a bright
    8 x 8 square at a random place; deterministic by step."""
    step = start
    while True:
        g = th.Generator().manual_seed(2000 + step)
        y = th.randint(0, 2, (n,), generator=g)
        x = 0.05 * th.randn(n, 4, 16, 16, generator=g)
        corner = th.randint(0, 9, (n, 2), generator=g)
        for i in th.nonzero(y).flatten().tolist():
            r, c = corner[i].tolist()
            x[i, :, r:r + 8, c:c + 8] = 1.0
        yield x, {"y": y}
        step += 1


def test_classifier_loop_trains_and_evaluates(tmp_path):
    # 160 steps of batch 8 on noised images (T = 1000: with T = 50 the steep schedule leaves too few
    # informative noise levels to learn from in a few seconds); about 5 s on one thread
    th.manual_seed(0)
    clf, diffusion = create_classifier_and_diffusion(**{**CLASSIFIER, "diffusion_steps": 1000})
    cfg = TrainConfig(TrainFlags(lr=3e-4, log_interval=20, save_interval=160), RunFlags(log_dir=str(tmp_path),
                                                                                        progress=False),
                      batch_size=8, total_steps=160)
    loop = ClassifierTrainLoop(clf, diffusion, squares, cfg, make_val_data=lambda: squares(10_000), eval_interval=160)
    logged = []
    log_step = loop.log_step
    loop.log_step = lambda: logged.append(log_step()) or logged[-1]
    loop.run_loop()
    assert sorted(os.listdir(tmp_path)) == ["model000160.pt", "opt000160.pt"]
    # the training loss falls: steps 1-20 against steps 101-160. Measured (weight seeds 0, 1, 2):
    # 0.723 -> 0.503, 0.702 -> 0.515, 0.702 -> 0.537; at the start it is about log 2 = 0.69
    losses = [values["loss"] for values in logged]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 <= 0.8 * losses[0], losses
    # clean held-out images at t = 0: measured accuracy 0.95, 1.0, 1.0 (a classifier that learned
    # nothing, or the wrong labels, scores about 0.5)
    x, cond = next(squares(20_000, n=64))
    with th.no_grad():
        clean = clf.eval()(x, th.zeros(64, dtype=th.long)).argmax(dim=-1)
    clf.train()
    assert (clean == cond["y"]).float().mean() >= 0.85
    # the held-out numbers are the cross entropy and accuracy of the logits the classifier returned
    seen = []
    hook = clf.register_forward_hook(lambda module, args, out: seen.append(out.detach().double()))
    values = loop.evaluate(max_batches=2)
    hook.remove()
    assert set(values) == {"val_loss", "val_acc"}
    logits = th.cat(seen)  # (16, 2)
    labels = th.cat([batch[1]["y"] for _, batch in zip(range(2), squares(10_000))])
    cross_entropy = th.logsumexp(logits, dim=1) - logits[th.arange(16), labels]
    assert values["val_loss"] == pytest.approx(cross_entropy.mean().item(), rel=1e-6)
    assert values["val_acc"] == (logits.argmax(dim=1) == labels).double().mean().item()


def test_classifier_resume_reaches_the_same_weights_and_held_out_numbers(tmp_path):
    straight = make_classifier_loop(tmp_path / "a", total=4)
    straight.run_loop()
    make_classifier_loop(tmp_path / "b", total=2, save_interval=2).run_loop()  # interrupted after step 2
    resumed = make_classifier_loop(tmp_path / "b", total=4, resume=str(tmp_path / "b" / "model000002.pt"))
    assert resumed.step == 2
    resumed.run_loop()
    a, b = params_of(straight), params_of(resumed)
    for k in a:  # the same float32 operations in the same order: measured max |diff| 0
        th.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert straight.evaluate(max_batches=2) == pytest.approx(resumed.evaluate(max_batches=2), rel=1e-6)
    # the resumed run went somewhere: its weights are not the checkpoint's
    at_two = ckpt.load(str(tmp_path / "b" / "model000002.pt"))
    assert any(not th.equal(at_two[k], b[k]) for k in b)


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device (CUDA sync debug mode)")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_step_has_no_host_sync(tmp_path, precision):
    # Issue 6: no host synchronisation inside a training step. CUDA's sync debug mode turns each one
    # (.item(), a blocking copy, a data-dependent shape) into an error. The batch is moved to the GPU
    # before, as run_loop does; logging and checkpoints run between steps, outside this check.
    device = th.device("cuda")
    loop = make_loop(tmp_path, total=0, save_interval=100, precision=precision, dropout=0.0, device=device)
    x, cond = next(batches(0))
    x, cond = x.to(device), {k: v.to(device) for k, v in cond.items()}
    loop.run_step(x, cond)  # first step: lazy initialisation (optimizer state, cuDNN plans)
    th.cuda.synchronize()
    th.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            loop.run_step(x, cond)
    finally:
        th.cuda.set_sync_debug_mode("default")
    assert loop.log_step()["loss"] > 0  # the device-side sums hold every step's loss
