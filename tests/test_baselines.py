"""The comparison methods (SPEC section 9): VAE (cAAE) and FixedPoint-GAN training,
translation into the shared output format, resume, flag errors, and scripts/compare.py.

Tiny networks on a 16 x 16 synthetic BRATS set (8 training, 4 test slices), on the CPU.
"""
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th
from cpu_helpers import one_thread  # noqa: F401  (autouse: tiny networks run on one thread)
from PIL import Image

from guided_diffusion.anomaly import anomaly_map
from guided_diffusion.datasets.synthetic import generate
from guided_diffusion.evaluation.results import (
    LOCATION_COLUMNS,
    METRICS_COLUMNS,
    read_summary,
    save_result,
    write_metrics,
)
from guided_diffusion.baselines.fpgan import Discriminator, Generator, gradient_penalty, translate_to_healthy
from guided_diffusion.baselines.vae import VAE, kl_divergence, reconstruction_loss
from guided_diffusion.pipeline.cli import run_main
from guided_diffusion.util.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
VAE_FLAGS = ["--image_size", str(SIZE), "--vae_width", "4", "--vae_depth", "2", "--latent_dim", "8",
             "--latent_disc_width", "8"]
FPGAN_FLAGS = ["--image_size", str(SIZE), "--fpgan_width", "4", "--fpgan_res_blocks", "1",
               "--fpgan_d_width", "4", "--fpgan_d_depth", "2"]
TRAIN_FLAGS = ["--batch_size", "2", "--log_interval", "2", "--progress", "False"]


def _script(name):
    # scripts/ is not a package: load the entry point from its file
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(str(root), dataset="brats", size=SIZE, n_train=8, n_test=4, tumour_fraction=0.5, seed=0)
    return {"train": str(root / "brats" / "training"), "test": str(root / "brats" / "testing"),
            "labels": str(root / "brats" / "test_labels")}


def _train(method, data, log_dir, *extra):
    flags = VAE_FLAGS if method == "vae" else FPGAN_FLAGS
    return _script(f"{method}_train")(["--data_dir", data["train"], "--log_dir", str(log_dir), *flags,
                                       *TRAIN_FLAGS, *extra])


def _translate(method, data, model_path, out, *extra):
    flags = VAE_FLAGS if method == "vae" else FPGAN_FLAGS
    return _script(f"{method}_translate")(["--data_dir", data["test"], "--label_dir", data["labels"],
                                           "--model_path", str(model_path), "--output_dir", str(out),
                                           "--log_dir", str(out.parent / f"{out.name}_log"), *flags, *extra])


def _check_output_folder(out: Path, method_name: str):
    npz = sorted(out.glob("*.npz"))
    assert len(npz) == 4 and len(list(out.glob("*.png"))) == 4
    with np.load(npz[0]) as z:
        assert {"input", "healthy", "anomaly", "mask", "label", "ground_truth"} <= set(z.files)
        assert z["input"].shape == (4, SIZE, SIZE) and z["healthy"].shape == (4, SIZE, SIZE)
        assert z["anomaly"].shape == (SIZE, SIZE) and z["mask"].dtype == bool
        assert 0.0 <= z["healthy"].min() and z["healthy"].max() <= 1.0
        np.testing.assert_allclose(z["anomaly"], anomaly_map(z["input"], z["healthy"]), rtol=1e-6)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS + LOCATION_COLUMNS and len(rows) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method_name
    for key in ("dice", "auroc", "auprc", "image_auroc", "flags", "seconds_per_image", "n_images"):
        assert key in summary
    assert summary["n_images"] == 4 and summary["seconds_per_image"] > 0
    return summary


# ---------------------------------------------------------------------------------
# Networks and losses


def test_vae_shapes_and_losses():
    th.manual_seed(0)
    for variational in (False, True):
        model = VAE(4, SIZE, width=4, depth=2, latent_dim=8, variational=variational)
        x = th.rand(3, 4, SIZE, SIZE)
        mu, logvar = model.encode(x)
        assert mu.shape == (3, 8) and (logvar is None) != variational
        rec = model.reconstruct(x)
        # the healthy translation decodes the posterior mean (no sampling) through a sigmoid
        features = model.from_latent(mu).view(3, model.top_channels, model.bottleneck, model.bottleneck)
        assert rec.shape == x.shape
        th.testing.assert_close(rec, 1 / (1 + th.exp(-model.decoder(features))), rtol=1e-6, atol=1e-7)
    assert kl_divergence(th.zeros(2, 5), th.zeros(2, 5)).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per unit
    assert kl_divergence(th.ones(2, 5), th.zeros(2, 5)).item() == pytest.approx(2.5)
    assert reconstruction_loss(th.ones(2, 1, 2, 2), th.zeros(2, 1, 2, 2)).item() == pytest.approx(4.0)


def test_fpgan_generator_is_residual_and_discriminator_heads():
    th.manual_seed(0)
    gen = Generator(4, width=4, res_blocks=1)
    with th.no_grad():
        gen.main[-2].weight.zero_()  # residual delta = tanh(0) = 0: G is the identity (a fixed point)
    x = th.rand(2, 4, SIZE, SIZE)
    assert th.equal(translate_to_healthy(gen, x), x)
    disc = Discriminator(4, SIZE, width=4, depth=2)
    critic, logits = disc(x)
    assert critic.shape == (2, 1, SIZE // 4, SIZE // 4) and logits.shape == (2, 2)
    gp = gradient_penalty(disc, x, x.flip(0), th.rand(2, generator=th.Generator().manual_seed(0)))
    assert gp.ndim == 0
    # a critic linear in its input: the gradient is its weight w everywhere, ||w|| = 0.25 * sqrt(4 * 16 * 16)
    # = 8, so (||grad|| - 1)^2 = 49 for every image
    assert gradient_penalty(LinearCritic(), x, x.flip(0), th.tensor([0.3, 0.8])).item() == pytest.approx(49.0)
    # a quadratic critic 1/2 sum a_c x^2: the gradient a_c x^ at x^ = alpha real + (1 - alpha) fake, per image
    real, fake, alpha = x, th.rand(2, 4, SIZE, SIZE, generator=th.Generator().manual_seed(1)), th.tensor([0.25, 0.75])
    critic = QuadraticCritic()
    gp = gradient_penalty(critic, real, fake, alpha)
    norms = []
    for i in range(2):
        x_hat = alpha[i] * real[i] + (1 - alpha[i]) * fake[i]  # (C, S, S)
        norms.append(((critic.a.detach()[:, None, None] * x_hat) ** 2).sum().sqrt())
    by_hand = ((norms[0] - 1) ** 2 + (norms[1] - 1) ** 2) / 2
    assert gp.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # and it trains the critic (the gradient of the penalty reaches its weights): d gp / d a_c =
    # mean_i 2 (n_i - 1) a_c sum x^_ic^2 / n_i
    gp.backward()
    grad_by_hand = sum(2 * (norms[i] - 1) * critic.a.detach() * ((alpha[i] * real[i] + (1 - alpha[i]) * fake[i]) ** 2)
                       .sum(dim=(1, 2)) / norms[i] for i in range(2)) / 2
    th.testing.assert_close(critic.a.grad, grad_by_hand, rtol=1e-5, atol=1e-7)


class LinearCritic(th.nn.Module):
    """Discriminator stand-in with D's (critic, logits) outputs: critic patches (w * x) summed over
    channels, w = 0.25 everywhere."""

    def forward(self, x):
        return (0.25 * x).sum(dim=1, keepdim=True), th.zeros(x.shape[0], 2)  # (B, 1, S, S), (B, 2)


class QuadraticCritic(th.nn.Module):
    """Critic patches 1/2 sum_c a_c x_c^2, whose gradient is a_c x_c (a = 0.5, 1, 1.5, 2)."""

    def __init__(self):
        super().__init__()
        self.a = th.nn.Parameter(th.tensor([0.5, 1.0, 1.5, 2.0]))

    def forward(self, x):
        critic = 0.5 * (self.a[None, :, None, None] * x**2).sum(dim=1, keepdim=True)  # (B, 1, S, S)
        return critic, th.zeros(x.shape[0], 2)


# ---------------------------------------------------------------------------------
# Training, translation, evaluation


def test_vae_train_translate_and_skip(data, tmp_path):
    result = _train("vae", data, tmp_path / "vae", "--iterations", "3", "--save_interval", "2")
    names = {p.name for p in (tmp_path / "vae").iterdir()}
    assert {"model000002.pt", "opt000002.pt", "zdisc000002.pt", "model000003.pt", "opt000003.pt",
            "zdisc000003.pt", "progress.csv", "flags_vae_train.json"} <= names
    assert result["step"] == 3 and {"rec", "cons", "adv", "disc"} <= set(result["last"])
    out = tmp_path / "out"
    _translate("vae", data, tmp_path / "vae" / "model000003.pt", out)
    _check_output_folder(out, "VAE")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    summary = _translate("vae", data, tmp_path / "vae" / "model000003.pt", out)  # all done: skipped
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == before
    assert summary["method"] == "VAE" and summary["seconds_per_image"] > 0  # kept from the first run


def test_vae_kl_prior_and_epochs(data, tmp_path):
    # 4 healthy training images, batch 2: 1 epoch = 2 iterations; the KL prior has no zdisc file
    result = _train("vae", data, tmp_path / "vae", "--latent_prior", "kl", "--epochs", "1")
    assert result["step"] == 2 and {"rec", "kl", "cons"} <= set(result["last"])
    assert not list((tmp_path / "vae").glob("zdisc*.pt"))
    out = tmp_path / "out"
    _translate("vae", data, tmp_path / "vae" / "model000002.pt", out, "--latent_prior", "kl")
    _check_output_folder(out, "VAE")


def test_fpgan_train_translate(data, tmp_path):
    result = _train("fpgan", data, tmp_path / "fp", "--iterations", "4", "--n_critic", "2")
    names = {p.name for p in (tmp_path / "fp").iterdir()}
    assert {"G000004.pt", "D000004.pt", "opt000004.pt"} <= names
    assert {"d_loss", "d_gp", "d_cls", "g_loss", "g_cyc", "g_id", "g_cls"} <= set(result["last"])
    out = tmp_path / "out"
    _translate("fpgan", data, tmp_path / "fp" / "G000004.pt", out, "--batch_size", "3")
    _check_output_folder(out, "FixedPoint-GAN")


@pytest.mark.parametrize("method", ["vae", "fpgan"])
def test_resume_matches_uninterrupted(data, tmp_path, method):
    marker = "model" if method == "vae" else "G"
    extra = ["--n_critic", "2"] if method == "fpgan" else []
    _train(method, data, tmp_path / "full", "--iterations", "4", *extra)
    _train(method, data, tmp_path / "part", "--iterations", "2", *extra)
    _train(method, data, tmp_path / "part", "--iterations", "4", "--resume_checkpoint",
           str(tmp_path / "part" / "opt000002.pt"), *extra)
    full = th.load(tmp_path / "full" / f"{marker}000004.pt", weights_only=True)
    resumed = th.load(tmp_path / "part" / f"{marker}000004.pt", weights_only=True)
    for key in full:
        th.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6)
    # "auto" picks the newest complete checkpoint: nothing left to do
    result = _train(method, data, tmp_path / "part", "--iterations", "4", "--resume_checkpoint", "auto", *extra)
    assert result["step"] == 4


def test_bad_flags_name_the_flag(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="--latent_prior"):
        _train("vae", data, tmp_path / "a", "--latent_prior", "gauss", "--iterations", "1")
    with pytest.raises(ValueError, match="--vae_depth"):
        _train("vae", data, tmp_path / "b", "--vae_depth", "5", "--iterations", "1")
    with pytest.raises(ValueError, match="--n_critic"):
        _train("fpgan", data, tmp_path / "c", "--n_critic", "0", "--iterations", "1")
    with pytest.raises(FileNotFoundError, match="--resume_checkpoint"):
        _train("fpgan", data, tmp_path / "d", "--resume_checkpoint", str(tmp_path / "nope.pt"))
    (tmp_path / "other.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="--resume_checkpoint .*GNNNNNN.pt"):
        _train("fpgan", data, tmp_path / "d", "--resume_checkpoint", str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="--model_path"):
        _translate("vae", data, "", tmp_path / "e")
    # a flag that contradicts the checkpoint's run: the error names it, the value needed and the saved flags
    _train("vae", data, tmp_path / "f", "--iterations", "1")
    needed = r"--vae_width 8: the checkpoint needs --vae_width \d+ \(.*f/flags_vae_train.json"
    with pytest.raises(UserError, match=needed):
        _translate("vae", data, tmp_path / "f" / "model000001.pt", tmp_path / "g", "--vae_width", "8")
    # through run_main: one line, exit status 2
    main = _script("vae_train")
    assert run_main(main, ["--data_dir", data["train"], "--log_dir", str(tmp_path / "h"),
                               "--latent_prior", "gauss"]) == 2
    assert "error: --latent_prior 'gauss'" in capsys.readouterr().err


def test_one_channel_chexpert_through_compare(tmp_path):
    generate(str(tmp_path / "data"), dataset="chexpert", size=SIZE, n_train=4, n_test=2, seed=0)
    chex = {"train": str(tmp_path / "data" / "chexpert" / "training"),
            "test": str(tmp_path / "data" / "chexpert" / "testing")}
    outs = []
    for method in ("vae", "fpgan"):
        flags = VAE_FLAGS if method == "vae" else FPGAN_FLAGS
        common = ["--dataset", "chexpert", *flags]
        _script(f"{method}_train")(["--data_dir", chex["train"], "--log_dir", str(tmp_path / method), *common,
                                    *TRAIN_FLAGS, "--iterations", "1"])
        marker = "model" if method == "vae" else "G"
        out = tmp_path / f"{method}_out"
        _script(f"{method}_translate")(["--data_dir", chex["test"], "--model_path",
                                        str(tmp_path / method / f"{marker}000001.pt"), "--output_dir", str(out),
                                        "--log_dir", str(tmp_path / f"{method}_log"), *common])
        with np.load(next(out.glob("*.npz"))) as z:
            assert z["input"].shape == (1, SIZE, SIZE) and "ground_truth" not in z.files
        outs.append(str(out))
    written = _script("compare")([*outs, "--out", str(tmp_path / "cmp")])
    assert len(written["examples"]) == 2 and (tmp_path / "cmp" / "comparison.png").is_file()
    assert "| VAE |" in written["table"] and "| FixedPoint-GAN |" in written["table"]


# ---------------------------------------------------------------------------------
# scripts/compare.py


def _fake_run(folder: Path, method: str, shift: float):
    rng = np.random.default_rng(0)
    for i in range(3):
        gt = np.zeros((SIZE, SIZE), np.uint8)
        if i < 2:
            gt[4:10, 4:10] = 1  # 36 pixels: scored by the paper protocol
        x = rng.uniform(0.2, 0.8, (4, SIZE, SIZE)).astype(np.float32)
        healthy = x.copy()
        healthy[:, gt == 1] -= 0.2
        healthy += shift * rng.standard_normal(x.shape).astype(np.float32)
        amap = anomaly_map(x, healthy)
        save_result(folder, f"case{i}", input=x, healthy=healthy, anomaly=amap,
                    label=int(gt.any()), ground_truth=gt)
    write_metrics(folder, extra_summary={"method": method, "seconds_per_image": 0.5})


def test_compare_two_runs(tmp_path, capsys):
    _fake_run(tmp_path / "a", "Method A", 0.01)
    _fake_run(tmp_path / "b", "Method B", 0.2)
    compare = _script("compare")
    written = compare([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"), "--examples", "2"])
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| Method A |" in md and "| Method B |" in md and "Dice" in md
    assert "| Method A |" in capsys.readouterr().out
    with open(tmp_path / "cmp" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["Method A", "Method B"]
    assert float(rows[0]["dice_mean"]) == pytest.approx(read_summary(tmp_path / "a")["dice"]["mean"])
    assert float(rows[0]["dice_mean"]) > float(rows[1]["dice_mean"])
    assert written["examples"] == ["case0", "case1"]  # diseased first, up to --examples
    with Image.open(tmp_path / "cmp" / "comparison.png") as figure:
        # 2 rows of 128-pixel tiles; 4 columns: input, A, B, ground truth
        assert figure.size[0] > 4 * 128 and 2 * 128 < figure.size[1] < 3 * 128
    compare([str(tmp_path / "a"), str(tmp_path / "b"), "--names", "X,Y", "--out", str(tmp_path / "cmp2")])
    assert "| X |" in (tmp_path / "cmp2" / "comparison.md").read_text()


def test_compare_errors(tmp_path):
    _fake_run(tmp_path / "a", "A", 0.01)
    (tmp_path / "empty").mkdir()
    compare = _script("compare")
    with pytest.raises(FileNotFoundError, match="empty: no summary.json"):
        compare([str(tmp_path / "a"), str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")])
    with pytest.raises(ValueError, match="--names"):
        compare([str(tmp_path / "a"), "--names", "X,Y", "--out", str(tmp_path / "cmp")])
