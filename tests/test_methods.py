"""The methods beyond the paper (issue 16): classifier-free guidance, simplex noise (AnoDDPM), the
denoising autoencoder (Kascenas et al. 2022), the noise-level ensemble and --classifier_max_t; each
trains and translates through the shared scripts and output format, in one process and with torchrun."""
import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from cpu_helpers import one_thread, redraw_zero_layers  # noqa: F401  (one_thread is autouse)

from guided_diffusion import script_util as su
from guided_diffusion.anomaly import anomaly_map
from guided_diffusion.datasets.synthetic import generate
from guided_diffusion.guidance import GuidedModel, cfg_guided, make_cfg_model, unguided
from guided_diffusion.baselines import dae
from guided_diffusion.pipeline.translators import TranslationOptions, image_noise, translate_batch
from guided_diffusion.simplex import simplex_noise
from guided_diffusion.util.dist_util import _free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
UNET = ["--image_size", SIZE, "--num_channels", 32, "--num_res_blocks", 1, "--channel_mult", "1,2", "--num_heads", 1]
MODEL = [*UNET, "--attention_resolutions", 8, "--diffusion_steps", 50]
DAE = [*UNET, "--attention_resolutions", ""]
CLASSIFIER = ["--classifier_width", 32, "--classifier_depth", 1, "--classifier_channel_mult", "1,2",
              "--classifier_attention_resolutions", 8, "--classifier_num_head_channels", 32]
QUIET = ["--progress", False]


def _main(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def script(name, *argv):
    return _main(name)([str(a) for a in argv])


@pytest.fixture
def seen_by_training(monkeypatch):
    """What the diffusion model's training loss and the classifier were really given (x_0, t, noise,
    labels), recorded around the real calls while a script runs in this process."""
    from guided_diffusion.gaussian_diffusion import GaussianDiffusion
    from guided_diffusion.unet import EncoderUNetModel
    calls = {"losses": [], "classifier_t": []}
    losses, forward = GaussianDiffusion.training_losses, EncoderUNetModel.forward

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        calls["losses"].append({"x": x_start.detach().clone(), "t": t.clone(), "noise": noise.detach().clone(),
                                "y": None if not model_kwargs or "y" not in model_kwargs else model_kwargs["y"].clone()})
        return losses(self, model, x_start, t, model_kwargs=model_kwargs, noise=noise)

    def classifier_forward(self, x, timesteps):
        calls["classifier_t"].append(timesteps.clone())
        return forward(self, x, timesteps)

    monkeypatch.setattr(GaussianDiffusion, "training_losses", training_losses)
    monkeypatch.setattr(EncoderUNetModel, "forward", classifier_forward)
    return calls


def low_frequency_share(noise: th.Tensor, below: float) -> float:
    """Fraction of the power of (..., H, W) fields at spatial frequencies below ``below`` cycles per
    pixel on both axes (white noise: about the fraction of such frequencies)."""
    power = th.fft.fft2(noise).abs() ** 2
    f = th.fft.fftfreq(noise.shape[-1]).abs()
    low = th.maximum(f[:, None], f[None, :]) < below
    return float(power[..., low].sum() / power.sum())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(str(root), dataset="brats", size=SIZE, n_train=8, n_test=4, tumour_fraction=0.5, seed=1)
    root = root / "brats"
    return {"train": root / "training", "test": root / "testing", "labels": root / "test_labels"}


# ------------------------------------------------------------------------------------------ maths


def test_the_extra_label_row_is_only_there_for_classifier_free_guidance():
    flags = {**su.model_and_diffusion_defaults(), "image_size": SIZE, "num_channels": 32, "num_res_blocks": 1,
             "channel_mult": "1,2", "attention_resolutions": "8", "class_cond": True}
    plain = su.create_model_and_diffusion(**flags)[0].state_dict()
    default = su.create_model_and_diffusion(**flags, uncond_label=False)[0].state_dict()
    cfg = su.create_model_and_diffusion(**flags, uncond_label=True)[0].state_dict()
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in default.items()}
    assert plain["label_emb.weight"].shape[0] == su.NUM_CLASSES == 2
    differ = {k for k in plain if plain[k].shape != cfg[k].shape}
    assert differ == {"label_emb.weight"} and cfg["label_emb.weight"].shape[0] == su.NULL_CLASS + 1 == 3


def test_guidance_steers_towards_the_healthy_class():
    """The classifier's gradient is that of log p(healthy | x_t), worked out by hand for a linear
    classifier, and the translation hands class 0 to both the classifier and the network."""
    from guided_diffusion.guidance import make_cond_fn
    weight = th.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 0.5, 2.0, 1.0]])  # (classes, pixels)

    def classifier(x, t):
        return x.reshape(len(x), -1) @ weight.T

    x = th.tensor([[0.2, 0.4, -0.1, 0.3]]).reshape(1, 1, 2, 2)
    grad = make_cond_fn(classifier, 10.0)(x, th.zeros(1, dtype=th.long), y=th.tensor([0]))
    p = th.softmax(classifier(x, None), dim=-1)[0]
    by_hand = 10.0 * (weight[0] - (p[:, None] * weight).sum(dim=0))  # d/dx log softmax_0 = w_0 - sum_k p_k w_k
    th.testing.assert_close(grad.reshape(-1), by_hand)

    seen = {"classifier": [], "network": []}

    def cond_fn(x_t, t, y=None, **_):
        seen["classifier"].append(y.clone())
        return th.zeros_like(x_t)

    def network(x_t, t, y=None):
        seen["network"].append(y.clone())
        return th.zeros(x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])

    diffusion = su.create_gaussian_diffusion(steps=30, learn_sigma=True)
    for use_ddim in (True, False):
        x = th.rand(3, 1, 4, 4)
        translate_batch(GuidedModel(network, cond_fn=cond_fn, kind="classifier"), diffusion, x,
                        image_noise(0, ["a", "b", "c"], x.device), TranslationOptions(3, use_ddim))
    assert seen["classifier"] and seen["network"]
    assert all(y.tolist() == [su.HEALTHY] * 3 for y in seen["classifier"] + seen["network"]) and su.HEALTHY == 0


def test_cfg_combines_the_two_predictions_and_at_w_0_is_the_conditional_ddim():
    th.manual_seed(0)
    model, diffusion = su.create_model_and_diffusion(**{
        **su.model_and_diffusion_defaults(), "image_size": SIZE, "num_channels": 32, "num_res_blocks": 1,
        "channel_mult": "1,2", "attention_resolutions": "8", "class_cond": True, "learn_sigma": True,
        "diffusion_steps": 50}, uncond_label=True)
    model = redraw_zero_layers(model).eval()
    x = th.rand(2, 4, SIZE, SIZE)
    t = th.tensor([3, 30])
    y = th.zeros(2, dtype=th.long)
    with th.no_grad():
        cond, uncond = model(x, t, y=y), model(x, t, y=th.full_like(y, su.NULL_CLASS))
        guided = make_cfg_model(model, 2.0, su.NULL_CLASS, 4)(x, t, y=y)
    # eps channels: 3 cond - 2 uncond (Ho & Salimans 2022, Eq. 6); the variance channels: the conditional's
    th.testing.assert_close(guided[:, :4], 3 * cond[:, :4] - 2 * uncond[:, :4], rtol=1e-5, atol=1e-5)
    th.testing.assert_close(guided[:, 4:], cond[:, 4:], rtol=1e-5, atol=1e-5)
    with th.no_grad():
        plain, w0, w2 = (translate_batch(guided, diffusion, x, image_noise(1, ["a", "b"], x.device),
                                         TranslationOptions(10, use_ddim=True))
                         for guided in (unguided(model), cfg_guided(model, 0.0, su.NULL_CLASS, 4),
                                        cfg_guided(model, 2.0, su.NULL_CLASS, 4)))
    th.testing.assert_close(w0, plain, rtol=0, atol=1e-5)  # batched twice as large: rounding only
    assert (w2 - plain).abs().max() > 1e-3  # guidance moves the result


def test_simplex_noise_is_standardised_reproducible_and_low_frequency():
    shape = (3, 2, 64, 64)
    a = simplex_noise(shape, octaves=6, persistence=0.8, frequency=32, generator=th.Generator().manual_seed(5))
    b = simplex_noise(shape, octaves=6, persistence=0.8, frequency=32, generator=th.Generator().manual_seed(5))
    c = simplex_noise(shape, octaves=6, persistence=0.8, frequency=32, generator=th.Generator().manual_seed(6))
    assert a.shape == shape and th.equal(a, b) and not th.equal(a, c)
    per_field = a.reshape(6, -1)
    assert per_field.mean(dim=1).abs().max() < 1e-5
    th.testing.assert_close(per_field.std(dim=1), th.ones(6), rtol=0, atol=1e-4)
    assert not th.equal(a[0, 0], a[1, 0]) and not th.equal(a[0, 0], a[0, 1])  # a field per image and channel

    def low_frequency_share(noise):
        """Fraction of the power at spatial frequencies below 1/8 cycle per pixel (both axes)."""
        power = th.fft.fft2(noise).abs() ** 2
        f = th.fft.fftfreq(noise.shape[-1]).abs()
        low = th.maximum(f[:, None], f[None, :]) < 1 / 8
        return float(power[..., low].sum() / power.sum())

    gaussian = th.randn(shape, generator=th.Generator().manual_seed(5))
    # white noise spreads its power evenly: 1/16 of the frequencies hold about 1/16 of it (measured 0.06);
    # simplex noise with a 32-pixel coarsest period holds most of its power there (measured 0.8)
    assert low_frequency_share(gaussian) < 0.1 < 0.5 < low_frequency_share(a)


def test_dae_coarse_noise_and_loss_by_hand():
    x = th.zeros(1, 1, 8, 8)
    x[..., 2:6, 2:6] = 0.5  # foreground: the centre square
    eps = th.zeros(1, 1, 2, 2)
    eps[0, 0, 0, 0] = 1.0  # one coarse cell
    up = dae.coarse_noise(eps, 8, th.zeros(1, 2, dtype=th.long))
    # bilinear upsampling by 4 (half-pixel centres): the top-left 2x2 pixels take the cell's full value
    assert up[0, 0, :2, :2].eq(1.0).all() and up[0, 0, -2:, -2:].eq(0.0).all()
    rolled = dae.coarse_noise(eps, 8, th.tensor([[1, 2]]))
    assert th.equal(rolled, th.roll(up, shifts=(1, 2), dims=(-2, -1)))
    noisy = dae.noisy_input(x, eps, th.zeros(1, 2, dtype=th.long))
    assert th.equal(noisy[x == 0], th.zeros_like(noisy[x == 0]))  # no noise on the background
    net = lambda inp, t: inp * 0 + 0.25  # noqa: E731  (a "network" that returns 0.25 everywhere)
    loss, _ = dae.dae_loss(net, x, eps, th.zeros(1, 2, dtype=th.long))
    assert loss.item() == pytest.approx(16 * (0.25 - 0.5) ** 2 / 64)  # 16 foreground pixels of 64


# ------------------------------------------------------------------------------------------ the scripts


def test_denoising_autoencoder_trains_and_translates(data, tmp_path):
    flags = DAE
    script("dae_train", "--data_dir", data["train"], *flags, *QUIET, "--batch_size", 4, "--iterations", 40,
                    "--lr", 1e-3, "--log_interval", 10, "--noise_res", 4, "--log_dir", tmp_path / "dae")
    with open(tmp_path / "dae" / "progress.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses  # the DAE learns (measured 0.025 -> 0.0019)
    summary = script("dae_translate", "--data_dir", data["test"], "--label_dir", data["labels"], *flags, *QUIET,
                     "--model_path", tmp_path / "dae" / "model000040.pt", "--output_dir", tmp_path / "out",
                     "--log_dir", tmp_path / "log")
    assert summary["method"] == "DAE" and summary["n_images"] == 4


def test_cfg_end_to_end_and_a_checkpoint_without_the_extra_label(data, tmp_path, seen_by_training):
    train = ["--data_dir", data["train"], *MODEL, "--class_cond", True, *QUIET, "--batch_size", 8,
             "--lr_anneal_steps", 6]
    script("image_train", *train, "--p_uncond", 0.2, "--log_dir", tmp_path / "cfg")
    dropped = th.cat([c["y"] for c in seen_by_training["losses"]])
    # label dropout really reaches the loss: 48 labels, about a fifth "no class" (binomial 99.8 %: 3..19)
    assert len(dropped) == 48 and 3 <= int((dropped == su.NULL_CLASS).sum()) <= 19
    seen_by_training["losses"].clear()
    script("image_train", *train[:-2], "--lr_anneal_steps", 2, "--log_dir", tmp_path / "plain")
    assert not any((c["y"] == su.NULL_CLASS).any() for c in seen_by_training["losses"])
    common = ["--data_dir", data["test"], "--label_dir", data["labels"], *MODEL, "--class_cond", True, *QUIET,
              "--use_ddim", True, "--noise_level", 4, "--guidance", "cfg", "--guidance_scale", 2]
    summary = script("classifier_sample_known", *common, "--model_path", tmp_path / "cfg" / "model000006.pt",
                     "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "log")
    assert summary["method"] == "DDIM, L=4, CFG W=2" and summary["n_images"] == 4
    # the files are the guided DDIM of W = 2 worked out here: eps = 3 eps(x, t, healthy) - 2 eps(x, t, no class)
    model, diffusion = su.create_model_and_diffusion(**{**su.model_and_diffusion_defaults(), "image_size": SIZE,
                                                        "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
                                                        "num_heads": 1, "attention_resolutions": "8",
                                                        "diffusion_steps": 50, "class_cond": True}, uncond_label=True)
    model.load_state_dict(th.load(tmp_path / "cfg" / "model000006.pt", weights_only=True))
    model.eval()

    def by_hand(x, t, y=None):
        cond = model(x, t, y=y)
        uncond = model(x, t, y=th.full_like(y, su.NULL_CLASS))
        return th.cat([3 * cond[:, :4] - 2 * uncond[:, :4], cond[:, 4:]], dim=1)

    files = sorted((tmp_path / "out").glob("*.npz"))
    for path in files[:2]:
        with np.load(path) as z:
            x = th.from_numpy(z["input"])[None]
            with th.no_grad():
                expected = translate_batch(GuidedModel(model, decode=by_hand, kind="cfg", scale=2.0), diffusion, x,
                                           image_noise(0, [path.stem], x.device), TranslationOptions(4, use_ddim=True))
            np.testing.assert_allclose(z["healthy"], expected[0].numpy(), rtol=1e-4, atol=1e-5)
    from guided_diffusion.util.errors import UserError
    with pytest.raises(UserError, match=r"plain/model000002.pt: made without the 'no class' label.*--p_uncond"):
        script("classifier_sample_known", *common, "--model_path", tmp_path / "plain" / "model000002.pt",
               "--output_dir", tmp_path / "out2", "--log_dir", tmp_path / "log2")


def test_simplex_diffusion_on_healthy_slices_translates_unguided(data, tmp_path, seen_by_training):
    noise = ["--noise_type", "simplex", "--simplex_frequency", 8, "--simplex_octaves", 3]
    result = script("image_train", "--data_dir", data["train"], *MODEL, "--class_cond", False, *noise, *QUIET,
                    "--healthy_only", True, "--batch_size", 2, "--lr_anneal_steps", 4, "--log_dir", tmp_path / "m")
    assert result["step"] == 4
    calls = seen_by_training["losses"]
    # the noise training really drew is simplex: most of its power below 1/4 cycle per pixel, where white
    # noise keeps about the share of those frequencies, 49/256 (measured: simplex 0.9, Gaussian 0.19)
    drawn = th.cat([c["noise"] for c in calls])
    assert low_frequency_share(drawn, 1 / 4) > 0.6 > 0.3 > low_frequency_share(th.randn(drawn.shape), 1 / 4)
    # --healthy_only: every image that reached a batch is one of the healthy training slices
    from guided_diffusion.datasets.loaders import create_dataset
    dataset = create_dataset(str(data["train"]), "brats", SIZE)
    healthy = [dataset[i][0] for i in range(len(dataset)) if dataset[i][1]["y"] == 0]
    assert 0 < len(healthy) < len(dataset)
    for x in th.cat([c["x"] for c in calls]):
        assert any(th.equal(x, h) for h in healthy)
    flags = json.loads((tmp_path / "m" / "flags_image_train.json").read_text())
    assert flags["noise_type"] == "simplex" and flags["healthy_only"] is True
    summary = script("classifier_sample_known", "--data_dir", data["test"], "--label_dir", data["labels"], *MODEL,
                     "--class_cond", False, *noise, *QUIET, "--use_ddim", False, "--guidance", "none",
                     "--noise_level", 5, "--model_path", tmp_path / "m" / "model000004.pt",
                     "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "log")
    assert summary["method"] == "simplex DDPM, L=5, unguided"


def test_balance_classes_draws_each_class_equally_often(tmp_path, monkeypatch):
    from guided_diffusion.datasets.loaders import balanced_indices
    from guided_diffusion.pipeline.methods.diffusion import ClassifierPiece
    assert balanced_indices([1, 0, 0, 0, 0, 1, 0, 0]) == [0, 0, 0, 1, 2, 3, 4, 5, 5, 5, 6, 7]
    assert balanced_indices([1, 0, 0, 0, 0, 1, 0, 0], [0, 1, 2]) == [0, 0, 1, 2]  # 1 diseased : 2 healthy
    assert balanced_indices([0, 0, 0], [1, 2]) == [1, 2]  # one class: as it is
    generate(str(tmp_path), dataset="brats", size=SIZE, n_train=8, n_test=0, tumour_fraction=0.25, seed=1)
    train = tmp_path / "brats" / "training"  # 2 diseased, 6 healthy slices
    drawn, terms = [], ClassifierPiece.logits_and_terms

    def recorded(self, net, x, y, t, noise):
        drawn.append(y.clone())
        return terms(self, net, x, y, t, noise)

    monkeypatch.setattr(ClassifierPiece, "logits_and_terms", recorded)
    labels = {}
    for balance in (False, True):  # 3 steps of 4 = one epoch of the balanced 12 (each diseased slice 3 times)
        drawn.clear()
        script("classifier_train", "--data_dir", train, "--val_data_dir", train, "--eval_interval", 0,
               "--image_size", SIZE, *CLASSIFIER, "--diffusion_steps", 50, *QUIET, "--batch_size", 4,
               "--iterations", 3, "--balance_classes", balance, "--log_dir", tmp_path / f"c{balance}")
        labels[balance] = th.cat(drawn)
    assert len(labels[True]) == 12 and int(labels[True].sum()) == 6
    assert int(labels[False].sum()) <= 4  # 2 per 8 drawn as they come


def test_noise_level_ensemble_and_classifier_max_t(data, tmp_path, capsys, seen_by_training):
    script("image_train", "--data_dir", data["train"], *MODEL, "--class_cond", True, *QUIET, "--batch_size", 4,
           "--lr_anneal_steps", 2, "--log_dir", tmp_path / "m")
    script("classifier_train", "--data_dir", data["train"], "--image_size", SIZE, *CLASSIFIER, "--diffusion_steps", 50,
           *QUIET, "--batch_size", 4, "--iterations", 4, "--classifier_max_t", 5, "--log_dir", tmp_path / "c")
    # the classifier saw no timestep at or above --classifier_max_t (16 draws of 50 would have)
    drawn = th.cat(seen_by_training["classifier_t"])
    assert len(drawn) >= 16 and int(drawn.max()) < 5
    common = ["--data_dir", data["test"], "--label_dir", data["labels"], *MODEL, "--class_cond", True, *CLASSIFIER,
              *QUIET, "--use_ddim", True, "--model_path", tmp_path / "m" / "model000002.pt",
              "--classifier_path", tmp_path / "c" / "model000004.pt"]
    single = {}
    for level in (3, 6):
        script("classifier_sample_known", *common, "--noise_level", level, "--output_dir", tmp_path / f"L{level}",
               "--log_dir", tmp_path / f"log{level}")
        single[level] = sorted((tmp_path / f"L{level}").glob("*.npz"))
    capsys.readouterr()
    summary = script("classifier_sample_known", *common, "--noise_level", "3,6", "--output_dir", tmp_path / "ens",
                     "--log_dir", tmp_path / "logens")
    # level 6 asks the classifier about t = 4 at most: still below --classifier_max_t 5; level 7 would not be
    assert "--classifier_max_t" not in capsys.readouterr().err
    assert summary["method"] == "DDIM, L=3,6, s=100"
    for a, b in zip(single[3], single[6]):
        with np.load(a) as za, np.load(b) as zb, np.load(tmp_path / "ens" / a.name) as ze:
            np.testing.assert_allclose(ze["anomaly"], (za["anomaly"] + zb["anomaly"]) / 2, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ze["healthy"], (za["healthy"] + zb["healthy"]) / 2, rtol=1e-5, atol=1e-6)
            assert not np.allclose(ze["anomaly"], anomaly_map(ze["input"], ze["healthy"]))  # the maps' mean
    script("classifier_sample_known", *common, "--noise_level", 7, "--output_dir", tmp_path / "L7",
           "--log_dir", tmp_path / "log7")
    assert "trained on t < 5 only (--classifier_max_t" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dae", "cfg", "simplex"])
def test_new_methods_translate_under_torchrun_as_in_one_process(data, tmp_path, method):
    """Each writes the same files in 2 processes as in 1 (per-image noise, sharded folder)."""
    if method == "dae":
        flags = DAE
        script("dae_train", "--data_dir", data["train"], *flags, *QUIET, "--batch_size", 4, "--iterations", 1,
               "--log_dir", tmp_path / "net")
        translate = ["dae_translate.py", *flags]
    else:
        extra = (["--class_cond", True, "--p_uncond", 0.2] if method == "cfg"
                 else ["--class_cond", False, "--noise_type", "simplex", "--simplex_frequency", 8])
        script("image_train", "--data_dir", data["train"], *MODEL, *extra, *QUIET, "--batch_size", 4,
               "--lr_anneal_steps", 1, "--log_dir", tmp_path / "net")
        extra = [a for a in extra if a not in ("--p_uncond", 0.2)]
        guidance = ["--guidance", "cfg", "--use_ddim", True] if method == "cfg" else ["--guidance", "none",
                                                                                     "--use_ddim", False]
        translate = ["classifier_sample_known.py", *MODEL, *extra, *guidance, "--noise_level", 4]
    args = [*translate, "--data_dir", data["test"], "--label_dir", data["labels"], "--batch_size", 2,
            "--model_path", tmp_path / "net" / ("model000001.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, launcher in (("one", [sys.executable]), ("two", [sys.executable, "-m", "torch.distributed.run",
                                                              "--nproc_per_node", 2, "--master_addr", "127.0.0.1",
                                                              "--master_port", _free_port()])):
        cmd = [*launcher, REPO / "scripts" / args[0], *args[1:], "--output_dir", tmp_path / out,
               "--log_dir", tmp_path / f"{out}-log", *QUIET]
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    # 4 images (npz, png), metrics.csv, summary.json, settings.json, report.html, report/
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 2 * 4 + 5
    # each rank translated its share, not the whole folder (equal files cannot show duplicated work)
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["images_per_rank"] == [4]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["images_per_rank"] == [2, 2]
    for name in names:
        if name.endswith(".npz"):
            with np.load(tmp_path / "one" / name) as a, np.load(tmp_path / "two" / name) as b:
                np.testing.assert_allclose(a["healthy"], b["healthy"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ tune.py, intensity


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    generate(str(root), dataset="brats", size=SIZE, n_train=0, n_test=4, n_val=8, tumour_fraction=0.5, seed=2)
    return root / "brats" / "validation"


def test_tune_chooses_on_validation_and_prints_runnable_commands(data, validation, tmp_path, capsys):
    script("image_train", "--data_dir", data["train"], *MODEL, "--class_cond", True, *QUIET, "--batch_size", 4,
           "--lr_anneal_steps", 2, "--log_dir", tmp_path / "m")
    script("classifier_train", "--data_dir", data["train"], "--image_size", SIZE, *CLASSIFIER, "--diffusion_steps", 50,
           *QUIET, "--batch_size", 4, "--iterations", 2, "--log_dir", tmp_path / "c")
    argv = ["--data_dir", validation, *MODEL, "--class_cond", True, *CLASSIFIER, *QUIET, "--use_ddim", True,
            "--model_path", tmp_path / "m" / "model000002.pt", "--classifier_path", tmp_path / "c" / "model000002.pt",
            "--noise_levels", "3,3+5", "--classifier_scales", "10,100", "--protocol", "volume", "--threshold", "val",
            "--out", tmp_path / "tune", "--log_dir", tmp_path / "tune-log"]
    best = script("tune", *argv)
    with open(tmp_path / "tune" / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["noise_level"], r["scale"]) for r in rows] == [("3", "10.0"), ("3", "100.0"), ("3+5", "10.0"),
                                                              ("3+5", "100.0")]
    assert json.loads((tmp_path / "tune" / "model000002_L3+5_s10" / "summary.json").read_text())["flags"][
        "noise_level"] == [3, 5]  # an ensemble item: one translation averaging L=3 and L=5
    dice = [float(r["dice_mean"]) for r in rows]
    assert best["dice"] == max(dice) and best["setting"] == rows[dice.index(max(dice))]["setting"]
    assert all(r["threshold_rule"] == "best" and r["protocol"] == "volume" for r in rows)
    assert json.loads((tmp_path / "tune" / "best.json").read_text())["threshold"] == pytest.approx(
        float(rows[dice.index(max(dice))]["threshold"]))
    page = (tmp_path / "tune" / "report.html").read_text()  # the grid as a heat map, each setting's own page linked
    assert "report/tune_grid.png" in page and f"{best['setting']}</a> (chosen)" in page
    assert all(f'href="{r["setting"]}/report.html"' in page for r in rows)
    # a rerun translates nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "tune").rglob("*.npz")}
    script("tune", *argv)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tune").rglob("*.npz")} == stamps and len(stamps) == 32
    # the printed commands run on the test set as they are
    printed = capsys.readouterr().out
    translate_line = next(line for line in printed.splitlines() if "classifier_sample_known.py" in line)
    evaluate_line = next(line for line in printed.splitlines() if "scripts/evaluate.py" in line)
    out = tmp_path / "test_out"
    fill = {"TEST_DIR": str(data["test"]), "TEST_LABELS": str(data["labels"]), "TEST_OUTPUT_DIR": str(out)}
    words = [fill.get(w, w) for w in shlex.split(translate_line)]
    for flag in ("--noise_level", "--classifier_scale", "--use_ddim", "--guidance"):  # even where at defaults
        assert flag in words, flag
    assert words == [fill.get(w, w) for w in shlex.split(best["translate"])]  # best.json's line is the printed one
    summary = script("classifier_sample_known", *words[2:], "--log_dir", tmp_path / "log")
    assert summary["flags"]["noise_level"] == list(best["noise_level"])
    assert summary["flags"]["classifier_scale"] == best["scale"]
    assert _main("evaluate")([fill.get(w, w) for w in shlex.split(evaluate_line)][2:]) == 0
    scored = json.loads((out / "summary.json").read_text())
    assert scored["threshold_rule"] == "val" and scored["threshold"] == pytest.approx(best["threshold"])


def test_intensity_baseline_maps_the_channel(data, tmp_path):
    summary = script("intensity_translate", "--data_dir", data["test"], "--label_dir", data["labels"], "--image_size",
                     SIZE, *QUIET, "--channel", "flair", "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "l")
    assert summary["method"] == "FLAIR intensity" and summary["n_images"] == 4
    for path in (tmp_path / "out").glob("*.npz"):
        with np.load(path) as z:
            np.testing.assert_array_equal(z["anomaly"], z["input"][3])  # the flair channel, unchanged
    from guided_diffusion.util.errors import UserError
    with pytest.raises(UserError, match="--channel flair: --dataset chexpert has the channels xray"):
        script("intensity_translate", "--data_dir", data["test"], "--dataset", "chexpert", "--image_size", SIZE,
               "--output_dir", tmp_path / "x", "--log_dir", tmp_path / "l2")


def test_tune_breaks_a_tie_by_the_grid_order():
    from guided_diffusion.pipeline.tune import best_row
    rows = [{"setting": "a", "dice_mean": 0.5}, {"setting": "b", "dice_mean": 0.7},
            {"setting": "c", "dice_mean": 0.7}, {"setting": "d", "dice_mean": 0.69999}]
    assert best_row(rows)["setting"] == "b"  # the first of the two best, not the last
    assert best_row(rows[2:])["setting"] == "c"
    assert best_row(list(reversed(rows)))["setting"] == "c"
