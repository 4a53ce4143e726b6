"""End to end: the three pinned scripts and evaluate.py on the bundled synthetic data, with tiny networks."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")

MODEL = ("--image_size 64 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 16 "
         "--num_heads 1 --class_cond True --learn_sigma True --use_scale_shift_norm False "
         "--diffusion_steps 100 --noise_schedule linear").split()
CLASSIFIER = ("--image_size 64 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
              "--classifier_attention_resolutions 16 --classifier_num_head_channels 32").split()


def run_script(name, *args, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def subset(src, dst, n):
    os.makedirs(dst)
    for leaf in sorted(name for name in os.listdir(src) if not name.startswith("."))[:n]:  # leaves, not the store
        shutil.copytree(os.path.join(src, leaf), os.path.join(dst, leaf))
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny classifier and diffusion model trained for a few steps on the synthetic BRATS set."""
    tmp = tmp_path_factory.mktemp("pipeline")
    run_script("classifier_train.py", "--data_dir", f"{DATA}/brats/training", "--dataset", "brats", *CLASSIFIER,
               "--diffusion_steps", 100, "--batch_size", 4, "--iterations", 3, "--save_interval", 3,
               "--eval_interval", 3, "--log_dir", tmp / "clf", "--progress", False)
    run_script("image_train.py", "--data_dir", f"{DATA}/brats/training", "--dataset", "brats", *MODEL,
               "--batch_size", 4, "--lr_anneal_steps", 3, "--save_interval", 3, "--log_dir", tmp / "model",
               "--progress", False)
    return tmp


def test_training_writes_pinned_checkpoints_and_logs(trained):
    assert {"model000003.pt", "opt000003.pt", "progress.csv", "log.txt"} <= set(os.listdir(trained / "clf"))
    assert {"model000003.pt", "ema_0.9999_000003.pt", "opt000003.pt", "progress.csv"} <= set(
        os.listdir(trained / "model"))
    with open(trained / "clf" / "progress.csv") as f:
        header = next(csv.reader(f))
    assert {"loss", "acc", "step", "val_acc", "val_loss"} <= set(header)


def translate_argv(trained, out, *extra, data=f"{DATA}/brats/testing", labels=f"{DATA}/brats/test_labels",
                   dataset="brats"):
    args = ["--data_dir", data, "--dataset", dataset, *MODEL, *CLASSIFIER,
            "--model_path", trained / "model" / "model000003.pt",
            "--classifier_path", trained / "clf" / "model000003.pt",
            "--classifier_scale", 100, "--noise_level", 6, "--output_dir", out, "--log_dir", str(out) + "-log",
            "--progress", False, *extra]
    if labels:
        args += ["--label_dir", labels]
    return args


def translate(trained, out, *extra, **kwargs):
    return run_script("classifier_sample_known.py", *translate_argv(trained, out, *extra, **kwargs))


@pytest.mark.parametrize("use_ddim", [True, False])
def test_translate_writes_every_pinned_file(trained, tmp_path, use_ddim):
    out = tmp_path / "out"
    translate(trained, out, "--use_ddim", use_ddim, "--timestep_respacing", "ddim50" if use_ddim else "",
              "--batch_size", 3)
    ids = sorted(name for name in os.listdir(f"{DATA}/brats/testing") if not name.startswith("."))  # not the store
    files = set(os.listdir(out))
    assert {f"{i}.npz" for i in ids} | {f"{i}.png" for i in ids} | {"metrics.csv", "summary.json"} <= files
    assert "report.html" in files and {f"{i}.png" for i in ids} <= set(os.listdir(out / "report" / "thumbs"))
    for i in ids:
        with np.load(out / f"{i}.npz") as z:
            assert z["input"].shape == (4, 64, 64) and z["healthy"].shape == (4, 64, 64)
            assert z["anomaly"].shape == (64, 64) and z["mask"].dtype == bool and z["mask"].shape == (64, 64)
            assert z["ground_truth"].shape == (64, 64)
            assert int(z["label"]) == int(z["ground_truth"].any())
            np.testing.assert_allclose(z["anomaly"], np.abs(z["input"] - z["healthy"]).sum(0), rtol=1e-5, atol=1e-6)
    with open(out / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label", "dice", "auroc", "auprc", "patient", "slice"]  # SPEC 6a's five first
    assert [r[0] for r in rows[1:]] == ids
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flags"]["use_ddim"] is use_ddim and summary["seconds_per_image"] > 0
    for metric in ("dice", "auroc", "auprc"):
        assert set(summary[metric]) >= {"mean", "std"}

    # evaluate.py recomputes the same files from the npz alone
    before_csv = (out / "metrics.csv").read_text()
    before = json.loads((out / "summary.json").read_text())
    os.remove(out / "metrics.csv")
    os.remove(out / "summary.json")
    proc = run_script("evaluate.py", out)
    assert "Dice" in proc.stdout
    assert (out / "metrics.csv").read_text() == before_csv
    after = json.loads((out / "summary.json").read_text())
    for metric in ("dice", "auroc", "auprc", "image_auroc"):
        assert after[metric] == before[metric]


def test_batch_size_does_not_change_results_and_rerun_skips(trained, tmp_path):
    one, three = tmp_path / "b1", tmp_path / "b3"
    translate(trained, one, "--use_ddim", True, "--batch_size", 1, "--num_samples", 3)
    translate(trained, three, "--use_ddim", True, "--batch_size", 3, "--num_samples", 3)
    names = sorted(n for n in os.listdir(one) if n.endswith(".npz"))
    assert len(names) == 3
    for n in names:
        with np.load(one / n) as a, np.load(three / n) as b:
            np.testing.assert_allclose(a["healthy"], b["healthy"], rtol=1e-4, atol=2e-5)
    # a rerun into the same folder skips finished images and recomputes metrics.csv
    stamp = os.path.getmtime(one / names[0])
    os.remove(one / "metrics.csv")
    proc = translate(trained, one, "--use_ddim", True, "--batch_size", 1, "--num_samples", 3)
    assert os.path.getmtime(one / names[0]) == stamp
    assert "0 of 3 images to translate" in proc.stdout + proc.stderr
    assert (one / "metrics.csv").exists()


def test_chexpert_one_channel(tmp_path):
    tmp = tmp_path
    model = [a if a != "brats" else "chexpert" for a in MODEL]
    run_script("classifier_train.py", "--data_dir", f"{DATA}/chexpert/training", "--dataset", "chexpert",
               *CLASSIFIER, "--diffusion_steps", 100, "--batch_size", 4, "--iterations", 2, "--save_interval", 3,
               "--log_dir", tmp / "clf", "--progress", False)
    run_script("image_train.py", "--data_dir", f"{DATA}/chexpert/training", "--dataset", "chexpert", *model,
               "--batch_size", 4, "--lr_anneal_steps", 2, "--save_interval", 3, "--log_dir", tmp / "model",
               "--progress", False)
    out = tmp / "out"
    args = ["--data_dir", f"{DATA}/chexpert/testing", "--dataset", "chexpert", *model, *CLASSIFIER,
            "--model_path", tmp / "model" / "model000002.pt", "--classifier_path", tmp / "clf" / "model000002.pt",
            "--noise_level", 4, "--output_dir", out, "--log_dir", tmp / "log", "--progress", False, "--batch_size", 4]
    for use_ddim in (True, False):
        shutil.rmtree(out, ignore_errors=True)
        run_script("classifier_sample_known.py", *args, "--use_ddim", use_ddim)
        stems = sorted(os.path.splitext(n)[0] for d in ("healthy", "diseased")
                       for n in os.listdir(f"{DATA}/chexpert/testing/{d}"))
        with np.load(out / f"{stems[0]}.npz") as z:
            assert z["input"].shape == (1, 64, 64) and "ground_truth" not in z.files
        with open(out / "metrics.csv") as f:
            assert [r[0] for r in list(csv.reader(f))[1:]] == stems
        summary = json.loads((out / "summary.json").read_text())
        assert summary["image_auroc"] == pytest.approx(image_auroc_by_hand(out), abs=1e-12)


def image_auroc_by_hand(folder):
    """P(score of a diseased image > score of a healthy one), ties counted half (Mann-Whitney), with the
    score of summary.json's image_score: the 99th percentile of each anomaly map."""
    scores = {0: [], 1: []}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as z:
            scores[int(z["label"])].append(float(np.percentile(z["anomaly"].astype(np.float64), 99)))
    pairs = [(d > h) + 0.5 * (d == h) for d in scores[1] for h in scores[0]]
    return sum(pairs) / len(pairs)


def test_bf16_and_channels_last_through_the_script(trained, tmp_path):
    # --precision bf16 and --channels_last True end to end: the same files, the numbers of fp32 up to
    # rounding (healthy reconstruction max |diff| measured 3.8e-5 for bf16, 1.8e-7 for channels-last, while
    # the translation moved pixels by up to 0.14)
    ref, bf16, cl = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "cl"
    common = ("--use_ddim", True, "--timestep_respacing", "ddim50", "--batch_size", 4, "--num_samples", 4)
    translate(trained, ref, *common)
    translate(trained, bf16, *common, "--precision", "bf16")
    translate(trained, cl, *common, "--channels_last", True)
    assert json.loads((bf16 / "summary.json").read_text())["flags"]["precision"] == "bf16"
    assert json.loads((cl / "summary.json").read_text())["flags"]["channels_last"] is True
    names = sorted(n.name for n in ref.glob("*.npz"))
    assert len(names) == 4
    assert names == sorted(n.name for n in bf16.glob("*.npz")) == sorted(n.name for n in cl.glob("*.npz"))
    spread = []
    for name in names:
        with np.load(ref / name) as a, np.load(bf16 / name) as b, np.load(cl / name) as c:
            np.testing.assert_allclose(c["healthy"], a["healthy"], atol=1e-5)
            assert np.abs(b["healthy"] - a["healthy"]).max() <= 1e-3
            assert not np.array_equal(b["healthy"], a["healthy"])  # bf16 did run
            spread.append(np.abs(a["healthy"] - a["input"]).max())
    assert max(spread) > 0.05  # the translation changed the images: the bounds above are not vacuous


def test_use_fp16_flags_are_honoured_at_translation(trained, tmp_path):
    # guided diffusion's --use_fp16 / --classifier_use_fp16 run that network in float16 (max |diff| of the
    # healthy reconstruction measured 1.1e-4); with another --precision they contradict each other
    ref, fp16 = tmp_path / "fp32", tmp_path / "fp16"
    common = ("--use_ddim", True, "--timestep_respacing", "ddim50", "--num_samples", 1)  # fp16 is emulated: 1 image
    translate(trained, ref, *common)
    translate(trained, fp16, *common, "--use_fp16", True, "--classifier_use_fp16", True)
    names = sorted(n.name for n in ref.glob("*.npz"))
    assert len(names) == 1
    for name in names:
        with np.load(ref / name) as a, np.load(fp16 / name) as b:
            assert not np.array_equal(a["healthy"], b["healthy"])
            assert np.abs(a["healthy"] - b["healthy"]).max() <= 1e-3
    proc = run_script("classifier_sample_known.py", *translate_argv(trained, tmp_path / "x", "--use_fp16", True,
                                                                    "--precision", "bf16"), check=False)
    assert proc.returncode == 2 and "--use_fp16 True: contradicts --precision bf16" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--noise_level", 0], "--noise_level 0: expected 1..100"),
    (["--noise_level", 30, "--timestep_respacing", "ddim20"], "--noise_level 30: expected 1..20"),
    (["--dataset", "mnist"], "--dataset 'mnist'"),
    (["--learn_sigma", False], "--learn_sigma"),
    (["--model_path", "/nonexistent/model.pt"], "/nonexistent/model.pt"),
    (["--output_dir", "/proc/forbidden"], "--output_dir /proc/forbidden"),
    (["--use_ddim", "maybe"], "--use_ddim"),
])
def test_bad_flags_give_one_line_errors(trained, tmp_path, flags, message):
    args = ["--data_dir", f"{DATA}/brats/testing", "--label_dir", f"{DATA}/brats/test_labels", "--dataset", "brats",
            *MODEL, *CLASSIFIER, "--model_path", trained / "model" / "model000003.pt",
            "--classifier_path", trained / "clf" / "model000003.pt", "--output_dir", tmp_path / "o",
            "--log_dir", tmp_path / "l", "--progress", False, "--noise_level", 6]
    proc = run_script("classifier_sample_known.py", *args, *map(str, flags), check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "o").glob("*.npz"))  # nothing translated (the folder may not even exist)


def test_classifier_checkpoint_in_place_of_the_model_is_named(trained, tmp_path):
    args = ["--data_dir", f"{DATA}/brats/testing", "--label_dir", f"{DATA}/brats/test_labels", *MODEL, *CLASSIFIER,
            "--model_path", trained / "clf" / "model000003.pt", "--classifier_path", trained / "clf" / "model000003.pt",
            "--output_dir", tmp_path / "o", "--log_dir", tmp_path / "l", "--progress", False]
    proc = run_script("classifier_sample_known.py", *args, check=False)
    assert proc.returncode == 2 and "clf/model000003.pt: does not fit the diffusion model" in proc.stderr
