"""Every bad input of the README's table, through the real translation script: a one-line error that
names the file or flag, exit status 2, and no half-written file left behind."""
import glob
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch as th

from guided_diffusion.datasets.nifti import write_nifti_gz
from guided_diffusion.datasets.synthetic import generate
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
    generate(str(tmp_path / "syn"), dataset="brats", size=16, n_train=1, n_test=3, seed=2)
    return tmp_path / "syn" / "brats"


def translate(nets, data, out, *extra, model=None, classifier=None, log_dir=None):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "classifier_sample_known.py"),
           "--data_dir", data / "testing", "--label_dir", data / "test_labels", *MODEL_FLAGS, *CLASSIFIER_FLAGS,
           "--model_path", model or nets / "model000000.pt",
           "--classifier_path", classifier or nets / "classifier000000.pt", "--noise_level", 2, "--use_ddim", True,
           "--output_dir", out, "--log_dir", log_dir or str(out) + "-log", "--progress", False, *extra]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=300)


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


def second_leaf(data):
    return sorted((data / "testing").iterdir())[1]


def corrupt(data, seq, array):
    path = next(second_leaf(data).glob(f"*_{seq}_*"))
    write_nifti_gz(path, array)
    return path


def test_truncated_nifti(nets, testset, tmp_path):
    path = next(second_leaf(testset).glob("*_flair_*"))
    path.write_bytes(path.read_bytes()[:200])
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: (cannot read|not a readable)",
                      tmp_path / "o")


def test_wrong_dtype_uint8_slice(nets, testset, tmp_path):
    path = corrupt(testset, "t1", np.full((16, 16), 200, dtype=np.uint8))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: expected values in \[0, 1\]",
                      tmp_path / "o")


def test_wrong_shape_between_modalities(nets, testset, tmp_path):
    path = corrupt(testset, "t2", np.zeros((16, 12)))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: slice shape \(16, 12\) differs",
                      tmp_path / "o")


def test_nan_values(nets, testset, tmp_path):
    array = np.zeros((16, 16))
    array[3, 3] = np.nan
    path = corrupt(testset, "t1ce", array)
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: 1 NaN or infinite",
                      tmp_path / "o")


def test_volume_where_a_slice_belongs(nets, testset, tmp_path):
    path = corrupt(testset, "flair", np.zeros((16, 16, 155)))
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{path.name}: expected a 2-D slice",
                      tmp_path / "o")


def test_label_file_with_the_wrong_name(nets, testset, tmp_path):
    leaf = second_leaf(testset).name
    labels = testset / "test_labels"
    os.rename(labels / f"{leaf}-label.nii.gz", labels / f"{leaf}_label.nii.gz")
    assert_user_error(translate(nets, testset, tmp_path / "o"), rf"{leaf}-label.nii.gz.*--label_dir|--label_dir.*{leaf}",
                      tmp_path / "o")


def test_checkpoint_from_other_flags(nets, testset, tmp_path):
    proc = translate(nets, testset, tmp_path / "o", "--learn_sigma", False)
    assert_user_error(proc, r"model000000.pt: does not fit the diffusion model.*--learn_sigma", tmp_path / "o")
    proc = translate(nets, testset, tmp_path / "o", "--classifier_width", 64)
    assert_user_error(proc, r"classifier000000.pt: does not fit the classifier", tmp_path / "o")


def test_pickle_with_code_as_checkpoint(nets, testset, tmp_path):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil.write_bytes(pickle.dumps(Payload()))
    assert_user_error(translate(nets, testset, tmp_path / "o", model=evil), r"evil.pt: refused to load", tmp_path / "o")
    assert not marker.exists(), "the pickle's code ran"


def test_truncated_checkpoint(nets, testset, tmp_path):
    short = tmp_path / "short.pt"
    short.write_bytes((nets / "model000000.pt").read_bytes()[:5000])
    assert_user_error(translate(nets, testset, tmp_path / "o", model=short), r"short.pt: truncated or corrupt",
                      tmp_path / "o")


def _mount_tmpfs(path, options):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")


def test_read_only_output_folder(nets, testset, tmp_path):
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


def test_full_output_folder(nets, testset, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small file system")
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=48k")
    try:
        proc = translate(nets, testset, full)
        assert_user_error(proc, rf"{full}/\S+: No space left on device", full)
    finally:
        subprocess.run(["umount", str(full)])
