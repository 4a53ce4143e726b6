"""Every bad input of the README's table, through the real scripts' entry points (in-process: the
same ``main`` and ``run_main`` a shell runs): a one-line error that names the file or flag, exit status 2,
and no half-written file left behind. The slice errors also through the two training scripts; and, in a
real process with progress bars on, the error is the last line the user sees."""
import glob
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch as th

from guided_diffusion.datasets.nifti import write_nifti_gz
from guided_diffusion.datasets.synthetic import generate
from guided_diffusion.pipeline.cli import run_main
from guided_diffusion.script_util import create_classifier, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.util import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(model_and_diffusion_defaults(), image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", num_heads=1, class_cond=True, learn_sigma=True, diffusion_steps=50)
MODEL_FLAGS = [f"--{k}={v}" for k, v in MODEL.items() if k in ("image_size", "num_channels", "num_res_blocks",
                                                                 "channel_mult", "attention_resolutions",
                                                                 "num_heads", "class_cond", "learn_sigma",
                                                                 "diffusion_steps")]
CLASSIFIER_FLAGS = ["--classifier_width=32", "--classifier_depth=1", "--classifier_channel_mult=1,2",
                    "--classifier_attention_resolutions=8", "--classifier_num_head_channels=32"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Random-weight checkpoints: enough to exercise every error path."""
    out = tmp_path_factory.mktemp("nets")
    th.manual_seed(0)
    model, _ = create_model_and_diffusion(**MODEL)
    ckpt.save(model.state_dict(), str(out / "model000000.pt"))
    clf = create_classifier(16, False, 32, 1, "8", True, True, "attention", classifier_channel_mult="1,2",
                            classifier_num_head_channels=32)
    ckpt.save(clf.state_dict(), str(out / "classifier000000.pt"))
    return out


@pytest.fixture()
def testset(tmp_path):
    generate(str(tmp_path / "syn"), dataset="brats", size=16, n_train=3, n_test=3, seed=2)
    return tmp_path / "syn" / "brats"


def _main(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


SCRIPTS = {name: _main(name) for name in ("classifier_sample_known", "classifier_train", "image_train")}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def call(capsys):
    """call(script, argv): run the script's entry point as the shell does, return what the user saw."""
    def run(name, argv):
        capsys.readouterr()
        code = run_main(SCRIPTS[name], [str(a) for a in argv])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return run


def translation_argv(nets, data, out, *extra, model=None, classifier=None, log_dir=None):
    return ["--data_dir", data / "testing", "--label_dir", data / "test_labels", *MODEL_FLAGS, *CLASSIFIER_FLAGS,
            "--model_path", model or nets / "model000000.pt",
            "--classifier_path", classifier or nets / "classifier000000.pt", "--noise_level", 2, "--use_ddim", True,
            "--output_dir", out, "--log_dir", log_dir or str(out) + "-log", "--progress", False, *extra]


@pytest.fixture()
def translate(call):
    def run(nets, data, out, *extra, **kwargs):
        return call("classifier_sample_known", translation_argv(nets, data, out, *extra, **kwargs))
    return run


def training_argv(script, data, log_dir, *extra):
    flags = MODEL_FLAGS if script == "image_train" else [*CLASSIFIER_FLAGS, "--image_size=16", "--diffusion_steps=50",
                                                          "--val_fraction=0"]
    steps = "--lr_anneal_steps" if script == "image_train" else "--iterations"
    return ["--data_dir", data / "training", *flags, "--batch_size", 3, steps, 1, "--log_dir", log_dir,
            "--progress", False, *extra]


def assert_user_error(proc, pattern, out):
    import re
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    if os.path.isdir(out):
        assert not glob.glob(os.path.join(out, ".*.tmp")), "half-written temporary file left behind"
        for path in glob.glob(os.path.join(out, "*.npz")):
            with np.load(path) as z:  # every result on disk is complete
                z["healthy"]


def second_leaf(data, split="testing"):
    return sorted(p for p in (data / split).iterdir() if not p.name.startswith("."))[1]  # a leaf, not the store


def corrupt(data, seq, array, split="testing"):
    path = next(second_leaf(data, split).glob(f"*_{seq}_*"))
    write_nifti_gz(path, array)
    return path


SLICE_ERRORS = {  # what is wrong with a slice file -> the error the user sees
    "uint8": (lambda: np.full((16, 16), 200, dtype=np.uint8), "t1", r"expected values in \[0, 1\]"),
    "shape": (lambda: np.zeros((16, 12)), "t2", r"slice shape \(16, 12\) differs"),
    "nan": (lambda: np.where(np.eye(16, dtype=bool), np.nan, 0.0), "t1ce", r"16 NaN or infinite"),
    "volume": (lambda: np.zeros((16, 16, 155)), "flair", r"expected a 2-D slice"),
}


@pytest.mark.parametrize("script", ["classifier_train", "image_train"])
@pytest.mark.parametrize("problem", ["truncated", *SLICE_ERRORS])
def test_bad_training_slices_through_the_training_scripts(call, testset, tmp_path, script, problem):
    if problem == "truncated":
        path = next(second_leaf(testset, "training").glob("*_flair_*"))
        path.write_bytes(path.read_bytes()[:200])
        pattern = rf"{path.name}: (cannot read|not a readable)"
    else:
        make, seq, message = SLICE_ERRORS[problem]
        path = corrupt(testset, seq, make(), split="training")
        pattern = rf"{path.name}: {message}"
    log = tmp_path / "log"
    assert_user_error(call(script, training_argv(script, testset, log)), pattern, log)
    assert not glob.glob(str(log / "*.pt")), "a checkpoint of a run that never trained"


def test_training_from_a_checkpoint_of_other_flags_or_a_pickle(call, testset, tmp_path):
    assert call("image_train", training_argv("image_train", testset, tmp_path / "a")).returncode == 0
    proc = call("image_train", training_argv("image_train", testset, tmp_path / "a", "--learn_sigma", False,
                                             "--resume_checkpoint", tmp_path / "a" / "model000001.pt"))
    # resuming takes the network flags from the run: a given flag that contradicts them is named
    assert_user_error(proc, r"--learn_sigma False: the checkpoint needs --learn_sigma True "
                            r"\(.*a/flags_image_train.json", tmp_path / "a")
    evil = tmp_path / "model000001.pt"
    evil.write_bytes(pickle.dumps(Exception("not a tensor")))
    proc = call("classifier_train", training_argv("classifier_train", testset, tmp_path / "b",
                                                  "--resume_checkpoint", evil))
    assert_user_error(proc, r"model000001.pt: refused to load", tmp_path / "b")
    proc = call("classifier_train", training_argv("classifier_train", testset, tmp_path / "c", "--lr", 0))
    assert_user_error(proc, r"--lr 0.0: expected a positive learning rate", tmp_path / "c")


def test_error_is_the_last_line_with_progress_bars(nets, testset, tmp_path):
    # a real process, progress bars on: the bar is closed before the message, so the message comes last
    bad = {split: corrupt(testset, "t1", np.full((16, 16), 200, dtype=np.uint8), split=split).name
           for split in ("testing", "training")}
    for script, argv, path in (
            ("classifier_sample_known", translation_argv(nets, testset, tmp_path / "o"), bad["testing"]),
            ("image_train", training_argv("image_train", testset, tmp_path / "log"), bad["training"])):
        argv[argv.index("--progress") + 1] = True
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{script}.py"), *map(str, argv)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 2
        last = proc.stderr.rstrip().replace("\r", "\n").splitlines()[-1]
        assert last.startswith("error: ") and path in last, (script, proc.stderr[-500:])


def test_truncated_nifti(translate, nets, testset, tmp_path):
    path = next(second_leaf(testset).glob("*_flair_*"))
    path.write_bytes(path.read_bytes()[:200])
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: (cannot read|not a readable)",
                      tmp_path / "o")


def test_wrong_dtype_uint8_slice(translate, nets, testset, tmp_path):
    path = corrupt(testset, "t1", np.full((16, 16), 200, dtype=np.uint8))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: expected values in \[0, 1\]",
                      tmp_path / "o")


def test_wrong_shape_between_modalities(translate, nets, testset, tmp_path):
    path = corrupt(testset, "t2", np.zeros((16, 12)))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: slice shape \(16, 12\) differs",
                      tmp_path / "o")


def test_nan_values(translate, nets, testset, tmp_path):
    array = np.zeros((16, 16))
    array[3, 3] = np.nan
    path = corrupt(testset, "t1ce", array)
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: 1 NaN or infinite",
                      tmp_path / "o")


def test_volume_where_a_slice_belongs(translate, nets, testset, tmp_path):
    path = corrupt(testset, "flair", np.zeros((16, 16, 155)))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: expected a 2-D slice",
                      tmp_path / "o")


def test_label_file_with_the_wrong_name(translate, nets, testset, tmp_path):
    leaf = second_leaf(testset).name
    labels = testset / "test_labels"
    os.rename(labels / f"{leaf}-label.nii.gz", labels / f"{leaf}_label.nii.gz")
    assert_user_error(translate(nets, testset, tmp_path / "o"),
                      rf"{leaf}-label.nii.gz.*--label_dir|--label_dir.*{leaf}", tmp_path / "o")


def test_checkpoint_from_other_flags(translate, nets, testset, tmp_path):
    # checkpoints without saved flags: their tensor shapes tell, and every contradiction is named at once
    proc = translate(nets, testset, tmp_path / "o", "--learn_sigma", False, "--classifier_width", 64)
    assert_user_error(proc, r"2 flag\(s\) contradict the checkpoints: --learn_sigma False: the checkpoint needs "
                            r"--learn_sigma True \(the tensor shapes of .*model000000.pt\); --classifier_width 64: the "
                            r"checkpoint needs --classifier_width 32 \(the tensor shapes of .*classifier000000.pt\)",
                      tmp_path / "o")


def test_pickle_with_code_as_checkpoint(translate, nets, testset, tmp_path):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil.write_bytes(pickle.dumps(Payload()))
    assert_user_error(translate(nets, testset, tmp_path / "o", model=evil), r"evil.pt: refused to load", tmp_path / "o")
    assert not marker.exists(), "the pickle's code ran"


def test_truncated_checkpoint(translate, nets, testset, tmp_path):
    short = tmp_path / "short.pt"
    short.write_bytes((nets / "model000000.pt").read_bytes()[:5000])
    assert_user_error(translate(nets, testset, tmp_path / "o", model=short), r"short.pt: truncated or corrupt",
                      tmp_path / "o")


def _mount_tmpfs(path, options):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")


def test_read_only_output_folder(translate, nets, testset, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only file system")
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        assert_user_error(translate(nets, testset, ro / "out", log_dir=tmp_path / "log"),
                          rf"--output_dir {ro}/out: cannot create it \(Read-only file system\)", ro)
    finally:
        subprocess.run(["umount", str(ro)])
    assert_user_error(translate(nets, testset, "/proc/results", log_dir=tmp_path / "log"),
                      r"--output_dir /proc/results", "/proc/results")


def test_full_output_folder(translate, nets, testset, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small file system")
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=48k")
    try:
        proc = translate(nets, testset, full)
        assert_user_error(proc, rf"{full}/\S+: No space left on device", full)
    finally:
        subprocess.run(["umount", str(full)])


def files_of(folder):
    """Every file under ``folder`` (report.html's assets in report/ included): {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_other_settings_is_never_relabelled(translate, nets, testset, tmp_path):
    # the case: a rerun at other L and s into a folder made at L = 2, s = 100 reported the
    # old images under the new settings and exited 0
    out = tmp_path / "o"
    assert translate(nets, testset, out, "--num_samples", 1).returncode == 0
    made = files_of(out)
    proc = translate(nets, testset, out, "--noise_level", 1, "--classifier_scale", 7)
    assert_user_error(proc, rf"^error: --output_dir {out}: holds results made with other settings \({out}/settings"
                            r"\.json\): --classifier_scale 100\.0 \(now 7\.0\), --noise_level 2 \(now 1\); rerun with "
                            r"those flags to resume, or use another --output_dir$", out)
    other = tmp_path / "other.pt"
    shutil.copy(nets / "model000000.pt", other)
    proc = translate(nets, testset, out, "--seed", 3, "--timestep_respacing", "ddim25", model=other)
    assert_user_error(proc, rf": --seed 0 \(now 3\), --model_path {nets}/model000000\.pt \(now {other}\), "
                            r"--timestep_respacing none \(now ddim25\);", out)
    assert files_of(out) == made  # nothing written, nothing relabelled
    # the same settings resume; the batch, the number of images, the scoring and the bar change no result
    proc = translate(nets, testset, out, "--batch_size", 2, "--num_samples", -1, "--protocol", "slice")
    assert proc.returncode == 0 and "2 of 3 images to translate (1 done)" in proc.stdout, proc.stderr
    # the first image's results unchanged (its panel is redrawn: each scoring draws the mask it evaluated)
    assert all(files_of(out)[name] == data for name, data in made.items() if name.endswith(".npz"))
    # a folder written before settings.json: the flags its summary.json recorded stand in
    (out / "settings.json").unlink()
    assert_user_error(translate(nets, testset, out, "--noise_level", 1),
                      rf"other settings \({out}/summary\.json\): --noise_level 2 \(now 1\);", out)
    (out / "summary.json").unlink()
    assert_user_error(translate(nets, testset, out), rf"--output_dir {out}: holds results whose settings were not "
                                                     r"recorded", out)


def test_training_into_a_folder_of_checkpoints_says_how_to_resume(call, testset, tmp_path):
    # before: a second run started from step 0 and overwrote the first run's model000001.pt
    log = tmp_path / "log"
    assert call("image_train", training_argv("image_train", testset, log)).returncode == 0
    made = files_of(log)
    proc = call("image_train", training_argv("image_train", testset, log, "--seed", 1))
    assert_user_error(proc, rf"^error: --log_dir {log}: holds the checkpoints of an earlier run \(the newest: "
                            r"ema_0\.9999_000001\.pt, model000001\.pt, opt000001\.pt\); continue it with "
                            r"--resume_checkpoint auto, or start afresh with another --log_dir$", log)
    assert files_of(log) == made  # the checkpoints and the saved flags untouched (resuming: test_train.py)


def test_translation_logs_beside_its_outputs_and_a_failed_run_leaves_no_folder(call, nets, testset, tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    argv = translation_argv(nets, testset, tmp_path / "o", "--num_samples", 1)
    del argv[argv.index("--log_dir"):argv.index("--log_dir") + 2]
    assert call("classifier_sample_known", argv).returncode == 0
    assert "1 of 1 images to translate" in (tmp_path / "o" / "log.txt").read_text()
    assert not (tmp_path / "results").exists()
    # runs that stop before doing anything, without --log_dir: before, each left an empty
    # results/<script>-<timestamp>/ behind
    argv = translation_argv(nets, testset, "", "--noise_level", 500)
    del argv[argv.index("--output_dir"):argv.index("--log_dir") + 2]
    assert_user_error(call("classifier_sample_known", argv), r"--noise_level 500: expected 1\.\.50", tmp_path)
    argv = training_argv("image_train", testset, "")
    argv[argv.index("--data_dir") + 1] = tmp_path / "missing"
    del argv[argv.index("--log_dir"):argv.index("--log_dir") + 2]
    assert_user_error(call("image_train", argv), rf"{tmp_path}/missing", tmp_path)
    assert not (tmp_path / "results").exists()
