"""Live monitoring of real runs: train and translate with --visdom True against a real Visdom server
(started on a free port) and read the windows back through its HTTP API."""
import base64
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from visdom_fixture import visdom_server  # noqa: F401  (module-scoped real server)

from guided_diffusion.datasets.synthetic import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
         "--num_heads 1 --class_cond True --learn_sigma True --diffusion_steps 50").split()
CLASSIFIER = ("--image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
              "--classifier_attention_resolutions 8 --classifier_num_head_channels 32").split()


def run(name, *args, env=None):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def pixels(window):
    src = window["content"]["src"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"))


def test_training_and_translation_appear_in_visdom(visdom_server, tmp_path):  # noqa: F811
    generate(str(tmp_path / "syn"), dataset="brats", size=16, n_train=6, n_test=2, tumour_fraction=1.0, seed=4)
    data = tmp_path / "syn" / "brats"
    live = ["--visdom", True, "--visdom_server", visdom_server.server, "--visdom_port", visdom_server.port,
            "--progress", False]
    run("classifier_train.py", "--data_dir", data / "training", *CLASSIFIER, "--diffusion_steps", 50,
        "--batch_size", 2, "--iterations", 4, "--log_interval", 1, "--eval_interval", 2, "--val_fraction", 0.34,
        "--log_dir", tmp_path / "clf", *live)
    run("image_train.py", "--data_dir", data / "training", *MODEL, "--batch_size", 2, "--lr_anneal_steps", 3,
        "--log_interval", 1, "--log_dir", tmp_path / "model", *live)

    loss = visdom_server.window("classifier_train", "classifier_loss")
    traces = {t["name"]: t for t in loss["content"]["data"]}
    assert list(traces["loss"]["x"]) == [1, 2, 3, 4]
    acc = {t["name"]: t for t in visdom_server.window("classifier_train", "classifier_accuracy")["content"]["data"]}
    assert len(acc["acc"]["y"]) == 4 and list(acc["val_acc"]["x"]) == [2, 4]
    assert all(0 <= a <= 1 for a in acc["acc"]["y"])
    curves = {t["name"]: t for t in visdom_server.window("image_train", "model_loss")["content"]["data"]}
    assert {"loss", "mse", "vb"} <= set(curves) and list(curves["mse"]["x"]) == [1, 2, 3]

    run("classifier_sample_known.py", "--data_dir", data / "testing", "--label_dir", data / "test_labels", *MODEL,
        *CLASSIFIER, "--model_path", tmp_path / "model" / "model000003.pt",
        "--classifier_path", tmp_path / "clf" / "model000004.pt", "--noise_level", 5, "--use_ddim", True,
        "--visdom_every", 2, "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "log", *live)
    windows = visdom_server.windows("translate")
    assert {"input", "ground_truth", "x_t", "sample", "anomaly"} <= set(windows)
    assert pixels(visdom_server.window("translate", "input")).shape == (20, 74)  # 4 channel tiles of 16 px
    assert pixels(visdom_server.window("translate", "ground_truth")).max() == 255  # the tumour
    heat = visdom_server.window("translate", "anomaly")["content"]["data"][0]
    with np.load(tmp_path / "out" / f"{sorted(os.listdir(data / 'testing'))[-1]}.npz") as z:
        amap = z["anomaly"]
    np.testing.assert_allclose(np.array(heat["z"], dtype=float)[::-1], amap, rtol=1e-4, atol=1e-5)


def test_a_missing_server_gives_one_warning_through_a_script(tmp_path):
    from guided_diffusion.util.visdom_server import find_free_port

    generate(str(tmp_path / "syn"), dataset="brats", size=16, n_train=4, n_test=1, seed=4)
    port = find_free_port()  # nothing listens there
    proc = run("image_train.py", "--data_dir", tmp_path / "syn" / "brats" / "training", *MODEL, "--batch_size", 2,
               "--lr_anneal_steps", 3, "--log_interval", 1, "--log_dir", tmp_path / "model", "--visdom", True,
               "--visdom_port", port, "--progress", False, env={"PYTHONWARNINGS": "always"})  # no deduplication
    warnings = [line for line in proc.stderr.splitlines() if "Visdom monitoring is off" in line]
    assert len(warnings) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in warnings[0] and "--visdom False" in warnings[0]
    assert (tmp_path / "model" / "model000003.pt").is_file()  # the run went on
