"""make demo / make compare (guided_diffusion/pipeline/driver.py): the plan runs the commands of the
scripts in order, each stage's flags are data typed by its command's config, a tuned method's test
translation is the setting tune.py wrote into best.json (read only when that stage starts), and the
report holds the four evaluations of the demo's table."""
import csv
import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from guided_diffusion.pipeline.driver import PROTOCOL_ROWS, DemoConfig, Plan, Stage, compare_plan, run_stages
from guided_diffusion.pipeline.methods import METHODS, Command, Method
from guided_diffusion.util.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _demo_main():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.demo


def test_demo_plan_tunes_on_validation_then_runs_what_tune_printed(tmp_path):
    out = tmp_path / "demo"
    _demo_main()(["--out", str(out), "--classifier_steps", "2", "--model_steps", "2", "--noise_levels", "2,3",
                  "--classifier_scales", "10,100"])
    best = json.loads((out / "tune" / "ddim" / "best.json").read_text())
    with open(out / "tune" / "ddim" / "tune.csv") as f:
        grid = list(csv.DictReader(f))
    assert len(grid) == 4 and best["dice"] == max(float(r["dice_mean"]) for r in grid)
    # the test translation ran the chosen setting, and evaluate.py scored it with the validation threshold
    summary = json.loads((out / "ddim" / "summary.json").read_text())
    assert summary["flags"]["noise_level"] == best["noise_level"]
    assert summary["flags"]["classifier_scale"] == best["scale"]
    assert summary["flags"]["data_dir"].endswith("data/brats/testing")
    assert summary["protocol"] == "volume" and summary["threshold_rule"] == "val"
    assert summary["threshold"] == pytest.approx(best["threshold"])
    # one table: both methods under each of the four evaluations
    for key, _, flags in PROTOCOL_ROWS:
        with open(out / "protocols" / key / "comparison.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["method"].split(":")[0] for r in rows] == ["DDIM (paper)", "FLAIR intensity"]
        assert all(r["protocol"] == flags["protocol"] for r in rows)
        assert {r["threshold_rule"] for r in rows} == ({"otsu"} if key == "paper" else {key.split("_")[1]})
    with open(out / "protocols" / "volume_val" / "comparison.csv") as f:
        ddim_row = next(csv.DictReader(f))
    assert float(ddim_row["threshold"]) == pytest.approx(best["threshold"])  # same validation folder, same fit
    report = (out / "report.md").read_text()
    assert "(ddim/report.html)" in report and (out / "ddim" / "report.html").is_file()  # the test run's page
    level = "+".join(map(str, best["noise_level"]))
    assert f"| DDIM (paper): L={level}; s={best['scale']:g} | {best['setting']} | {best['dice']:.3f} |" in report
    assert sum(line.startswith(f"| {what} |") for _, what, _ in PROTOCOL_ROWS for line in report.splitlines()) == 8
    ran = next(line for line in report.splitlines() if line.startswith("| ddim |"))
    assert f"--noise_level {','.join(map(str, best['noise_level']))}" in ran  # the arguments read after tuning
    assert set(json.loads((out / "timings.json").read_text())) >= {"train_model", "tune_ddim", "ddim", "eval_paper",
                                                                    "bundle", "detect"}
    # the plan ends with tune.py's choice as a bundle, applied to whole raw volumes
    record = json.loads((out / "bundle" / "bundle.json").read_text())
    assert record["method"]["noise_level"] == best["noise_level"] and record["threshold"]["rule"] == "val"
    assert record["threshold"]["value"] == pytest.approx(best["threshold"])
    with open(out / "detect" / "summary.csv") as f:
        patients = [r["patient"] for r in csv.DictReader(f)]
    assert patients == ["BraTS2021_00000", "BraTS2021_00001"]
    assert all((out / "detect" / f"{p}_{kind}").is_file() for p in patients
               for kind in ("anomaly.nii.gz", "mask.nii.gz", "overlay.png"))
    assert "## From the bundle to NIfTI masks" in report and "| BraTS2021_00001 |" in report


def test_stages_wait_for_what_they_need_and_a_failure_stops_the_plan(tmp_path):
    def never() -> dict:
        raise AssertionError("a stage after the failure was started")

    evaluate_missing = Stage("bad", "evaluate", {"run_dir": str(tmp_path / "missing")})
    with pytest.raises(UserError, match=r"stage bad failed \(exit status 2\); its output is in .*bad.log"):
        run_stages([evaluate_missing, Stage("after", "evaluate", never, needs=("bad",))], str(tmp_path / "logs"))
    assert "missing" in (tmp_path / "logs" / "bad.log").read_text()
    x = {"run_dir": "x"}
    with pytest.raises(ValueError, match=r"stage a needs unknown stage\(s\) \['b'\]"):
        run_stages([Stage("a", "evaluate", x, needs=("b",))], str(tmp_path / "logs"))
    with pytest.raises(ValueError, match="wait for each other"):
        run_stages([Stage("a", "evaluate", x, needs=("b",)), Stage("b", "evaluate", x, needs=("a",))],
                   str(tmp_path / "logs"))
    # flags are read when the stage starts: here from the folder the stage before it wrote
    made = tmp_path / "made"
    synthetic = {"size": 16, "n_train": 0, "n_test": 2, "n_val": 0, "datasets": "chexpert"}
    def again() -> dict:
        return {"out": f"{made / os.listdir(made)[0]}_again", **synthetic}

    runs = run_stages([Stage("make", "make_synthetic", {"out": str(made), **synthetic}),
                       Stage("again", "make_synthetic", again, needs=("make",))], str(tmp_path / "logs"), jobs=2)
    assert f"--out {made / 'chexpert'}_again" in runs["again"].args and runs["make"].seconds > 0
    assert runs["again"].command.startswith("python scripts/make_synthetic.py --size 16 ")
    assert (made / "chexpert_again" / "chexpert" / "testing").is_dir()


def test_resume_skips_only_stages_that_finished_with_the_same_command_and_inputs(tmp_path):
    logs, made = str(tmp_path / "logs"), tmp_path / "made"
    def plan(n_test: int) -> list[Stage]:
        synthetic = {"size": 16, "n_train": 0, "n_val": 0, "datasets": "chexpert"}
        return [Stage("make", "make_synthetic", {"out": str(made / "a"), **synthetic, "n_test": n_test}),
                Stage("after", "make_synthetic", {"out": str(made / "b"), **synthetic, "n_test": 2}, needs=("make",))]
    first = run_stages(plan(2), logs)
    shutil.rmtree(made)  # a stage run again writes it anew; one that is skipped does not
    again = run_stages(plan(2), logs, resume=True)
    assert not made.exists()
    assert [(r.ran, r.seconds) for r in again.values()] == [(False, first["make"].seconds),
                                                             (False, first["after"].seconds)]
    changed = run_stages(plan(3), logs, resume=True)  # "make" changed, so "after" (same flags) runs too
    assert changed["make"].ran and changed["after"].ran and "--n_test 3" in changed["make"].args
    assert (made / "a" / "chexpert").is_dir() and (made / "b" / "chexpert").is_dir()


def test_a_stage_holds_typed_flags_and_names_itself_in_errors():
    """A stage's flags are its command's config: a flag the command does not take, or a value of the wrong
    type, fails when the plan is made, naming the stage; the command line writes each flag given."""
    with pytest.raises(UserError, match=r"stage t: .*takes no flag\(s\) --noise_levell"):
        Stage("t", "tune", {"noise_levell": ((2,),)})
    with pytest.raises(UserError, match=r"stage t: --classifier_scales"):
        Stage("t", "tune", {"classifier_scales": "many"})
    with pytest.raises(ValueError, match="no command 'tune.py'"):
        Stage("t", "tune.py", {})
    flags = {"run_dir": "r", "protocol": "paper", "threshold": "otsu"}  # otsu: evaluate.py's default threshold
    argv = Stage("e", "evaluate", flags).argv(flags)
    assert "r" in argv and argv[argv.index("--protocol") + 1] == "paper" and argv[argv.index("--threshold") + 1] == "otsu"


def test_flags_set_again_replace_those_of_the_tuned_setting(tmp_path):
    """DDPM runs DDIM's chosen setting with use_ddim False: best.json's flags, the split's folders, then the
    flags set again on top."""
    plan = Plan(_demo_config(tmp_path))
    tune_dir = tmp_path / "out" / "tune" / "ddim"
    tune_dir.mkdir(parents=True)
    (tune_dir / "best.json").write_text(json.dumps({"flags": {"noise_level": [20], "use_ddim": True,
                                                              "data_dir": "elsewhere"}}))
    flags = plan.from_best("ddim", "validation", "o", "l", {"use_ddim": False})()
    assert flags["use_ddim"] is False and flags["noise_level"] == [20]
    assert (flags["data_dir"], flags["label_dir"], flags["output_dir"]) == (f"{plan.data}/validation", "", "o")
    assert "--use_ddim False" in " ".join(Stage("ddpm", "classifier_sample_known", flags).argv(flags))


def _demo_config(tmp_path):
    from guided_diffusion.util.flagspec import parse_flags
    return parse_flags(DemoConfig, ["--out", str(tmp_path / "out")])


def test_the_compare_plan_trains_and_translates_each_baseline_from_its_demo_flags(tmp_path):
    """The baselines' stages come from their methods' demo flags: the training lengths of the driver flags
    (defaults: DAE 300, VAE 600, FixedPoint-GAN 500 steps), each translation loading its training's
    last checkpoint (FixedPoint-GAN: the generator, G), the intensity with nothing to train."""
    training, rows = compare_plan(Plan(_demo_config(tmp_path)))
    out = tmp_path / "out"
    stages = {s.name: s for s in training + [s for r in rows for s in r.stages]}
    expected = {"dae": ("dae_train", 300, 8, "model"), "vae": ("vae_train", 600, 10, "model"),
                "fpgan": ("fpgan_train", 500, 10, "G")}
    for key, (script, steps, batch, prefix) in expected.items():
        train = stages[f"train_{key}"]
        assert (train.command, train.flags["iterations"], train.flags["save_interval"], train.flags["batch_size"]) \
            == (script, steps, steps, batch)
        assert train.flags["log_dir"] == str(out / "train" / key)
        for name in (key, f"{key}_val"):
            assert stages[name].command == f"{key}_translate" and stages[name].needs == (f"train_{key}",)
            assert stages[name].flags["model_path"] == (str(out / "train" / key / f"{prefix}{steps:06d}.pt"),)
    assert stages["train_dae"].flags["noise_res"] == 8 and stages["dae"].flags["num_channels"] == 32
    assert stages["train_vae"].flags["vae_width"] == stages["vae"].flags["vae_width"] == 16
    assert (stages["intensity"].command, stages["intensity"].flags["channel"], stages["intensity"].needs) \
        == ("intensity_translate", "flair", ())
    assert "train_intensity" not in stages
    # the comparison's rows in their order: the diffusion family's, then the baselines'
    assert [r.key for r in rows] == ["ddim", "intensity", "max_t", "ensemble", "both", "ddpm", "cfg", "simplex",
                                     "dae", "vae", "fpgan"]
    assert [r.name for r in rows[-3:]] == ["Denoising autoencoder", "VAE (cAAE)", "FixedPoint-GAN"]


def test_a_registered_method_missing_from_the_compare_plan_is_an_error(tmp_path, monkeypatch):
    intensity = METHODS["intensity"]
    command = intensity.commands["intensity_translate"]
    lost = Method(key="lost", name="Lost", commands={"lost_translate": command}, translation="lost_translate",
                  translator=intensity.translator)  # no demo flags, and no row written by hand
    monkeypatch.setitem(METHODS, "lost", lost)
    with pytest.raises(ValueError, match=r"make compare: the methods lost have no stage"):
        compare_plan(Plan(_demo_config(tmp_path)))
    # with demo flags its row is made, and a script that is no command is named
    monkeypatch.setitem(METHODS, "lost", dataclasses.replace(lost, demo=intensity.demo))
    with pytest.raises(ValueError, match="no command 'lost_translate'"):
        compare_plan(Plan(_demo_config(tmp_path)))


def test_a_method_names_its_scripts_among_its_commands():
    with pytest.raises(ValueError, match="translation script 'x_translate' is not one of its commands"):
        Method(key="x", name="X", commands={}, translation="x_translate", translator=lambda cfg, device: None)
    command = Command(DemoConfig, lambda cfg: None, False)
    with pytest.raises(ValueError, match="demo training flags need a training script"):
        dataclasses.replace(METHODS["vae"], training="", commands={**METHODS["vae"].commands, "x": command})


# the compare plan at the default flags, stage by stage: (name, command, the stages it waits for)
COMPARE_STAGES = [
    ("train_classifier", "classifier_train", ()),
    ("train_model", "image_train", ()),
    ("train_classifier_max_t", "classifier_train", ()),
    ("train_cfg_model", "image_train", ()),
    ("train_simplex_model", "image_train", ()),
    ("train_dae", "dae_train", ()),
    ("train_vae", "vae_train", ()),
    ("train_fpgan", "fpgan_train", ()),
    ("tune_ddim", "tune", ("train_classifier", "train_model")),
    ("ddim", "classifier_sample_known", ("tune_ddim",)),
    ("intensity", "intensity_translate", ()),
    ("intensity_val", "intensity_translate", ()),
    ("tune_max_t", "tune", ("train_classifier_max_t", "train_model")),
    ("max_t", "classifier_sample_known", ("tune_max_t",)),
    ("tune_ensemble", "tune", ("train_classifier", "train_model")),
    ("ensemble", "classifier_sample_known", ("tune_ensemble",)),
    ("tune_both", "tune", ("train_classifier_max_t", "train_model")),
    ("both", "classifier_sample_known", ("tune_both",)),
    ("ddpm", "classifier_sample_known", ("tune_ddim",)),
    ("ddpm_val", "classifier_sample_known", ("tune_ddim",)),
    ("tune_cfg", "tune", ("train_cfg_model",)),
    ("cfg", "classifier_sample_known", ("tune_cfg",)),
    ("tune_simplex", "tune", ("train_simplex_model",)),
    ("simplex", "classifier_sample_known", ("tune_simplex",)),
    ("dae", "dae_translate", ("train_dae",)),
    ("dae_val", "dae_translate", ("train_dae",)),
    ("vae", "vae_translate", ("train_vae",)),
    ("vae_val", "vae_translate", ("train_vae",)),
    ("fpgan", "fpgan_translate", ("train_fpgan",)),
    ("fpgan_val", "fpgan_translate", ("train_fpgan",)),
    ("evaluate", "evaluate", ("ddim",)),
    *[(f"eval_{key}", "compare", ("tune_ddim", "ddim", "intensity", "intensity_val"))
      for key in ("paper", "volume_val", "volume_best", "slice_fpr")],
    ("compare", "compare", ("tune_ddim", "ddim", "intensity", "intensity_val", "tune_max_t", "max_t", "tune_ensemble",
                            "ensemble", "tune_both", "both", "ddpm", "ddpm_val", "tune_cfg", "cfg", "tune_simplex",
                            "simplex", "dae", "dae_val", "vae", "vae_val", "fpgan", "fpgan_val")),
    ("raw_volumes", "make_synthetic", ()),
    ("bundle", "export_bundle", ("tune_ddim",)),
    ("detect", "detect", ("raw_volumes", "bundle")),
]


def test_the_compare_plan_builds_the_diffusion_rows_from_their_methods_demo_flags(tmp_path):
    """The diffusion family's rows come from paper.py, cfg.py and simplex.py's demo flags as the driver
    wrote them by hand before: the same stages, commands and order, each checkpoint of its training's
    length (defaults: classifiers 300, diffusion models 600 steps), each grid demo.py's."""
    from guided_diffusion.pipeline.driver import plan_stages
    plan = Plan(dataclasses.replace(_demo_config(tmp_path), driver=dataclasses.replace(
        _demo_config(tmp_path).driver, plan="compare")))
    stages, _ = plan_stages(plan)
    assert [(s.name, s.command, s.needs) for s in stages] == COMPARE_STAGES
    by_name = {s.name: s for s in stages}
    train = tmp_path / "out" / "train"
    model = (str(train / "model" / "model000600.pt"),)
    for key, classifier, levels in (("ddim", "classifier", ((10,), (15,), (20,))),
                                    ("max_t", "classifier_max_t", ((10,), (15,), (20,))),
                                    ("ensemble", "classifier", ((5, 10, 15), (10, 15, 20))),
                                    ("both", "classifier_max_t", ((5, 10, 15), (10, 15, 20)))):
        flags = by_name[f"tune_{key}"].flags
        assert (flags["model_path"], flags["classifier_path"], flags["noise_levels"], flags["classifier_scales"]) \
            == (model, str(train / classifier / "model000300.pt"), levels, (50.0, 100.0, 200.0)), key
        assert flags["timestep_respacing"] == "ddim50" and flags["use_ddim"] is True
    assert by_name["train_classifier_max_t"].flags["classifier_max_t"] == 400
    assert "classifier_max_t" not in by_name["train_classifier"].flags
    cfg = by_name["tune_cfg"].flags
    assert (cfg["guidance"], cfg["guidance_scales"], cfg["model_path"]) \
        == ("cfg", (1.0, 3.0), (str(train / "cfg_model" / "model000600.pt"),))
    assert (by_name["train_cfg_model"].flags["p_uncond"], by_name["train_cfg_model"].flags["lr_anneal_steps"]) \
        == (0.2, 600)
    simplex = by_name["tune_simplex"].flags
    assert (simplex["guidance"], simplex["use_ddim"], simplex["noise_type"], simplex["class_cond"]) \
        == ("none", False, "simplex", False)
    assert by_name["train_simplex_model"].flags["noise_type"] == "simplex"
    assert by_name["ddpm"].flags.__name__ == "flags"  # DDIM's choice, read when the stage starts


def _fake_methods():
    """Two methods no module holds: a diffusion variant tuned on validation (its own model, and the
    paper's classifier which it shares), and a network of its own with the same flags on both splits."""
    from guided_diffusion.pipeline.methods import Checkpoint, Demo, DemoFlag, Training, diffusion, paper
    fake_model = Training("fake_model", "image_train", {"image_size": 64, "class_cond": False}, steps="model_steps",
                          steps_flag="lr_anneal_steps")
    tuned = Method(key="fake", name="Fake diffusion", commands=diffusion.COMMANDS,
                   translation="classifier_sample_known", translator=diffusion.TRANSLATION.translator,
                   demo=Demo({"image_size": 64, "model_path": (Checkpoint("fake_model"),),
                              "classifier_path": Checkpoint("classifier"), "noise_levels": DemoFlag("noise_levels")},
                             tuned=True, trainings=(fake_model, paper.CLASSIFIER)))
    dae = METHODS["dae"]
    own = dataclasses.replace(dae, key="fake_dae", name="Fake DAE",
                              demo=dataclasses.replace(dae.demo, steps="vae_steps"))
    return tuned, own


def test_a_method_is_one_registry_line_for_the_compare_plan(tmp_path, monkeypatch):
    """Registering a method with its demo flags (and nothing else) gives it its training stages (a
    training it shares with another method only once) and its row, last in the table."""
    import guided_diffusion.pipeline.driver as driver
    before_training, before_rows = compare_plan(Plan(_demo_config(tmp_path)))
    tuned, own = _fake_methods()
    monkeypatch.setattr(driver, "METHODS", {**METHODS, tuned.key: tuned, own.key: own})
    training, rows = compare_plan(Plan(_demo_config(tmp_path)))
    train = tmp_path / "out" / "train"
    assert [s.name for s in training] == [s.name for s in before_training] + ["train_fake_model", "train_fake_dae"]
    assert (training[-2].command, training[-2].flags["lr_anneal_steps"], training[-2].flags["class_cond"]) \
        == ("image_train", 600, False)
    assert (training[-1].command, training[-1].flags["iterations"], training[-1].flags["log_dir"]) \
        == ("dae_train", 600, str(train / "fake_dae"))  # --vae_steps: 600
    assert [r.key for r in rows] == [r.key for r in before_rows] + ["fake", "fake_dae"]
    assert rows[-1].name == "Fake DAE" and rows[-1].val == str(tmp_path / "out" / "val" / "fake_dae")
    tune, test = rows[-2].stages
    assert (tune.name, tune.command, tune.needs) == ("tune_fake", "tune", ("train_fake_model", "train_classifier"))
    assert (tune.flags["model_path"], tune.flags["classifier_path"], tune.flags["noise_levels"]) \
        == ((str(train / "fake_model" / "model000600.pt"),), str(train / "classifier" / "model000300.pt"),
            ((10,), (15,), (20,)))
    assert (test.name, test.command, test.needs) == ("fake", "classifier_sample_known", ("tune_fake",))
    for name in ("fake_dae", "fake_dae_val"):
        stage = next(s for s in rows[-1].stages if s.name == name)
        assert stage.needs == ("train_fake_dae",)
        assert stage.flags["model_path"] == (str(train / "fake_dae" / "model000600.pt"),)
    # a checkpoint of a training the method does not name is an error naming both
    lost = dataclasses.replace(tuned, demo=dataclasses.replace(tuned.demo, trainings=(tuned.demo.trainings[0],)))
    monkeypatch.setattr(driver, "METHODS", {**METHODS, lost.key: lost})
    with pytest.raises(ValueError, match="method fake: its demo flags load the checkpoints of classifier, not among"):
        compare_plan(Plan(_demo_config(tmp_path)))


def test_a_method_names_its_trainings_scripts_and_its_translation_commands_translator():
    from guided_diffusion.pipeline.methods import Demo, Training, diffusion
    intensity = METHODS["intensity"]
    with pytest.raises(ValueError, match="its translator is not the one of its translation command"):
        dataclasses.replace(intensity, translator=lambda cfg, device: None)
    stray = Training("stray", "dae_train", {}, steps="dae_steps")
    with pytest.raises(ValueError, match="method cfg: its training stray's script 'dae_train' is not one of its"):
        dataclasses.replace(METHODS["cfg"], demo=dataclasses.replace(METHODS["cfg"].demo, trainings=(stray,)))
    with pytest.raises(ValueError, match="follows 'ddim''s tuned setting or is tuned itself, not both"):
        Demo({}, tuned=True, follows="ddim")
    assert METHODS["ddim"].translator is diffusion.TRANSLATION.translator
