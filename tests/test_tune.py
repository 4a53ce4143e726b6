"""tune.py choosing among levers (issue 20): --grid NAME=V1,V2 over the anomaly map's and the sampler's flags,
the settings' names, tune.csv's columns, best.json's flags, and a map lever reusing the translation."""
import csv
import json
import os
import shlex

import numpy as np
import pytest
import torch as th
from scipy import ndimage
from cpu_helpers import one_thread  # noqa: F401  (one_thread is autouse)

from guided_diffusion.datasets.loaders import create_dataset
from guided_diffusion.datasets.synthetic import generate
from guided_diffusion.maps import MapOptions
from guided_diffusion.pipeline import runs, tune
from guided_diffusion.pipeline.cli import run_script
from guided_diffusion.pipeline.translators import NetworkTranslation
from guided_diffusion.pipeline.networks import create_unet_and_diffusion
from guided_diffusion.pipeline.methods import diffusion
from guided_diffusion.util.errors import UserError
from guided_diffusion.util.flagspec import from_dict, parse_command, parse_flags

SIZE = 16
MODEL = dict(image_size=SIZE, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_heads=1, class_cond=True, learn_sigma=True, diffusion_steps=40)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained tiny diffusion model's checkpoint with its flags beside it, as training writes them."""
    folder = tmp_path_factory.mktemp("model")
    cfg = from_dict(diffusion.ImageTrainConfig, MODEL)
    th.manual_seed(0)
    th.save(create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)[0].state_dict(), folder / "model000001.pt")
    runs._write_flags(cfg, str(folder))
    return folder / "model000001.pt"


def _split(tmp_path_factory, seed):
    root = tmp_path_factory.mktemp(f"data{seed}")
    generate(str(root), dataset="brats", size=SIZE, n_train=0, n_test=0, n_val=8, tumour_fraction=0.5, seed=seed)
    return root / "brats" / "validation"  # leaves with their seg


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return _split(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    return _split(tmp_path_factory, 5)


def _tune(argv):
    return run_script(tune.TuneConfig, tune.tune, [str(a) for a in argv])


def _parsed(*argv):
    return parse_flags(tune.TuneConfig, [str(a) for a in ("--out", "o", "--model_path", "m/model000001.pt", *argv)])


# ------------------------------------------------------------------------------------------ the grid


def test_grid_ranges_over_levers_in_order_and_names_only_those_that_vary():
    cfg = _parsed("--noise_levels", "3,5", "--classifier_scales", 10, "--grid", "map_residual=abs,ssim",
                  "--grid", "map_normalise=channel", "map_smooth=0,1.5")
    assert cfg.tune.grid == ("map_residual=abs,ssim", "map_normalise=channel", "map_smooth=0,1.5")  # repeatable
    settings = tune.grid(cfg)
    assert [s.name for s in settings] == [
        f"model000001_L{level}_s10_map_residual-{residual}_map_smooth-{smooth}"
        for level in (3, 5) for residual in ("abs", "ssim") for smooth in ("0", "1.5")]
    assert all(dict(s.levers)["map_normalise"] == "channel" for s in settings)  # one value: applied, not named
    sample = tune.setting_config(cfg, settings[3], "folder")  # L3, ssim, smooth 1.5
    assert (sample.maps.map_residual, sample.maps.map_normalise, sample.maps.map_smooth) == ("ssim", "channel", 1.5)
    assert sample.sampling.noise_level == (3,) and sample.translation.output_dir == "folder"
    # any on/off or number flag of the translation, typed as the script parses it
    settings = tune.grid(_parsed("--noise_levels", 3, "--classifier_scales", 10, "--grid", "use_ddim=True,False",
                                 "clip_denoised=False"))
    assert [s.name for s in settings] == ["model000001_L3_s10_use_ddim-True", "model000001_L3_s10_use_ddim-False"]
    assert tune.setting_config(_parsed(), settings[1], "f").sampling.use_ddim is False
    assert tune.setting_config(_parsed(), settings[1], "f").sampling.clip_denoised is False
    # without --grid the names are as before
    assert [s.name for s in tune.grid(_parsed("--noise_levels", 3, "--classifier_scales", 10))] == ["model000001_L3_s10"]


@pytest.mark.parametrize("item, message", [
    ("map_smooth", r"--grid map_smooth: expected NAME=V1,V2,\.\.\."),
    ("noise_level=3,5", "--grid noise_level=3,5: --noise_level is tuned by --noise_levels"),
    ("classifier_scale=1,2", "--classifier_scale is tuned by --classifier_scales"),
    ("map_smoothing=0,1", "classifier_sample_known.py has no flag --map_smoothing"),
    ("median=0,3", r"--median does not change the translation \(scoring"),
    ("batch_size=1,2", "--batch_size does not change the translation"),
    ("num_channels=32,64", "--num_channels is fixed by the checkpoints"),
    ("data_dir=a,b", "--data_dir is not an on/off, choice or number flag"),
    ("map_smooth=0,x", "--grid map_smooth=0,x: --map_smooth 'x'"),
    ("map_smooth=0,-1", "--grid map_smooth=0,-1: --map_smooth -1.0: expected a sigma of 0"),
    ("map_residual=abs,l2", "--map_residual 'l2': expected one of abs, ssim, abs\\+ssim"),
    ("map_smooth=1,1.0", "--grid map_smooth=1,1.0: a value is given twice"),
])
def test_a_bad_grid_item_is_one_line_naming_it(item, message):
    with pytest.raises(UserError, match=message):
        tune.grid(_parsed("--grid", item))


def test_a_lever_given_twice_or_also_as_its_flag_is_refused():
    with pytest.raises(UserError, match="--grid map_smooth=2: --map_smooth is in --grid twice"):
        tune.grid(_parsed("--grid", "map_smooth=0,1", "--grid", "map_smooth=2"))
    with pytest.raises(UserError, match="--grid map_smooth=0,1: --map_smooth 2.0 is given too"):
        tune.grid(_parsed("--map_smooth", 2, "--grid", "map_smooth=0,1"))
    with pytest.raises(UserError, match="two settings would share the folder model000001_L3_s10"):
        tune.grid(_parsed("--noise_levels", 3, "--classifier_scales", "10,10.0000001"))
    # a fixed map option without --grid is every setting's
    cfg = _parsed("--map_smooth", 2, "--noise_levels", 3, "--classifier_scales", 10)
    assert tune.setting_config(cfg, tune.grid(cfg)[0], "f").maps.map_smooth == 2.0


def test_best_flags_keep_a_chosen_lever_even_at_its_default():
    cfg = _parsed("--noise_levels", 3, "--classifier_scales", 10, "--grid", "map_smooth=0,1")
    first = tune.grid(cfg)[0]  # map_smooth 0, the default
    applied = tune.applied_config(cfg, first, "val")
    assert tune.applied_flags(applied, ("map_smooth",))["map_smooth"] == 0.0
    assert "map_smooth" not in tune.applied_flags(applied)
    words = shlex.split(tune._translate_command(applied, ("map_smooth",)))
    assert words[words.index("--map_smooth") + 1] == "0.0"


# ------------------------------------------------------------------------------------------ tuning runs


def _spiky_translation(folder):
    """A stand-in translation whose maps are known: the healthy image is the input with the tumour taken
    down by 0.5 in every channel (a residual of 2 over the tumour) and 12 one-pixel spikes of 3 in the
    first channel at seeded places (a residual of 3). Unsmoothed, no threshold keeps the tumour without
    the spikes; smoothed with sigma 1 a spike falls to about 0.48 while the tumour's middle stays near 2,
    so --map_smooth 1 scores the better Dice. Counts the images it translates."""
    dataset = create_dataset(str(folder), "brats", SIZE)
    gts = {info["id"]: info["gt"] for info in (dataset[i][1] for i in range(len(dataset)))}
    calls = {"images": 0}

    def translate(x, ids):
        healthy = x.clone()
        for j, image_id in enumerate(ids):
            gt = gts[image_id]
            healthy[j] -= 0.5 * gt
            rng = np.random.default_rng(int(image_id))
            free = np.flatnonzero(gt.numpy().reshape(-1) == 0)
            for p in rng.choice(free, size=12, replace=False):
                healthy[j, 0, p // SIZE, p % SIZE] += 3.0
        calls["images"] += len(ids)
        return healthy

    def method(cfg, device):
        method.built.append(cfg)
        return NetworkTranslation("spiky", lambda x: translate(x, method.ids))

    method.built = []
    return method, calls, gts


def test_tune_chooses_the_better_map_lever_and_reuses_the_translation(model_path, val, test_split, tmp_path,
                                                                      monkeypatch, capsys):
    fake, calls, _ = _spiky_translation(val)
    test_fake, test_calls, _ = _spiky_translation(test_split)
    ids_seen = []

    def method(cfg, device):  # the validation's stand-in for the validation folder, the test's for the test
        stand_in = test_fake if os.path.samefile(cfg.data.data_dir, test_split) else fake
        inner = stand_in(cfg, device)

        def call(x, ids, callback=None):
            stand_in.ids = list(ids)
            ids_seen.append(list(ids))
            return inner(x, ids)
        call.name = inner.name
        return call

    monkeypatch.setattr(diffusion, "diffusion_translator", method)
    argv = ["--data_dir", val, "--model_path", model_path, "--guidance", "none", "--noise_levels", "3,2+3",
            "--grid", "map_smooth=0,1", "--protocol", "slice", "--threshold", "val", "--progress", False,
            "--out", tmp_path / "tune", "--log_dir", tmp_path / "log", "--test_dir", test_split,
            "--test_output_dir", tmp_path / "test"]
    best = _tune(argv)
    with open(tmp_path / "tune" / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["map_smooth"]) for r in rows] == [
        ("model000001_L3_map_smooth-0", "0"), ("model000001_L3_map_smooth-1", "1"),
        ("model000001_L2+3_map_smooth-0", "0"), ("model000001_L2+3_map_smooth-1", "1")]
    dice = {r["setting"]: float(r["dice_mean"]) for r in rows}
    assert dice["model000001_L3_map_smooth-1"] > dice["model000001_L3_map_smooth-0"] + 0.2
    assert best["setting"] == "model000001_L3_map_smooth-1"  # the first of the equal best: grid order
    assert best["levers"] == {"map_smooth": 1.0}
    # the single level was translated once for both map options; each ensemble item is translated anew
    assert calls["images"] == 8 * 3
    smoothed = json.loads((tmp_path / "tune" / "model000001_L3_map_smooth-1" / "summary.json").read_text())
    assert smoothed["maps_from"] == str(tmp_path / "tune" / "model000001_L3_map_smooth-0")
    assert "images_timed" not in smoothed and smoothed["flags"]["map_smooth"] == 1.0
    for name in ("model000001_L3_map_smooth-0", "model000001_L2+3_map_smooth-1"):
        assert json.loads((tmp_path / "tune" / name / "summary.json").read_text())["images_timed"] == 8
    for path in sorted((tmp_path / "tune" / "model000001_L3_map_smooth-1").glob("*.npz")):
        with np.load(path) as z, np.load(tmp_path / "tune" / "model000001_L3_map_smooth-0" / path.name) as source:
            np.testing.assert_array_equal(z["healthy"], source["healthy"])
            by_scipy = ndimage.gaussian_filter(np.abs(z["input"] - z["healthy"]).sum(axis=0), sigma=1.0)
            np.testing.assert_allclose(z["anomaly"], by_scipy, rtol=1e-5, atol=1e-6)
    # best.json's flags, its command line and the test translation reproduce the chosen map
    record = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert record["flags"]["map_smooth"] == 1.0
    words = shlex.split(record["translate"])
    assert words[words.index("--map_smooth") + 1] == "1.0"
    assert from_dict(diffusion.SampleConfig, record["flags"]).maps.map_smooth == 1.0
    assert test_calls["images"] == 8
    assert json.loads((tmp_path / "test" / "settings.json").read_text())["flags"]["map_smooth"] == 1.0
    for path in sorted((tmp_path / "test").glob("*.npz")):
        with np.load(path) as z:
            by_scipy = ndimage.gaussian_filter(np.abs(z["input"] - z["healthy"]).sum(axis=0), sigma=1.0)
            np.testing.assert_allclose(z["anomaly"], by_scipy, rtol=1e-5, atol=1e-6)
    page = (tmp_path / "tune" / "report.html").read_text()
    assert "<th>map_smooth</th>" in page and f"{best['setting']}</a> (chosen)" in page
    # a rerun translates and rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "tune").rglob("*.npz")}
    calls["images"] = 0
    _tune(argv[:-4])
    assert calls["images"] == 0 and len(stamps) == 32
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tune").rglob("*.npz")} == stamps


def test_a_reused_translation_gives_the_maps_of_a_direct_one(model_path, val, tmp_path):
    """The real diffusion translation: tune.py's SSIM folder, made from the abs folder's files, equals
    classifier_sample_known.py translating with --map_residual ssim itself."""
    common = ["--data_dir", val, "--model_path", model_path, "--guidance", "none", "--use_ddim", True,
              "--num_samples", 3, "--progress", False]
    _tune([*common, "--noise_levels", 2, "--grid", "map_residual=abs,ssim", "--out", tmp_path / "tune",
           "--log_dir", tmp_path / "log"])
    reused = tmp_path / "tune" / "model000001_L2_map_residual-ssim"
    assert "images_timed" not in json.loads((reused / "summary.json").read_text())
    direct = tmp_path / "direct"
    run_script(diffusion.SampleConfig, diffusion.run_translation,
               [str(a) for a in (*common, "--noise_level", 2, "--map_residual", "ssim", "--output_dir", direct,
                                 "--log_dir", tmp_path / "log2")])
    names = sorted(p.name for p in direct.glob("*.npz"))
    assert names == sorted(p.name for p in reused.glob("*.npz")) and len(names) == 3
    for name in names:
        with np.load(reused / name) as a, np.load(direct / name) as b:
            for key in ("input", "healthy", "anomaly", "mask"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    assert not np.array_equal(np.load(reused / names[0])["anomaly"],
                              np.load(tmp_path / "tune" / "model000001_L2_map_residual-abs" / names[0])["anomaly"])
    # the script's method carries the map options to a noise-level ensemble's maps
    flags = {**MODEL, "model_path": [str(model_path)], "guidance": "none", "noise_level": [2], "map_smooth": 1.0}
    method = diffusion.diffusion_translator(from_dict(diffusion.SampleConfig, flags), th.device("cpu"))
    assert method.map_options == MapOptions(smooth=1.0)


def test_parse_command_sees_a_repeated_grid_as_given():
    cfg, given = parse_command(tune.TuneConfig, ["--out", "o", "--grid", "a=1", "--grid", "b=2,3"])
    assert cfg.tune.grid == ("a=1", "b=2,3") and "grid" in given
    assert parse_flags(tune.TuneConfig, ["--out", "o"]).tune.grid == ()
