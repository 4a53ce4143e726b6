"""The flag registry (util/flags.py): every flag declared once, in groups, and the scripts build on it."""
import dataclasses
import importlib.util
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from guided_diffusion.datasets.common import CHANNELS, DATASETS
from guided_diffusion.evaluation.protocols import PROTOCOLS
from guided_diffusion.evaluation.results import CHANNEL_NAMES
from guided_diffusion.pipeline import bundle, detect, driver, evaluate, prepare, presets, runs, tune
from guided_diffusion.pipeline import methods
from guided_diffusion.pipeline.commands import COMMANDS
from guided_diffusion.pipeline.methods import METHODS
from guided_diffusion.pipeline.methods.vae import VAETrainConfig
from guided_diffusion.pipeline.methods import diffusion
from guided_diffusion.util import flags, visdom_server
from guided_diffusion.util.errors import UserError
from guided_diffusion.script_util import DATASET_CHANNELS
from guided_diffusion.util.flagspec import FlagGroup, build_parser, config_defaults, flag, flag_dict, parse_flags, part

REPO = Path(__file__).resolve().parents[1]


def script_configs():
    """Every script's config class (a dataclass with a SCRIPT name)."""
    found = []
    method_modules = [getattr(methods, name) for name in ("diffusion", "paper", "cfg", "simplex", "dae", "vae", "fpgan",
                                                          "intensity")]
    for module in (runs, evaluate, prepare, driver, tune, bundle, detect, visdom_server, *method_modules):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__ and (
                    hasattr(obj, "SCRIPT") or obj is visdom_server.VisdomServerConfig):
                found.append(obj)
    return found


CONFIGS = script_configs()


def flag_groups(configs) -> list[type[FlagGroup]]:
    """The shared groups of util/flags.REGISTRY, then every other group a config holds (a method's own)."""
    groups = list(flags.REGISTRY)
    for config in configs:
        for kind in typing.get_type_hints(config).values():
            if isinstance(kind, type) and issubclass(kind, FlagGroup) and kind not in groups:
                groups.append(kind)
    return groups


def declared_twice(groups) -> list[str]:
    """The flags declared in more than one group, with the two groups."""
    owner, twice = {}, []
    for group in groups:
        for f in group.flags():
            if f.name in owner:
                twice.append(f"--{f.name} declared in {owner[f.name]} and {group.NAME}")
            owner.setdefault(f.name, group.NAME)
    return twice


def test_every_flag_is_declared_once_and_every_group_is_registered():
    groups = flag_groups(CONFIGS)
    assert not declared_twice(groups)
    for group in groups:
        for f in group.flags():
            assert f.help and not f.help.endswith("."), f"--{f.name}: one line of help"
    shared = {obj for _, obj in inspect.getmembers(flags, inspect.isclass)
              if issubclass(obj, FlagGroup) and obj is not FlagGroup}
    assert shared == set(flags.REGISTRY)
    # every method's own groups are reached through its configs, so a duplicate there is caught too
    own = set(flag_groups(c.config for m in METHODS.values() for c in m.commands.values()))
    assert own <= set(groups)
    assert {"VAEFlags", "FPGANLossFlags", "DAEFlags", "IntensityFlags"} <= {g.__name__ for g in groups}


def test_a_method_group_that_declares_a_shared_flag_again_is_found():
    @dataclass(frozen=True)
    class Clash(FlagGroup):
        NAME = "clash"
        image_size: int = flag(32, "the side again")

    Config = runs.script_config("clash_translate", runs.TranslationConfigBase, {}, clash=Clash)
    assert declared_twice(flag_groups([*CONFIGS, Config])) == ["--image_size declared in data and clash"]


def _choices(group: type[FlagGroup], name: str) -> tuple:
    (found,) = [f.choices for f in group.flags() if f.name == name]
    return found


def test_domain_choices_are_the_names_their_owners_define():
    # util (layer 0) cannot import the layers that own these names, so the flags spell them out
    assert CHANNELS == {"brats": ("t1", "t1ce", "t2", "flair"), "chexpert": ("xray",)}  # SPEC section 1
    assert _choices(flags.DataFlags, "dataset") == DATASETS == tuple(CHANNELS)
    assert _choices(methods.intensity.IntensityFlags, "channel") == sum(CHANNELS.values(), ())
    assert _choices(flags.EvaluationFlags, "protocol") == PROTOCOLS
    assert _choices(methods.vae.VAEFlags, "latent_prior") == ("adversarial", "kl")  # baselines.vae.LATENT_PRIORS
    # the scripts a bundle holds are the registry's translation scripts, in its order (each once: the
    # diffusion family's methods share one)
    assert _choices(flags.BundleFlags, "method") == flags.TRANSLATORS == tuple(bundle.BY_SCRIPT) == tuple(
        dict.fromkeys(m.translation for m in METHODS.values()))
    # the networks' factories (below the data sets) and the result panels (beside them) know them by count
    assert DATASET_CHANNELS == {dataset: len(names) for dataset, names in CHANNELS.items()}
    assert CHANNEL_NAMES == {len(names): names for names in CHANNELS.values()}


def test_every_script_has_a_config_and_no_flags_of_its_own():
    scripts = sorted(p.stem for p in (REPO / "scripts").glob("*.py"))
    assert {c.SCRIPT for c in CONFIGS if hasattr(c, "SCRIPT")} >= set(scripts)
    for name in scripts:
        text = (REPO / "scripts" / f"{name}.py").read_text()
        assert "add_argument" not in text and "ArgumentParser" not in text, name
    for config in CONFIGS:
        build_parser(config)  # no conflicting declarations
        config_defaults(config)


def test_no_library_code_reads_an_argparse_namespace():
    for path in (REPO / "guided_diffusion").rglob("*.py"):
        if path.name == "flagspec.py":
            continue
        text = path.read_text()
        assert "parse_args(" not in text and "Namespace" not in text, path


def test_help_shows_each_flag_in_its_group_with_meaning_and_default():
    text = build_parser(diffusion.SampleConfig).format_help()
    sections = re.findall(r"^(\w[\w ]*):$", text, flags=re.M)
    assert sections[:1] == ["options"] and {"run", "data", "model", "diffusion", "classifier", "sampling",
                                            "monitoring", "translation", "speed", "evaluation"} <= set(sections)
    noise = re.search(r"--noise_level L\[,L2,...\]\s+(.*?)\(default:\s+500\)", text, flags=re.S)
    assert noise and "L, how far the image is encoded" in noise.group(1)
    assert re.search(r"--dataset brats\|chexpert\s+brats: 4 channels", text)
    # a script's own default is shown and used
    vae = build_parser(VAETrainConfig)
    assert "(default: 256)" in vae.format_help() and vae.parse_args([]).image_size == 256
    assert build_parser(diffusion.ImageTrainConfig).parse_args([]).image_size == 64


@dataclass(frozen=True)
class _A(FlagGroup):
    NAME = "a"
    lr: float = flag(1e-4, "learning rate")
    seed: int = flag(0, "the seed")


@dataclass(frozen=True)
class _B(FlagGroup):
    NAME = "b"
    lr: float = flag(3e-4, "learning rate")


@dataclass(frozen=True)
class _SameLr(FlagGroup):
    NAME = "same"
    lr: float = flag(1e-4, "learning rate")
    mode: str = flag("x", "a mode", choices=("x", "y"))
    on: bool = flag(False, "a switch")


def test_two_groups_declaring_one_flag_differently_fail_when_the_parser_is_built():
    @dataclass(frozen=True)
    class Conflict:
        a: _A
        b: _B

    with pytest.raises(TypeError, match=r"--lr is declared differently by the groups 'a' and 'b'"):
        build_parser(Conflict)

    @dataclass(frozen=True)
    class Same:
        a: _A
        same: _SameLr

    cfg = parse_flags(Same, ["--lr", "0.5"])
    assert cfg.a.lr == cfg.same.lr == 0.5  # one flag, both groups see it


def test_parts_choices_bools_and_overrides():
    @dataclass(frozen=True)
    class Partial:
        same: _SameLr
        a: _A = part("seed")
        DEFAULTS: ClassVar[dict] = {"seed": 7}

    cfg = parse_flags(Partial, ["--on"])
    assert cfg.same.on is True and cfg.a.seed == 7 and cfg.a.lr == 1e-4  # lr: not a flag here, its default
    assert parse_flags(Partial, ["--on", "False"]).same.on is False
    with pytest.raises(SystemExit):
        parse_flags(Partial, ["--lr_typo", "1"])
    with pytest.raises(UserError, match=r"^--mode 'z': expected one of x, y$"):
        parse_flags(Partial, ["--mode", "z"])
    with pytest.raises(SystemExit):
        parse_flags(Partial, ["--on", "maybe"])


def test_presets_parse_as_the_scripts_that_take_them():
    """The presets of pipeline/presets.py, the README's: each flag exists in the script it is given to
    and parses to the value written (a renamed or mistyped flag fails here)."""
    p = presets
    def parsed(config_cls, *flags):
        return flag_dict(parse_flags(config_cls, " ".join(flags).split()))

    train = parsed(diffusion.ImageTrainConfig, p.MODEL_FLAGS, p.DIFFUSION_FLAGS, p.TRAIN_FLAGS)
    assert (train["num_channels"], train["class_cond"], train["p_uncond"], train["batch_size"]) == (128, True, 0.0, 10)
    classifier = parsed(diffusion.ClassifierTrainConfig, p.CLASSIFIER_FLAGS, p.DIFFUSION_FLAGS, p.TRAIN_FLAGS)
    assert (classifier["classifier_depth"], classifier["classifier_resblock_updown"]) == (4, True)
    sample = parsed(diffusion.SampleConfig, p.MODEL_FLAGS, p.DIFFUSION_FLAGS, p.CLASSIFIER_FLAGS, p.SAMPLE_FLAGS)
    assert (sample["timestep_respacing"], sample["use_ddim"]) == ("ddim1000", True)
    tuning = parsed(tune.TuneConfig, p.MODEL_FLAGS, p.DIFFUSION_FLAGS, p.CLASSIFIER_FLAGS, p.RECIPE_TUNE_FLAGS,
                    "--model_path m.pt --classifier_path c.pt --out t")
    assert (tuning["guidance"], tuning["noise_levels"], tuning["classifier_scales"], tuning["threshold"]) == (
        "classifier", ((20,), (30,), (50,)), (50.0, 100.0, 200.0), "val")
    demo = parsed(diffusion.SampleConfig, p.preset_text(p.DEMO_MODEL, p.DEMO_DIFFUSION, p.DEMO_CLASSIFIER))
    assert (demo["image_size"], demo["classifier_num_head_channels"]) == (64, 32)


def _changed_argv(config_cls) -> list[str]:
    """A command line, written by hand from the declarations, that sets every flag of a config to a
    value other than its default (so a round trip that drops or mangles a flag shows)."""
    from guided_diffusion.util.flagspec import REQUIRED, _collect, str2bool
    by_parser = {flags.parse_levels: "3,5", flags.parse_floats: "0.5,2", flags.parse_level_sets: "1,2+3",
                 flags.parse_slice_range: "10,20"}
    argv = []
    for name, f in _collect(config_cls).items():
        if f.nargs:
            words = ["a.pt", "b.pt"]
        elif f.choices:
            words = [str([c for c in f.choices if c != f.default][-1])]
        elif f.type is str2bool:
            words = [str(not f.default)]
        elif f.type is int:
            words = [str((0 if f.default is REQUIRED else f.default) + 3)]
        elif f.type is float:
            words = ["0.375"]
        elif f.type is str:
            words = ["some/where" if f.problem("some/where") is None else "0.25"]  # --threshold: a rule or a number
        else:
            words = [by_parser[f.type]]
        argv += words if f.positional else [f"--{name}", *words]
    return argv


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_configs_round_trip_through_argv_and_dict(config_cls):
    """A configuration is data: to_argv and from_dict invert parse_flags and flag_dict, for every
    script's config, with every flag away from its default and after a trip through JSON."""
    import json

    from guided_diffusion.util.flagspec import from_dict, to_argv
    cfg = parse_flags(config_cls, _changed_argv(config_cls))
    assert parse_flags(config_cls, to_argv(cfg)) == cfg
    assert parse_flags(config_cls, to_argv(cfg, full=True)) == cfg
    assert from_dict(config_cls, json.loads(json.dumps(flag_dict(cfg)))) == cfg
    assert len(to_argv(cfg, full=True)) == len(to_argv(cfg))  # every flag differs from its default here


def test_from_dict_is_a_partial_config_and_names_bad_entries():
    from guided_diffusion.util.flagspec import from_dict, to_argv
    cfg = from_dict(diffusion.SampleConfig, {"noise_level": [20, 30], "classifier_scale": 50, "use_ddim": True},
                    where="best.json")
    assert cfg.sampling.noise_level == (20, 30) and cfg.sampling.classifier_scale == 50.0
    assert cfg.sampling.use_ddim is True and cfg.model.num_channels == 128  # the rest: defaults
    argv = to_argv(cfg)
    assert len(argv) == 6 and {tuple(argv[i:i + 2]) for i in range(0, 6, 2)} == {
        ("--use_ddim", "True"), ("--noise_level", "20,30"), ("--classifier_scale", "50.0")}
    with pytest.raises(UserError, match=r"^best.json: SampleConfig takes no flag\(s\) --classifier_scal$"):
        from_dict(diffusion.SampleConfig, {"classifier_scal": 1}, where="best.json")
    with pytest.raises(UserError, match=r"^best.json: --use_ddim 'maybe': expected True or False"):
        from_dict(diffusion.SampleConfig, {"use_ddim": "maybe"}, where="best.json")
    with pytest.raises(UserError, match=r"^best.json: --num_channels: expected an integer, found 1.5$"):
        from_dict(diffusion.SampleConfig, {"num_channels": 1.5}, where="best.json")
    with pytest.raises(UserError, match=r"--guidance 'x': expected one of classifier, cfg, none$"):
        from_dict(diffusion.SampleConfig, {"guidance": "x"}, where="best.json")


def test_the_readmes_presets_are_the_tested_ones():
    """Every NAME="..." preset line of the README equals pipeline/presets.py's NAME (which the test above
    parses as the scripts that take them), so the commands a user copies are the ones tested."""
    readme = (REPO / "README.md").read_text()
    found = re.findall(r'^([A-Z_]+_FLAGS)="([^"]*)"$', readme, flags=re.M)
    assert {name for name, _ in found} >= {"MODEL_FLAGS", "DIFFUSION_FLAGS", "TRAIN_FLAGS", "CLASSIFIER_FLAGS",
                                           "RECIPE_TUNE_FLAGS"}
    for name, text in found:
        assert text == getattr(presets, name), name


METHOD_COMMANDS = list(dict.fromkeys(name for method in METHODS.values() for name in method.commands))


@pytest.mark.parametrize("name", METHOD_COMMANDS)
def test_every_command_of_a_registered_method_is_a_script_with_its_flags(name, capsys):
    path = REPO / "scripts" / f"{name}.py"
    assert path.is_file(), f"{name}: a registered method's command without scripts/{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {name}.py")
    config = COMMANDS[name].config
    shown = set(flag_dict(config_defaults(config))) - set(getattr(config, "HIDDEN", ()))
    assert shown and all(f"--{flag_name}" in text for flag_name in shown), name
