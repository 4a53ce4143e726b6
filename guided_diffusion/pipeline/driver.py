"""The example runs on the bundled synthetic data: ``make demo`` and ``make compare``.

Both are plans of stages. A stage is a command of :data:`.commands.COMMANDS` (a script's config and
run function) and its flags as data, a partial config ({flag: value}); it starts when the stages it
needs have finished and runs in a process of its own (``python -m guided_diffusion.pipeline.commands
<command> <flags>``: only there does the config become a command line). Up to ``jobs`` stages run side by
side, each then with ``cores / jobs`` threads. A stage's flags may be read only when it starts: the
test-set translation of a tuned method is the setting its ``tune.py`` run wrote into ``best.json``'s
``flags``. Every stage's output goes to ``<out>/logs/<stage>.log``; a failing stage stops the run with the
end of its log.

A plan is a list of :class:`Row`\\ s, the rows of its tables: each translates the test folder into
``<out>/<key>`` and names the validation folder its threshold is chosen on (``<out>/tune/<key>/<setting>``
for a tuned method, ``<out>/val/<key>`` otherwise).

* ``demo``: the paper's method with tiny networks (classifier, diffusion model), L and s
  chosen on the validation split with ``tune.py``, the test translation and ``evaluate.py``
  as ``tune.py`` chose them, and the FLAIR-intensity baseline; one table of both under four
  evaluations (``PROTOCOL_ROWS``), ``report.md`` with the choices and the panels;
* ``compare``: the demo plus the levers on the paper's method (``--classifier_max_t``, the
  noise-level ensemble, both), stochastic DDPM sampling, classifier-free guidance, simplex
  diffusion (AnoDDPM), the denoising autoencoder, the VAE and FixedPoint-GAN, every one
  chosen and thresholded on the validation split alike; ``compare.py``'s table and figure.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence, Union

import numpy as np

from ..datasets.synthetic import RAW_FOLDER
from ..evaluation.compare import COMPARISON_CSV, COMPARISON_MD
from ..evaluation.report import REPORT_HTML
from ..evaluation.results import format_table, load_result, read_metrics, read_summary
from ..util.errors import UserError
from ..util.fileio import atomic_write
from ..util.flags import DataFlags, DriverFlags, OutputFlags, RunFlags, TuneFlags
from ..util.flagspec import config_defaults, flag_dict, from_dict, part, to_argv
from .commands import COMMANDS
from .evaluate import EvaluateConfig
from .methods import METHODS, Checkpoint, DemoFlag, Method, Training
from .detect import SUMMARY_CSV
from .tune import BEST_JSON, TUNE_CSV, read_best

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Flags = Union[dict, Callable[[], dict]]
"""A stage's flags ({flag: value}): fixed, or made when the stage starts (from a best.json)."""
Text = Union[str, Callable[[], str]]
"""A row's name or validation folder: fixed, or read when needed (from a best.json)."""


def resolve(value):
    return value() if callable(value) else value


@dataclass(frozen=True)
class DemoConfig:
    """scripts/demo.py"""

    driver: DriverFlags
    tune: TuneFlags = part("noise_levels", "classifier_scales", "guidance_scales")  # the grids its tune stages try
    data: DataFlags = part("data_dir")
    output: OutputFlags
    run: RunFlags = part("seed")
    SCRIPT: ClassVar[str] = "demo"
    DEFAULTS: ClassVar[dict] = {"out": "results/demo", "data_dir": "data/brats", "noise_levels": ((10,), (15,), (20,))}


@dataclass(frozen=True)
class Stage:
    """One command (:data:`.commands.COMMANDS`) with its ``flags``, once the stages in ``needs`` are done."""

    name: str
    command: str
    flags: Flags
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.command not in COMMANDS:
            raise ValueError(f"stage {self.name}: no command {self.command!r} (one of {', '.join(COMMANDS)})")
        if not callable(self.flags):
            self.argv(self.flags)  # a fixed stage's flags are checked when the plan is made

    def argv(self, flags: dict) -> list[str]:
        """The command line of ``flags``: typed by the command's config (a flag it does not take, or a
        value of the wrong type, is an error naming the stage), each flag given written even at its
        default (a translation completes only the flags it was not given from its checkpoints)."""
        config = from_dict(COMMANDS[self.command].config, flags, f"stage {self.name}")
        return to_argv(config, given=flags)


@dataclass(frozen=True)
class Row:
    """One row of the tables: the stages that make ``test`` (the translated test folder) and ``val``
    (the translated validation folder its threshold comes from)."""

    key: str
    name: Text
    test: str
    val: Text
    stages: tuple[Stage, ...]


# the evaluations of the demo's table: (key, what the row is, evaluate.py / compare.py flags)
PROTOCOL_ROWS = (
    ("paper", "paper: diseased slices, per-slice Otsu", {"protocol": "paper"}),
    ("volume_val", "volume, threshold chosen on validation", {"protocol": "volume", "threshold": "val"}),
    ("volume_best", "volume, best threshold on the test set (oracle)", {"protocol": "volume", "threshold": "best"}),
    ("slice_fpr", "slice, 1 % of validation's healthy brain pixels positive",
     {"protocol": "slice", "threshold": "fpr", "fpr": 0.01}),
)
MAIN_EVALUATION = {"protocol": "volume", "threshold": "val"}  # the comparison's
VALIDATION_RULES = ("val", "fpr")
"""The thresholds fitted on each method's validation folder (compare.py's --val_dir)."""


@dataclass
class Plan:
    """Where one run of a plan reads and writes."""

    cfg: DemoConfig
    written: list[str] = field(default_factory=list)  # the folders of <out> it writes

    @property
    def out(self) -> str:
        return self.cfg.output.out

    @property
    def data(self) -> str:
        return self.cfg.data.data_dir

    @property
    def common(self) -> dict:
        return {"dataset": "brats", "seed": self.cfg.run.seed, "progress": False}

    @property
    def test_set(self) -> dict:
        return {"data_dir": f"{self.data}/testing", "label_dir": f"{self.data}/test_labels"}

    def folder(self, *parts: str) -> str:
        if parts[0] not in self.written:
            self.written.append(parts[0])
        return os.path.join(self.out, *parts)

    def tune_dir(self, key: str) -> str:
        """Where ``tune_<key>`` writes its settings, tune.csv and best.json."""
        return self.folder("tune", key)

    def log(self, stage: str) -> str:
        return self.folder("logs", stage)

    def checkpoint(self, key: str, steps: int, prefix: str = "model") -> str:
        return self.folder("train", key, f"{prefix}{steps:06d}.pt")

    def train(self, key: str, command: str, flags: dict, steps_flag: str, steps: int, batch: int) -> Stage:
        """A training stage writing ``<out>/train/<key>/``, one checkpoint at the end."""
        return Stage(f"train_{key}", command, {"data_dir": f"{self.data}/training", **self.common, **flags,
                                               "lr": 3e-4, "batch_size": batch, steps_flag: steps,
                                               "save_interval": steps, "log_interval": 100,
                                               "log_dir": self.folder("train", key)})

    def tuned(self, key: str, name: str, flags: dict, needs: tuple[str, ...],
              command: str = "classifier_sample_known") -> Row:
        """tune.py on the validation split, then the test translation (``command``) of the setting it chose."""
        tune_dir = self.tune_dir(key)
        tune = Stage(f"tune_{key}", "tune", {"data_dir": f"{self.data}/validation", **self.common, **flags,
                                              **MAIN_EVALUATION, "out": tune_dir, "log_dir": self.log(key + "_tune")},
                     needs)
        test = Stage(key, command, self.from_best(key, "testing", self.folder(key), self.log(f"{key}_run")),
                     needs=(tune.name,))
        return Row(key, lambda: _tuned_name(name, read_best(tune_dir)), self.folder(key),
                   lambda: read_best(tune_dir)["validation_folder"], (tune, test))

    def from_best(self, tuned_key: str, split: str, output: str, log: str, extra: dict | None = None
                  ) -> Callable[[], dict]:
        """The flags of the translation ``tune_<tuned_key>`` chose (best.json's ``flags``) on the test or
        validation split, ``extra`` flags on top."""
        tune_dir = self.tune_dir(tuned_key)
        labels = f"{self.data}/test_labels" if split == "testing" else ""

        def flags() -> dict:
            return {**read_best(tune_dir)["flags"], "data_dir": f"{self.data}/{split}", "label_dir": labels,
                    "output_dir": output, "log_dir": log, "progress": False, **(extra or {})}
        return flags

    def follows(self, key: str, name: str, tuned_key: str, extra: dict,
                command: str = "classifier_sample_known") -> Row:
        """The setting ``tuned_key`` chose with ``extra`` flags on top, on the test and validation splits."""
        needs = (f"tune_{tuned_key}",)
        test = Stage(key, command,
                     self.from_best(tuned_key, "testing", self.folder(key), self.log(f"{key}_run"), extra), needs)
        val = Stage(f"{key}_val", command,
                    self.from_best(tuned_key, "validation", self.folder("val", key), self.log(f"{key}_val_run"), extra),
                    needs)
        tune_dir = self.tune_dir(tuned_key)
        return Row(key, lambda: _tuned_name(name, read_best(tune_dir)), self.folder(key), self.folder("val", key),
                   (test, val))

    def fixed(self, key: str, name: str, command: str, flags: dict, needs: tuple[str, ...] = ()) -> Row:
        """A method with nothing to tune: the same flags on the test and the validation split."""
        def stage(stage_name: str, data: dict, output: str) -> Stage:
            return Stage(stage_name, command, {**data, **self.common, **flags, "output_dir": output,
                                               "log_dir": self.log(stage_name + "_run")}, needs)
        test = stage(key, self.test_set, self.folder(key))
        val = stage(f"{key}_val", {"data_dir": f"{self.data}/validation"}, self.folder("val", key))
        return Row(key, name, self.folder(key), self.folder("val", key), (test, val))

    def compare(self, name: str, rows: Sequence[Row], evaluation: dict, out: str, examples: int) -> Stage:
        """compare.py over the rows' test folders, each thresholded on its own validation folder."""
        def flags() -> dict:
            val = {"val_dir": ",".join(resolve(r.val) for r in rows)} \
                if evaluation.get("threshold") in VALIDATION_RULES else {}
            return {"run_dirs": tuple(r.test for r in rows), "names": ",".join(resolve(r.name) for r in rows),
                    **val, **evaluation, "out": out, "examples": examples, "seed": self.cfg.run.seed}
        return Stage(name, "compare", flags, needs=tuple(s.name for r in rows for s in r.stages))


def _tuned_name(name: str, best: dict) -> str:
    levels = "+".join(map(str, best["noise_level"]))
    scale = {"classifier": f"; s={best['scale']:g}", "cfg": f"; W={best['scale']:g}"}.get(best["guidance"], "")
    return f"{name}: L={levels}{scale}"


def _filled(plan: Plan, flags, trainings: dict[str, Training]):
    """Demo flags with their :class:`.methods.Checkpoint` and :class:`.methods.DemoFlag` values filled in:
    the last checkpoint of that training, the value of that flag of demo.py."""
    if isinstance(flags, dict):
        return {name: _filled(plan, value, trainings) for name, value in flags.items()}
    if isinstance(flags, tuple):
        return tuple(_filled(plan, value, trainings) for value in flags)
    if isinstance(flags, Checkpoint):
        t = trainings[flags.training]
        return plan.checkpoint(t.key, getattr(plan.cfg.driver, t.steps), t.checkpoint)
    if isinstance(flags, DemoFlag):
        return flag_dict(plan.cfg)[flags.name]
    return flags


def _checkpoints(flags) -> set[str]:
    """The trainings whose checkpoints demo flags load."""
    if isinstance(flags, dict):
        flags = tuple(flags.values())
    if isinstance(flags, tuple):
        return set().union(*map(_checkpoints, flags))
    return {flags.training} if isinstance(flags, Checkpoint) else set()


def method_stages(plan: Plan, methods: Sequence[Method]) -> tuple[list[Stage], list[Row]]:
    """The methods' stages from their demo flags (:class:`.methods.Demo`): the training stages they
    need, each once and first, and a row per method in their order."""
    trainings: dict[str, Training] = {}
    for method in methods:
        for t in method.trainings():
            if trainings.setdefault(t.key, t) != t:
                raise ValueError(f"method {method.key}: its training {t.key} differs from another method's of that "
                                 "name")
    stages = [plan.train(t.key, t.script, _filled(plan, dict(t.flags), trainings), t.steps_flag,
                         getattr(plan.cfg.driver, t.steps), t.batch_size) for t in trainings.values()]
    return stages, [method_row(plan, method, trainings) for method in methods]


def method_row(plan: Plan, method: Method, trainings: dict[str, Training]) -> Row:
    """A method's row: tuned on validation, following a tuned method's setting, or fixed."""
    demo, raw = method.demo, method.demo_flags()
    own = [t.key for t in method.trainings()]
    unknown = sorted(_checkpoints(raw) - set(own))
    if unknown:
        raise ValueError(f"method {method.key}: its demo flags load the checkpoints of {', '.join(unknown)}, not "
                         "among its trainings")
    flags, needs = _filled(plan, raw, trainings), tuple(f"train_{key}" for key in own)
    if demo.follows:
        return plan.follows(method.key, method.name, demo.follows, flags, method.translation)
    if demo.tuned:
        return plan.tuned(method.key, method.name, flags, needs, method.translation)
    return plan.fixed(method.key, method.name, method.translation, flags, needs)


def _in_demo(method: Method) -> bool:
    return method.demo is not None and method.demo.in_demo


def demo_plan(plan: Plan) -> tuple[list[Stage], list[Row]]:
    """The methods of ``make demo`` (the paper's method tuned on validation, and the FLAIR intensity);
    training stages first."""
    return method_stages(plan, [m for m in METHODS.values() if _in_demo(m)])


def compare_plan(plan: Plan) -> tuple[list[Stage], list[Row]]:
    """The demo's methods, then every other registered method, each thresholded on the validation split."""
    rest = [m for m in METHODS.values() if m.demo is not None and not m.demo.in_demo]
    training, rows = method_stages(plan, [m for m in METHODS.values() if _in_demo(m)] + rest)
    scripts = {s.command for s in training + [s for r in rows for s in r.stages]}
    missing = [m.key for m in METHODS.values() if m.translation not in scripts]
    if missing:
        raise ValueError(f"make compare: the methods {', '.join(missing)} have no stage in the compare plan (give "
                         "each a Demo)")
    return training, rows


PLANS = {"demo": demo_plan, "compare": compare_plan}


def evaluation_flags(flags: dict) -> dict:
    """The flags of a translation's setting that evaluate.py takes (its evaluation)."""
    takes = flag_dict(config_defaults(EvaluateConfig))
    return {k: v for k, v in flags.items() if k in takes}


def plan_stages(plan: Plan) -> tuple[list[Stage], list[Row]]:
    """Every stage of the plan in the order they may start, and its rows."""
    training, rows = PLANS[plan.cfg.driver.plan](plan)
    ddim = rows[0]
    tune_dir = plan.tune_dir(ddim.key)
    stages = training + [s for r in rows for s in r.stages]
    stages.append(Stage("evaluate", "evaluate", lambda: {**evaluation_flags(read_best(tune_dir)["flags"]),
                                                         "run_dir": ddim.test}, needs=(ddim.key,)))
    demo_rows = [r for r in rows if _in_demo(METHODS[r.key])]
    stages += [plan.compare(f"eval_{key}", demo_rows, flags, plan.folder("protocols", key), 0)
               for key, _, flags in PROTOCOL_ROWS]
    if plan.cfg.driver.plan == "compare":
        stages.append(plan.compare("compare", rows, MAIN_EVALUATION, plan.out, 4))
    stages += detection_stages(plan, tune_dir)
    return stages, rows


# the end of every plan: tune.py's choice as a bundle, applied to whole raw patients as a release ships them
RAW_PATIENTS = 2
RAW_FLAGS = {"size": 64, "n_volumes": RAW_PATIENTS, "release": "2021", "n_train": 0, "n_test": 0, "datasets": "brats"}
BUNDLE_SLICES = "100,107"  # 8 axial slices of the raw volumes' tumour slices (88..119), to keep the demo short


def detection_stages(plan: Plan, tune_dir: str) -> list[Stage]:
    """make_synthetic.py's raw volumes, export_bundle.py of the tuned DDIM, detect.py on the volumes."""
    raw, bundle = plan.folder("raw"), plan.folder("bundle")
    return [
        Stage("raw_volumes", "make_synthetic", {"out": raw, **RAW_FLAGS, "seed": plan.cfg.run.seed}),
        Stage("bundle", "export_bundle", {"tune_dir": tune_dir, "out": bundle, "slice_range": BUNDLE_SLICES},
              needs=(f"tune_{os.path.basename(tune_dir)}",)),
        Stage("detect", "detect", {"bundle": bundle, "input": (os.path.join(raw, RAW_FOLDER),),
                                   "output": plan.folder("detect"), "overlay": True, "progress": False},
              needs=("raw_volumes", "bundle")),
    ]


def detection_lines(plan: Plan) -> list[str]:
    """The report's section on the bundle and detect.py's summary.csv."""
    folder = os.path.join(plan.out, "detect")
    rows = _read_csv(os.path.join(folder, SUMMARY_CSV))
    lines = ["## From the bundle to NIfTI masks", "",
             f"`export_bundle.py` wrote tune.py's choice to `bundle/`; `detect.py` applied it to {len(rows)} whole "
             f"raw patients in the 2021 release's layout (`raw/{RAW_FOLDER}/`), slices {BUNDLE_SLICES}, writing "
             "`detect/<patient>_anomaly.nii.gz` and `_mask.nii.gz` in each scan's space:", "",
             "| patient | lesion (mL) | positive slices | image score | 3-D Dice |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['patient']} | {_number(r['lesion_ml'], 2)} | {r['positive_slices']} | "
              f"{_number(r['image_score'])} | {_number(r['dice_3d'])} |" for r in rows]
    lines += [""] + [f"![{r['patient']}](detect/{r['patient']}_overlay.png)" for r in rows] + [""]
    return lines


@dataclass(frozen=True)
class StageRun:
    """What ran: the command line of the flags as they were when the stage started, and its wall seconds."""

    stage: Stage
    args: str
    seconds: float
    ran: bool = True  # False: it finished in an earlier run (--resume), ``seconds`` are that run's

    @property
    def command(self) -> str:
        """The same run as a user types it."""
        return f"python scripts/{self.stage.command}.py {self.args}"


DONE_SUFFIX = ".done.json"
"""``<logs>/<stage>.done.json``: a finished stage's command line and seconds, written when it ends."""


def finished_before(logs: str, stage: Stage, args: str) -> float | None:
    """The seconds of ``stage``'s earlier run with the command line ``args``, if it finished (its record
    in ``logs`` holds the same command line), else None."""
    try:
        with open(os.path.join(logs, stage.name + DONE_SUFFIX)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    same = record.get("command") == stage.command and record.get("args") == args
    return float(record["seconds"]) if same else None


def run_stages(stages: Sequence[Stage], logs: str, jobs: int = 1, resume: bool = False) -> dict[str, StageRun]:
    """Run the plan; returns what each stage ran and its wall seconds. ``jobs`` > 1 runs that many
    stages at once, each with an equal share of the cores. Each finished stage leaves its record in
    ``logs``; ``resume``: a stage whose record holds the command line it would run now, and none of whose
    needs ran again, is not run again (its recorded seconds are returned)."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected 1 or more")
    names = [s.name for s in stages]
    for s in stages:
        unknown = [n for n in s.needs if n not in names]
        if unknown:
            raise ValueError(f"stage {s.name} needs unknown stage(s) {unknown}")
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ)
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    pending, running, done = list(stages), {}, {}
    try:
        while pending or running:
            skipped = False
            for stage in [s for s in pending if all(n in done for n in s.needs)][: jobs - len(running)]:
                pending.remove(stage)
                args = shlex.join(stage.argv(resolve(stage.flags)))
                fresh_inputs = any(done[n].ran for n in stage.needs)
                seconds = finished_before(logs, stage, args) if resume and not fresh_inputs else None
                if seconds is not None:
                    done[stage.name] = StageRun(stage, args, seconds, ran=False)
                    print(f"== {stage.name}: finished before with this command line, not run again", flush=True)
                    skipped = True
                    continue
                print(f"== {stage.name}: python scripts/{stage.command}.py {args}", flush=True)
                log = open(os.path.join(logs, f"{stage.name}.log"), "w")
                command = [sys.executable, "-m", "guided_diffusion.pipeline.commands", stage.command,
                           *shlex.split(args)]
                proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[stage.name] = (proc, log, time.perf_counter(), stage, args)
            if skipped:
                continue  # what waited for the skipped stages may start now
            if not running:
                raise ValueError(f"stages {[s.name for s in pending]} wait for each other")
            time.sleep(0.2)
            for name, (proc, log, start, stage, args) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode:
                    with open(log.name) as f:
                        tail = "".join(f.readlines()[-15:])
                    print(tail, file=sys.stderr, end="")
                    raise UserError(f"stage {name} failed (exit status {proc.returncode}); its output is in {log.name}")
                done[name] = StageRun(stage, args, time.perf_counter() - start)
                with atomic_write(os.path.join(logs, name + DONE_SUFFIX), "w") as f:
                    json.dump({"command": stage.command, "args": args, "seconds": done[name].seconds}, f, indent=2)
                print(f"   {name}: done in {done[name].seconds:.0f} s", flush=True)
    finally:
        for proc, log, *_ in running.values():
            proc.kill()
            proc.wait()
            log.close()
    return done


# ---------------------------------------------------------------------------------------------- report


def chance_dice(folder: str, ids: Sequence[str]) -> float:
    """Expected Dice of a random mask with as many pixels as the Otsu mask, averaged over ``ids``:
    2|M||G| / (N(|M|+|G|)) per image."""
    values = []
    for image_id in ids:
        result = load_result(os.path.join(folder, f"{image_id}.npz"), images=False)
        m, g, n = float(result["mask"].sum()), float(result["ground_truth"].sum()), result["mask"].size
        values.append(2 * m * g / (n * (m + g)) if m + g else 1.0)
    return float(np.mean(values)) if values else float("nan")


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _number(text: str, digits: int = 3) -> str:
    return f"{float(text):.{digits}f}" if text else "n/a"


def protocol_table(out: str) -> str:
    """The demo's table: the two methods under each evaluation of ``PROTOCOL_ROWS``."""
    lines = ["| Evaluation | Method | Threshold | Dice | pooled AUPRC | image AUROC |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, what, _ in PROTOCOL_ROWS:
        for row in _read_csv(os.path.join(out, "protocols", key, COMPARISON_CSV)):
            rule = row["threshold_rule"] + (f" {float(row['threshold']):.3g}" if row["threshold"] else "")
            dice = f"{_number(row['dice_mean'])} ± {_number(row['dice_std'])}"
            lines.append(f"| {what} | {row['method']} | {rule} | {dice} | {_number(row['auprc_pooled'])} | "
                         f"{_number(row['image_auroc'])} |")
    return "\n".join(lines)


def tuning_lines(plan: Plan, rows: Sequence[Row]) -> list[str]:
    """What each tune.py run chose on the validation split, and its grid for the paper's method."""
    lines = ["| Method | chosen on validation | validation Dice (volume) | threshold |", "| --- | --- | --- | --- |"]
    for m in rows:
        tune_dir = plan.tune_dir(m.key)
        if os.path.exists(os.path.join(tune_dir, BEST_JSON)):
            best = read_best(tune_dir)
            threshold = "n/a" if best["threshold"] is None else f"{best['threshold']:.4g}"
            lines.append(f"| {resolve(m.name)} | {best['setting']} | {best['dice']:.3f} | {threshold} |")
    grid = _read_csv(os.path.join(plan.tune_dir(rows[0].key), TUNE_CSV))
    lines += ["", f"The grid of {resolve(rows[0].name).split(':')[0]} (mean Dice per patient on validation):", "",
              "| L | s | Dice |", "| --- | --- | --- |"]
    lines += [f"| {r['noise_level']} | {float(r['scale']):g} | {_number(r['dice_mean'])} |" for r in grid]
    return lines


def write_report(plan: Plan, rows: Sequence[Row], runs: dict[str, StageRun]) -> str:
    """``<out>/report.md`` (choices, tables, chance level, panels, what ran) and ``timings.json``."""
    out, ddim = plan.out, rows[0]
    summary, slices = read_summary(ddim.test), read_metrics(ddim.test)
    diseased = [r for r in slices if r["label"] == 1]
    lines = [f"# `make {plan.cfg.driver.plan}`: anomaly detection on {plan.data}", "",
             "Tiny networks trained for minutes on a CPU; see the README for the paper-scale commands. L, s (or W) "
             f"and the thresholds were chosen on the validation split ({plan.data}/validation) with tune.py.", "",
             "## Chosen on the validation split", "", *tuning_lines(plan, rows), "",
             "## The paper's method and the FLAIR intensity, four evaluations", "", protocol_table(out), "",
             f"Chance level: a mask of the same size as each Otsu mask, placed at random, has an expected Dice of "
             f"{chance_dice(ddim.test, [r['id'] for r in diseased]):.3f} on these diseased slices "
             "(2|M||G| / (N(|M|+|G|)), averaged).", "",
             "The test folder as tune.py's evaluate.py line scored it:", "", format_table(summary), ""]
    if plan.cfg.driver.plan == "compare":
        with open(os.path.join(out, COMPARISON_MD)) as f:
            lines += ["## Every method (volume protocol, threshold chosen on validation)", "", f.read(), "",
                      "![comparison](comparison.png)", ""]
    lines += detection_lines(plan)
    lines += ["## Panels", "", f"The whole test run, worst patient first: [its page]({os.path.relpath(ddim.test, out)}/"
              f"{REPORT_HTML}). Each panel names its tiles: input channels; healthy reconstruction; anomaly map on "
              "the run's colour scale with its colour bar, the mask of the evaluation above, ground truth.", ""]
    for r in diseased[:4] + [r for r in slices if r["label"] == 0][:1]:
        lines += [f"![{r['id']}]({os.path.relpath(ddim.test, out)}/{r['id']}.png)", ""]
    lines += ["## What ran", "", "| stage | seconds | command |", "| --- | --- | --- |"]
    lines += [f"| {name} | {run.seconds:.0f}{'' if run.ran else ' (an earlier run, --resume)'} | `{run.command}` |"
              for name, run in runs.items()]
    lines += ["", f"Total: {sum(r.seconds for r in runs.values()):.0f} s of stages.", ""]
    path = os.path.join(out, "report.md")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    with atomic_write(os.path.join(out, "timings.json"), "w") as f:
        json.dump({name: run.seconds for name, run in runs.items()}, f, indent=2)
    return path


def run_demo(cfg: DemoConfig) -> str:
    """``make demo`` (``--plan demo``) or ``make compare`` (``--plan compare``); returns the report's path."""
    plan = Plan(cfg)
    stages, rows = plan_stages(plan)
    if not cfg.driver.resume:  # a fresh run: nothing of an earlier one is kept
        for name in plan.written:
            shutil.rmtree(os.path.join(plan.out, name), ignore_errors=True)
    start = time.perf_counter()
    runs = run_stages(stages, plan.log(""), cfg.driver.jobs, cfg.driver.resume)
    report = write_report(plan, rows, runs)
    page = os.path.join(rows[0].test, REPORT_HTML)  # the page of the paper's method's test run
    print(f"\nwrote {report} ({time.perf_counter() - start:.0f} s)")
    print(f"report: {os.path.abspath(page)}  (open it in a browser)")
    return report
