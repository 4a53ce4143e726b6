"""A checkpoint carries its network: the flags a user leaves out are the checkpoint's (its saved flags, else
its tensor shapes), a contradiction is one error listing every flag, flags that cannot build a network are
one line before any data is read, no flag may be abbreviated; tune.py's test command and --test_dir; --help."""
import json
import os
import shlex
import shutil

import pytest
import torch as th

from cpu_helpers import one_thread  # noqa: F401  (autouse)
from guided_diffusion.pipeline import evaluate, prepare, runs, tune
from guided_diffusion.pipeline.cli import run_script
from guided_diffusion.pipeline.methods.dae import DAETrainConfig, DAETranslateConfig, create_dae
from guided_diffusion.pipeline.methods.fpgan import FPGANTrainConfig, FPGANTranslateConfig, create_fpgan
from guided_diffusion.pipeline.methods.vae import VAETrainConfig, VAETranslateConfig, create_vae
from guided_diffusion.pipeline.methods import diffusion
from guided_diffusion.pipeline.networks import (
    complete_from_checkpoints,
    create_classifier_net,
    create_unet_and_diffusion,
    load_weights,
)
from guided_diffusion.util.errors import UserError
from guided_diffusion.util.flagspec import build_parser, from_dict, parse_command, parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "brats")
MODEL = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="32",
             num_heads=1, class_cond=True, learn_sigma=True, use_scale_shift_norm=False, diffusion_steps=40)
CLASSIFIER = dict(image_size=64, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                  classifier_attention_resolutions="32", classifier_num_head_channels=32, diffusion_steps=40)


def _save(folder, config_cls, flags, build, saved=True):
    """A checkpoint as training writes it: model000001.pt and (``saved``) flags_<script>.json beside it."""
    cfg = from_dict(config_cls, flags)
    os.makedirs(folder, exist_ok=True)
    th.manual_seed(0)
    th.save(build(cfg).state_dict(), os.path.join(folder, "model000001.pt"))
    if saved:
        runs._write_flags(cfg, str(folder))
    return os.path.join(folder, "model000001.pt")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    unet = lambda c: create_unet_and_diffusion(c.data, c.model, c.diffusion)[0]  # noqa: E731
    return {"model": _save(root / "model", diffusion.ImageTrainConfig, MODEL, unet),
            "bare": _save(root / "bare", diffusion.ImageTrainConfig, MODEL, unet, saved=False),
            "clf": _save(root / "clf", diffusion.ClassifierTrainConfig, CLASSIFIER,
                         lambda c: create_classifier_net(c.data, c.classifier, c.diffusion)[0]),
            "bare_clf": _save(root / "bare_clf", diffusion.ClassifierTrainConfig, CLASSIFIER,
                              lambda c: create_classifier_net(c.data, c.classifier, c.diffusion)[0], saved=False),
            "root": root}


def _complete(config_cls, argv):
    return complete_from_checkpoints(*parse_command(config_cls, [str(a) for a in argv]))


def _words(flags):
    return [w for k, v in flags.items() for w in (f"--{k}", str(v))]


def test_parse_command_reports_the_flags_given_and_refuses_abbreviations():
    cfg, given = parse_command(diffusion.SampleConfig, ["--num_channels", "32", "--use_ddim", "--classifier_scale=5"])
    assert given == {"num_channels", "use_ddim", "classifier_scale"}
    assert cfg.model.num_channels == 32 and cfg.sampling.use_ddim is True and cfg.sampling.classifier_scale == 5
    with pytest.raises(SystemExit):  # today's prefix match would read --classifier_scale
        parse_flags(diffusion.SampleConfig, ["--classifier_scal", "100"])
    with pytest.raises(SystemExit):
        parse_flags(tune.TuneConfig, ["--out", "x", "--noise_level", "5"])  # --noise_levels is tune.py's


def test_translation_flags_not_given_are_the_checkpoints(ckpts):
    cfg = _complete(diffusion.SampleConfig, ["--model_path", ckpts["model"], "--classifier_path", ckpts["clf"],
                                        "--noise_level", 3, "--classifier_scale", 10])
    assert {k: getattr(cfg.model, k) for k in MODEL if hasattr(cfg.model, k)} == {
        k: v for k, v in MODEL.items() if hasattr(cfg.model, k)}
    assert cfg.diffusion.diffusion_steps == 40 and cfg.data.image_size == 64
    assert (cfg.classifier.classifier_width, cfg.classifier.classifier_depth,
            cfg.classifier.classifier_num_head_channels) == (32, 1, 32)
    # the networks they build load the files (strict)
    load_weights(create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)[0], ckpts["model"], "--model_path", "m")
    load_weights(create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)[0], ckpts["clf"], "--c", "c")
    # tune.py (several checkpoints) likewise
    cfg = _complete(tune.TuneConfig, ["--model_path", ckpts["model"], ckpts["model"], "--out", "x"])
    assert cfg.model.num_channels == 32 and cfg.model.channel_mult == "1,2"


def test_a_checkpoint_without_saved_flags_is_read_from_its_shapes(ckpts):
    cfg = _complete(diffusion.SampleConfig, ["--model_path", ckpts["bare"], "--classifier_path", ckpts["bare_clf"]])
    assert (cfg.model.num_channels, cfg.model.channel_mult, cfg.model.num_res_blocks, cfg.diffusion.learn_sigma,
            cfg.model.class_cond, cfg.model.use_scale_shift_norm, cfg.model.attention_resolutions) == (
        32, "1,2", 1, True, True, False, "32")
    assert (cfg.classifier.classifier_width, cfg.classifier.classifier_depth, cfg.classifier.classifier_channel_mult,
            cfg.data.image_size) == (32, 1, "1,2", 64)  # the attention pool tells the image size
    load_weights(create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)[0], ckpts["bare"], "--model_path", "m")
    # a bare classifier's attention pool tells the image size, at which the UNet's attention levels are read
    unet = lambda c: create_unet_and_diffusion(c.data, c.model, c.diffusion)[0]  # noqa: E731
    big = _save(ckpts["root"] / "bare32", diffusion.ImageTrainConfig, {**MODEL, "image_size": 32, "attention_resolutions":
                                                                   "16"}, unet, saved=False)
    small = _save(ckpts["root"] / "bare32_clf", diffusion.ClassifierTrainConfig, {**CLASSIFIER, "image_size": 32},
                  lambda c: create_classifier_net(c.data, c.classifier, c.diffusion)[0], saved=False)
    cfg = _complete(diffusion.SampleConfig, ["--model_path", big, "--classifier_path", small])
    assert (cfg.data.image_size, cfg.model.attention_resolutions) == (32, "16")
    load_weights(create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion)[0], big, "--model_path", "m")
    # the original README's way, every flag given and agreeing, still works
    full = _complete(diffusion.SampleConfig, ["--model_path", ckpts["bare"], *_words(MODEL)])
    assert full.model.num_channels == 32


def test_contradictions_are_one_error_listing_each_with_the_value_needed(ckpts):
    argv = ["--model_path", ckpts["model"], "--classifier_path", ckpts["clf"], "--num_channels", 64,
            "--classifier_width", 64, "--classifier_depth", 2, "--num_heads", 1]
    with pytest.raises(UserError) as err:
        _complete(diffusion.SampleConfig, argv)
    text = str(err.value)
    assert text.startswith("3 flag(s) contradict the checkpoints")
    for wrong, needed in (("--num_channels 64", "--num_channels 32"),
                          ("--classifier_width 64", "--classifier_width 32"),
                          ("--classifier_depth 2", "--classifier_depth 1")):
        assert f"{wrong}: " in text and f"needs {needed}" in text, text
    with pytest.raises(UserError, match=r"--image_size 128 differs from the checkpoint's image size: the network was "
                                        r"trained on 64 x 64 images"):
        _complete(diffusion.SampleConfig, ["--model_path", ckpts["model"], "--image_size", 128])
    with pytest.raises(UserError, match=r"--image_size 128 differs from the checkpoint's image size"):  # shapes
        _complete(diffusion.SampleConfig, ["--model_path", ckpts["bare"], "--classifier_path", ckpts["bare_clf"],
                                      "--image_size", 128])


def test_resuming_and_the_comparison_methods_take_their_flags_from_the_run(ckpts, tmp_path):
    log_dir = tmp_path / "train"
    os.makedirs(log_dir)
    runs._write_flags(from_dict(diffusion.ImageTrainConfig, {**MODEL, "log_dir": str(log_dir)}), str(log_dir))
    cfg = _complete(diffusion.ImageTrainConfig, ["--log_dir", log_dir, "--resume_checkpoint", "auto"])
    assert (cfg.model.num_channels, cfg.model.channel_mult, cfg.diffusion.diffusion_steps) == (32, "1,2", 40)
    fresh = _complete(diffusion.ImageTrainConfig, ["--log_dir", log_dir])  # not resuming: the flags as given
    assert fresh.model.num_channels == 128
    vae = {"image_size": 64, "vae_width": 16, "vae_depth": 4, "latent_dim": 8, "latent_disc_width": 16}
    path = _save(tmp_path / "vae", VAETrainConfig, vae, lambda c: create_vae(c.data, c.vae)[0])
    cfg = _complete(VAETranslateConfig, ["--model_path", path])
    assert (cfg.vae.vae_width, cfg.vae.vae_depth, cfg.vae.latent_dim, cfg.data.image_size) == (16, 4, 8, 64)
    with pytest.raises(UserError, match="--vae_depth 6: .*needs --vae_depth 4"):
        _complete(VAETranslateConfig, ["--model_path", path, "--vae_depth", 6])
    fpgan = {"image_size": 64, "fpgan_width": 8, "fpgan_res_blocks": 1, "fpgan_d_width": 8, "fpgan_d_depth": 2}
    path = _save(tmp_path / "fpgan", FPGANTrainConfig, fpgan, lambda c: create_fpgan(c.data, c.fpgan)[0])
    cfg = _complete(FPGANTranslateConfig, ["--model_path", path])
    assert (cfg.fpgan.fpgan_width, cfg.fpgan.fpgan_res_blocks, cfg.data.image_size) == (8, 1, 64)
    dae = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
           "attention_resolutions": ""}
    path = _save(tmp_path / "dae", DAETrainConfig, dae, lambda c: create_dae(c.data, c.model))
    cfg = _complete(DAETranslateConfig, ["--model_path", path])
    assert (cfg.model.num_channels, cfg.model.channel_mult, cfg.model.attention_resolutions, cfg.data.image_size) == (
        32, "1,2", "", 32)
    load_weights(create_dae(cfg.data, cfg.model), path, "--model_path", "DAE")


@pytest.mark.parametrize("script, flags, message", [
    ("image_train", ["--num_channels", 16], "--num_channels 16 and --channel_mult 1,2: level widths 16 are not "
                                            "multiples of 32"),
    ("image_train", ["--num_heads", 3], "--num_heads 3: the attention levels"),
    ("classifier_train", ["--classifier_num_head_channels", 24], "--classifier_num_head_channels 24: the classifier's "
                                                                 "attention"),
    ("classifier_train", ["--classifier_width", 48], "--classifier_width 48"),
])
def test_flags_that_cannot_build_a_network_are_one_line_before_any_data(tmp_path, script, flags, message):
    config = {"image_train": diffusion.ImageTrainConfig, "classifier_train": diffusion.ClassifierTrainConfig}[script]
    run = {"image_train": diffusion.train_diffusion_model, "classifier_train": diffusion.train_classifier}[script]
    base = {"image_train": _words({k: v for k, v in MODEL.items() if k != "num_heads"}),
            "classifier_train": _words(CLASSIFIER)}[script]
    argv = [*base, *map(str, flags), "--data_dir", str(tmp_path / "no_such_folder"), "--log_dir", str(tmp_path / "l")]
    with pytest.raises(UserError) as err:
        run_script(config, run, argv)
    assert message in str(err.value) and "no_such_folder" not in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_help_speaks_of_each_script_and_never_cites_the_spec():
    chexpert = build_parser(prepare.PrepareChexpertConfig).format_help()
    assert "resized to" in chexpert and "zero-padded" not in chexpert
    scoring = build_parser(evaluate.EvaluateConfig).format_help()
    assert "seeds the bootstrap" in scoring and "initial weights" not in scoring
    classifier = build_parser(diffusion.ClassifierTrainConfig).format_help()
    for ignored in ("--learn_sigma", "--use_kl", "--predict_xstart", "--rescale_learned_sigmas"):
        assert ignored not in classifier, ignored
    assert "--diffusion_steps" in classifier  # the noising uses it
    assert parse_flags(diffusion.ClassifierTrainConfig, ["--learn_sigma", "True"])  # presets still pass them
    for name in sorted(os.listdir(os.path.join(ROOT, "scripts"))):
        with open(os.path.join(ROOT, "scripts", name)) as f:
            assert "SPEC" not in f.read(), name
    from test_flags import CONFIGS
    for config in CONFIGS:
        assert "SPEC" not in build_parser(config).format_help(), config


def test_cfg_settings_are_named_with_w():
    assert tune.Setting("m/model000100.pt", (20,), 3.0, "cfg").name == "model000100_L20_W3"
    assert tune.Setting("m/model000100.pt", (20, 30), 100.0, "classifier").name == "model000100_L20+30_s100"
    assert tune.Setting("m/model000100.pt", (20,), 0.0, "none").name == "model000100_L20"


def test_tune_applies_its_choice_and_its_test_command_scores_as_evaluate(ckpts, tmp_path, capsys):
    def leaves(dst, names):
        for name in names:
            shutil.copytree(os.path.join(DATA, "testing", name), dst / name)
        return dst
    val = leaves(tmp_path / "val", sorted(os.listdir(os.path.join(DATA, "testing")))[:2])
    test = leaves(tmp_path / "test", sorted(os.listdir(os.path.join(DATA, "testing")))[2:4])
    labels = os.path.join(DATA, "test_labels")
    out = tmp_path / "test_out"
    argv = ["--data_dir", val, "--label_dir", labels, "--model_path", ckpts["model"], "--classifier_path", ckpts["clf"],
            "--noise_levels", 2, "--classifier_scales", 10, "--use_ddim", True, "--num_samples", 2, "--progress", False,
            "--protocol", "slice", "--median", 3, "--out", tmp_path / "tune", "--log_dir", tmp_path / "log",
            "--test_dir", test, "--test_label_dir", labels, "--test_output_dir", out]
    best = run_script(tune.TuneConfig, tune.tune, [str(a) for a in argv])
    record = json.loads((tmp_path / "tune" / "best.json").read_text())
    words = shlex.split(record["translate"])
    assert "--num_samples" not in words and "--progress" not in words  # tuning-only
    assert words[words.index("--median") + 1] == "3" and words[words.index("--protocol") + 1] == "slice"
    assert words[words.index("--use_ddim") + 1] == "True"
    assert record["flags"]["median"] == 3 and record["flags"]["use_ddim"] is True
    assert "num_samples" not in record["flags"] and "progress" not in record["flags"]
    assert record["flags"]["num_channels"] == 32  # the checkpoint's, as data
    # --test_dir applied the choice: the test folder is translated, and its numbers are evaluate.py's
    assert sorted(p.name for p in out.glob("*.npz")) == sorted(f"{n}.npz" for n in os.listdir(test) if not n.startswith("."))
    translated = json.loads((out / "summary.json").read_text())["dice"]["mean"]
    assert best["test"]["dice"]["mean"] == pytest.approx(translated)
    evaluate_words = [str(out) if w == tune.TEST_OUTPUT_DIR else w for w in shlex.split(record["evaluate"])]
    assert evaluate.evaluate_folder(parse_flags(evaluate.EvaluateConfig, evaluate_words[2:]))
    assert json.loads((out / "summary.json").read_text())["dice"]["mean"] == pytest.approx(translated)
