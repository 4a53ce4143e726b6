"""Scale and reliability (SPEC section 8): real multi-process runs with mpiexec and torchrun (gloo on CPU),
a SIGKILL mid-run, distributed translation, and flat memory over a large folder."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch as th

from guided_diffusion.datasets.synthetic import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN) or shutil.which("mpiexec")

MODEL = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
         "--num_heads 1 --class_cond True --learn_sigma True --diffusion_steps 50 --progress False").split()
CLASSIFIER = ("--image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
              "--classifier_attention_resolutions 8 --classifier_num_head_channels 32").split()


def script(name):
    return os.path.join(ROOT, "scripts", name)


def run(cmd, timeout=300, check=True, env=None):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and proc.returncode:
        raise AssertionError(f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(str(root), dataset="brats", size=16, n_train=8, n_test=6, seed=3)
    return root / "brats"


def weights(path):
    return th.load(path, weights_only=True)


def assert_same_weights(a, b, atol=2e-5, noise_bound=None):
    """Equal within ``atol``. With ``noise_bound``: Adam turns gradients that are pure rounding noise
    (e.g. the key bias of attention pooling, whose true gradient is 0) into steps of up to lr, so such
    elements may differ by up to lr * steps; at least 99.9% of all elements must still agree within atol."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    if noise_bound is None:
        for k in wa:
            th.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=atol, msg=k)
        return
    diffs = th.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
    assert diffs.max() <= noise_bound, diffs.max()
    assert (diffs <= atol).float().mean() >= 0.999


def train_args(data, log_dir, batch, steps=3):
    return [script("image_train.py"), "--data_dir", data / "training", *MODEL, "--batch_size", batch,
            "--lr_anneal_steps", steps, "--save_interval", 100, "--log_dir", log_dir, "--lr", 1e-3, "--seed", 7]


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run([sys.executable, *train_args(data, out, 4)])
    return out


WORKER = os.path.join(ROOT, "tests", "dist_worker.py")


def launch(launcher, *args):
    """The command that runs tests/dist_worker.py in 2 processes (or 1 with launcher None)."""
    if launcher is None:
        return [sys.executable, WORKER, *args]
    if launcher == "mpiexec":
        if MPIEXEC is None:
            pytest.skip("mpiexec not installed (pip install mpich mpi4py)")
        return [MPIEXEC, "-n", 2, sys.executable, WORKER, *args]
    return torchrun(WORKER, *args)


def relative_difference(grads, reference) -> float:
    num = sum(((a - b) ** 2).sum() for a, b in zip(grads, reference)) ** 0.5
    return float(num / sum((b ** 2).sum() for b in reference) ** 0.5)


@pytest.mark.parametrize("launcher", ["torchrun", "mpiexec"])
@pytest.mark.parametrize("kind", ["unet", "classifier"])
def test_gradients_after_the_allreduce_equal_one_process_with_the_global_batch(kind, launcher, tmp_path):
    # 2 processes with batch 2 in micro-batches of 1 (DDP's no_sync branch) against 1 process with batch 4:
    # a sum instead of a mean over ranks, or a missing 1 / n_micro, doubles every gradient (measured
    # relative difference of the correct path: 1e-7 to 1e-6)
    run(launch(None, kind, tmp_path / "one.pt", "--batch", 4))
    run(launch(launcher, kind, tmp_path / "two.pt", "--batch", 2, "--microbatch", 1))
    one, two = th.load(tmp_path / "one.pt"), th.load(tmp_path / "two.pt")
    assert len(one) == len(two) > 10 and sum(g.abs().sum() for g in one) > 0
    assert relative_difference(two, one) <= 1e-5


def test_each_rank_draws_its_own_dropout_masks(tmp_path):
    # dropout 0.5: the gradient of 2 processes is the average of the ranks' gradients computed with masks
    # seeded by (seed, step, rank); with every rank seeded alike (the old behaviour) it differs
    run(launch("torchrun", "unet", tmp_path / "two.pt", "--batch", 2, "--dropout", 0.5))
    run(launch(None, "unet", tmp_path / "own.pt", "--reference", 2, "--dropout", 0.5))
    run(launch(None, "unet", tmp_path / "alike.pt", "--reference", 2, "--dropout", 0.5, "--same_masks"))
    two, own, alike = (th.load(tmp_path / f"{n}.pt") for n in ("two", "own", "alike"))
    assert relative_difference(two, own) <= 1e-5
    assert relative_difference(alike, own) > 1e-2


def test_torchrun_training_script_matches_one_process(data, single, tmp_path):
    # the training script itself under torchrun: the same weights after 3 steps (dropout 0)
    run(torchrun(*train_args(data, tmp_path, 2)))
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pt")) == [
        "ema_0.9999_000003.pt", "model000003.pt", "opt000003.pt"]
    assert_same_weights(single / "model000003.pt", tmp_path / "model000003.pt")


STEPS = 12  # of the interrupted runs and their reference


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted run that the interrupted and resumed ones must reach."""
    out = tmp_path_factory.mktemp("straight")
    run([sys.executable, *train_args(data, out, 4, STEPS)])
    return out


def test_sigkill_mid_run_then_auto_resume_matches_uninterrupted(data, straight, tmp_path):
    steps = STEPS
    killed = tmp_path / "killed"
    args = train_args(data, killed, 4, steps)
    args[args.index("--save_interval") + 1] = 2
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (killed / "model000004.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(n for n in os.listdir(killed) if n.startswith("model"))
    assert f"model{steps:06d}.pt" not in done
    # a checkpoint truncated by hand is reported and skipped by "auto"
    newest = killed / done[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    bad = run([sys.executable, *args, "--resume_checkpoint", newest], check=False)
    assert bad.returncode == 2 and f"{newest}: truncated or corrupt" in bad.stderr
    resumed = run([sys.executable, *args, "--resume_checkpoint", "auto"])
    assert "skipping checkpoint" in resumed.stderr
    assert not [n for n in os.listdir(killed) if n.endswith(".tmp")], "stale temporary files left behind"
    # one thread on the CPU is deterministic: the model, its EMA and Adam's state agree bit for bit
    for name in (f"model{steps:06d}.pt", f"ema_0.9999_{steps:06d}.pt", f"opt{steps:06d}.pt"):
        assert_identical_state(weights(straight / name), weights(killed / name), name)


def assert_identical_state(a, b, where: str) -> None:
    """Two checkpoints' contents (nested dicts and lists of tensors and numbers) equal bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical_state(x, y, f"{where}[{i}]")
    elif isinstance(a, th.Tensor):
        assert isinstance(b, th.Tensor) and a.dtype == b.dtype and th.equal(a, b), where
    else:
        assert a == b, where


def assert_identical(a, b, where):
    """Equal bit for bit: tensors with torch.equal, through dicts and lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif th.is_tensor(a):
        assert a.dtype == b.dtype and th.equal(a, b), where
    else:
        assert a == b, where


def test_sigterm_mid_run_checkpoints_the_step_reached_then_auto_resume_matches_bit_for_bit(data, straight, tmp_path):
    # a cluster's preemption: the real signal to a real training process, between two checkpoints
    stopped = tmp_path / "stopped"
    args = [*train_args(data, stopped, 4, STEPS), "--log_interval", 1]  # --save_interval 100: none on the way
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (stopped / "progress.csv").exists() or len((stopped / "progress.csv").read_text().splitlines()) < 2:
        assert proc.poll() is None, "training ended before it could be stopped"
        assert time.time() < deadline, "no step was logged"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # after step 1
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+), its checkpoint written", err)[1])
    assert 1 <= step < STEPS
    assert sorted(n for n in os.listdir(stopped) if n.endswith(".pt")) == [
        f"ema_0.9999_{step:06d}.pt", f"model{step:06d}.pt", f"opt{step:06d}.pt"]
    assert not [n for n in os.listdir(stopped) if n.endswith(".tmp")]
    resumed = run([sys.executable, *args, "--resume_checkpoint", "auto"])
    assert f"resumed from step {step}" in resumed.stdout
    # one thread, the same float32 operations in the same order: the model, the EMA and the optimizer
    # state (moments, step counts) equal the uninterrupted run's bit for bit
    for name in (f"model{STEPS:06d}.pt", f"ema_0.9999_{STEPS:06d}.pt", f"opt{STEPS:06d}.pt"):
        assert_identical(weights(straight / name), weights(stopped / name), name)


def translate_args(data, model_dir, clf_dir, out, *extra):
    return [script("classifier_sample_known.py"), "--data_dir", data / "testing", "--label_dir", data / "test_labels",
            *MODEL, *CLASSIFIER, "--model_path", model_dir / "model000003.pt",
            "--classifier_path", clf_dir / "model000002.pt", "--noise_level", 4, "--use_ddim", True,
            "--output_dir", out, "--log_dir", str(out) + "-log", *extra]


@pytest.fixture(scope="module")
def classifier(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    run([sys.executable, script("classifier_train.py"), "--data_dir", data / "training", *CLASSIFIER,
         "--diffusion_steps", 50, "--batch_size", 4, "--iterations", 2, "--log_dir", out, "--progress", False])
    return out


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
@pytest.mark.parametrize("use_ddim", [True, False])
def test_distributed_translation_equals_single_process(data, single, classifier, tmp_path, use_ddim):
    # DDIM and stochastic DDPM sampling: per-image noise generators make the files independent of the sharding
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, *translate_args(data, single, classifier, one, "--use_ddim", use_ddim)])
    run([MPIEXEC, "-n", 2, sys.executable, *translate_args(data, single, classifier, two, "--batch_size", 2,
                                                           "--use_ddim", use_ddim)])
    names = sorted(os.listdir(one))
    assert names == sorted(os.listdir(two))
    assert (one / "metrics.csv").read_text() == (two / "metrics.csv").read_text()
    n_images = len(os.listdir(data / "testing"))
    assert json.loads((two / "summary.json").read_text())["images_per_rank"] == [n_images // 2] * 2
    for n in names:
        if n.endswith(".npz"):
            with np.load(one / n) as a, np.load(two / n) as b:
                assert not np.array_equal(a["input"], a["healthy"])
                for k in a.files:
                    if a[k].dtype.kind == "U":  # the patient's name
                        assert a[k] == b[k], k
                    else:
                        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


VAE = "--image_size 16 --vae_width 4 --vae_depth 2 --latent_dim 8 --latent_disc_width 8 --progress False".split()
FPGAN = ("--image_size 16 --fpgan_width 4 --fpgan_res_blocks 1 --fpgan_d_width 4 --fpgan_d_depth 2 "
         "--progress False").split()


def torchrun(*args):
    from guided_diffusion.util.dist_util import _free_port
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, "--master_addr", "127.0.0.1",
            "--master_port", _free_port(), *args]


@pytest.fixture(scope="module")
def baselines(data, tmp_path_factory):
    """A VAE and a FixedPoint-GAN trained for two steps in one process."""
    out = tmp_path_factory.mktemp("baselines")
    for method, flags in (("vae", VAE), ("fpgan", [*FPGAN, "--n_critic", 1])):
        run([sys.executable, script(f"{method}_train.py"), "--data_dir", data / "training", *flags,
             "--batch_size", 2, "--iterations", 2, "--log_dir", out / method])
    return out


@pytest.mark.parametrize("method, flags, marker", [("vae", VAE, "model"), ("fpgan", FPGAN, "G")])
def test_torchrun_baseline_translation_writes_each_image_once(data, baselines, tmp_path, method, flags, marker):
    def args(out):
        return [script(f"{method}_translate.py"), "--data_dir", data / "testing", "--label_dir", data / "test_labels",
                *flags, "--model_path", baselines / method / f"{marker}000002.pt", "--batch_size", 2,
                "--output_dir", out, "--log_dir", str(out) + "-log"]

    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, *args(one)])
    proc = run(torchrun(*args(two)))
    n = len([name for name in os.listdir(data / "testing") if not name.startswith(".")])  # leaves, not the store
    assert f"rank 0: {n - n // 2} of {n} images" in proc.stdout  # its share only (rank 1 logs nothing)
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    assert (one / "metrics.csv").read_text() == (two / "metrics.csv").read_text()
    for name in os.listdir(one):
        if name.endswith(".npz"):
            with np.load(one / name) as a, np.load(two / name) as b:  # other batches: rounding only
                for k in a.files:
                    if a[k].dtype.kind in "fc":
                        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
                    else:
                        assert np.array_equal(a[k], b[k]), (name, k)


def test_torchrun_vae_training_matches_one_process(data, tmp_path):
    # width 16: every GroupNorm group has 2 or more channels, so no parameter's true gradient is 0 (Adam would
    # turn the rounding noise of one into steps of lr); the three phases of each step are averaged across ranks
    def args(log, batch):
        return [script("vae_train.py"), "--data_dir", data / "training", *VAE, "--vae_width", 16, "--batch_size",
                batch, "--iterations", 3, "--log_dir", log, "--lr", 1e-3, "--seed", 3]

    run([sys.executable, *args(tmp_path / "one", 2)])
    run(torchrun(*args(tmp_path / "two", 1)))
    for prefix in ("model", "zdisc"):
        assert_same_weights(tmp_path / "one" / f"{prefix}000003.pt", tmp_path / "two" / f"{prefix}000003.pt",
                            atol=1e-5)


def peak_rss_kib(cmd):
    code = ("import resource, runpy, sys\n"
            f"sys.argv = {[str(c) for c in cmd]!r}\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = run([sys.executable, "-c", code], timeout=600)
    return int(proc.stdout.strip().splitlines()[-1].split()[1])


def test_memory_stays_flat_over_a_large_folder(single, classifier, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    generate(str(small), dataset="brats", size=16, n_train=1, n_test=20, seed=5)
    generate(str(large), dataset="brats", size=16, n_train=1, n_test=200, seed=5)
    peaks = []
    for root in (small, large):
        args = translate_args(root / "brats", single, classifier, tmp_path / f"out-{root.name}",
                              "--noise_level", 2, "--batch_size", 8, "--progress", False)
        peaks.append(peak_rss_kib(args))
    assert peaks[1] <= 1.10 * peaks[0], peaks
    assert len([n for n in os.listdir(tmp_path / "out-large") if n.endswith(".npz")]) == 200
