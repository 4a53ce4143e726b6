"""Result files (SPEC 6a), metrics.csv / summary.json, the protocols and scripts/evaluate.py."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.anomaly import anomaly_map, otsu_mask
from guided_diffusion.evaluation.results import (
    METRICS_COLUMNS,
    ResultFileError,
    compute_metrics,
    format_table,
    is_done,
    load_result,
    read_metrics,
    render_panel,
    save_result,
    write_metrics,
)

REPO = Path(__file__).resolve().parents[1]


def _load_evaluate():
    # scripts/ is not a package: load the entry point from its file.
    path = REPO / "scripts" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


evaluate_main = _load_evaluate()
SIZE = 16


def _square_gt(n_pixels: int) -> np.ndarray:
    """(SIZE, SIZE) uint8 ground truth with exactly n_pixels tumour pixels."""
    gt = np.zeros(SIZE * SIZE, dtype=np.uint8)
    start = 3 * SIZE + 3
    gt[start : start + n_pixels] = 1
    return gt.reshape(SIZE, SIZE)


def _case(rng, gt, channels=4, perfect=True):
    """An input, a healthy reconstruction and the resulting anomaly map.

    With ``perfect`` the reconstruction differs from the input exactly on ``gt``.
    """
    healthy = rng.uniform(0.2, 0.8, size=(channels, SIZE, SIZE)).astype(np.float32)
    x = healthy.copy()
    region = gt != 0 if perfect else rng.random((SIZE, SIZE)) > 0.8
    x[:, region] += 0.15
    x[:, ~region] += rng.uniform(0.0, 0.01, size=(channels, int((~region).sum())))
    amap = anomaly_map(x, healthy)
    return dict(input=x, healthy=healthy, anomaly=amap)


def _save(folder, image_id, rng, gt=None, label=None, extra=None, **kwargs):
    case = _case(rng, gt if gt is not None else np.zeros((SIZE, SIZE)), **kwargs)
    if label is None:
        label = int(gt is not None and gt.any())
    save_result(folder, image_id, label=label, ground_truth=gt, extra=extra, **case)
    return case


def _populate(folder):
    """Four diseased slices with 40, 30, 21, 20 tumour pixels and two healthy slices."""
    rng = np.random.default_rng(0)
    _save(folder, "000247", rng, _square_gt(40))
    _save(folder, "000248", rng, _square_gt(30), perfect=False)
    _save(folder, "000249", rng, _square_gt(21))
    _save(folder, "000250", rng, _square_gt(20))
    _save(folder, "000251", rng, _square_gt(0))
    _save(folder, "000252", rng, _square_gt(0), perfect=False)


def _no_bare_nan(text):
    def reject(token):
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=reject)


# ---------------------------------------------------------------- save_result / load


def test_save_result_writes_the_pinned_npz(tmp_path):
    rng = np.random.default_rng(1)
    gt = _square_gt(30)
    case = _save(tmp_path, "a", rng, gt, extra={"x_noisy": np.ones((4, SIZE, SIZE))})
    with np.load(tmp_path / "a.npz") as z:
        assert set(z.files) == {
            "input", "healthy", "anomaly", "mask", "label", "ground_truth", "x_noisy"
        }
        assert z["input"].shape == (4, SIZE, SIZE) and z["input"].dtype == np.float32
        assert z["healthy"].shape == (4, SIZE, SIZE) and z["healthy"].dtype == np.float32
        assert z["anomaly"].shape == (SIZE, SIZE) and z["anomaly"].dtype == np.float32
        assert z["mask"].dtype == bool
        assert z["ground_truth"].dtype == np.uint8 and set(np.unique(z["ground_truth"])) == {0, 1}
        assert int(z["label"]) == 1
        np.testing.assert_array_equal(z["mask"], otsu_mask(case["anomaly"]))
    loaded = load_result(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded["ground_truth"], gt != 0)
    assert loaded["label"] == 1
    assert is_done(tmp_path, "a")


def test_save_result_without_ground_truth(tmp_path):
    _save(tmp_path, "patient01104_study1", np.random.default_rng(2), None, label=0, channels=1)
    with np.load(tmp_path / "patient01104_study1.npz") as z:
        assert "ground_truth" not in z.files
    assert load_result(tmp_path / "patient01104_study1.npz")["ground_truth"] is None


def test_png_panel_is_a_valid_upscaled_image(tmp_path):
    _save(tmp_path, "a", np.random.default_rng(3), _square_gt(30))
    with Image.open(tmp_path / "a.png") as im:
        im.verify()
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        # 16 px tiles are enlarged 8x to 128 px; 4 columns (channels), 3 captioned rows under a title, 4 px gaps.
        assert im.size == (4 * 128 + 5 * 4, 16 + 3 * (12 + 128) + 4 * 4)
        pixels = np.asarray(im)
    assert pixels.std() > 0


def test_panel_layout_for_one_channel_with_ground_truth():
    rng = np.random.default_rng(4)
    case = _case(rng, _square_gt(30), channels=1)
    panel = render_panel(
        case["input"], case["healthy"], case["anomaly"], otsu_mask(case["anomaly"]), _square_gt(30)
    )
    # Row 3 holds heat map, colour bar, mask and ground truth: 4 columns.
    assert panel.shape == (16 + 3 * (12 + 128) + 4 * 4, 4 * 128 + 5 * 4, 3) and panel.dtype == np.uint8
    big = np.zeros((1, 200, 300), dtype=np.float32)
    panel = render_panel(big, big, big[0], big[0] > 0)
    assert panel.shape == (16 + 3 * (12 + 200) + 4 * 4, 3 * 300 + 4 * 4, 3)  # no enlargement


def test_panel_names_what_it_shows(tmp_path):
    """The title line carries the id, label and Otsu Dice; every tile has a caption strip with text in it
    (row 3: the map, its colour bar, the mask, the ground truth)."""
    gt = _square_gt(30)
    case = _save(tmp_path, "a", np.random.default_rng(6), gt)
    mask = otsu_mask(case["anomaly"])
    by_hand = 2 * np.logical_and(mask, gt).sum() / (mask.sum() + gt.sum())
    with Image.open(tmp_path / "a.png") as im:
        saved = np.asarray(im)
    drawn = render_panel(case["input"], case["healthy"], case["anomaly"], mask, gt,
                         title=f"a   label 1   Otsu Dice {by_hand:.3f}")
    np.testing.assert_array_equal(saved, drawn)
    untitled = render_panel(case["input"], case["healthy"], case["anomaly"], mask, gt)
    differs = np.nonzero((drawn != untitled).any(axis=(1, 2)))[0]
    assert differs.size and differs.max() < 16  # the title only changes the title line
    assert (untitled[:16] == untitled[0, 0]).all()  # no title: an empty title line
    background = untitled[0, 0]
    tile, gap, caption = 128, 4, 12
    for row, n_tiles in enumerate((4, 4, 4)):
        top = 16 + gap + row * (caption + tile + gap)
        for col in range(n_tiles):
            left = gap + col * (tile + gap)
            strip = untitled[top : top + caption, left : left + tile]
            assert (strip != background).any(axis=2).sum() > 20, (row, col)  # a caption is drawn
        for col in range(n_tiles, 4):  # no caption over an empty column
            left = gap + col * (tile + gap)
            assert (untitled[top : top + caption, left : left + tile] == background).all()


def test_save_result_rejects_bad_arguments(tmp_path):
    rng = np.random.default_rng(5)
    case = _case(rng, _square_gt(30))
    with pytest.raises(ValueError, match="id 'x/y'"):
        save_result(tmp_path, "x/y", **case, label=1)
    with pytest.raises(ValueError, match="label"):
        save_result(tmp_path, "a", **case, label=2)
    with pytest.raises(ValueError, match="ground_truth: expected shape"):
        save_result(tmp_path, "a", **case, label=1, ground_truth=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="healthy: expected shape"):
        save_result(tmp_path, "a", **{**case, "healthy": case["healthy"][:2]}, label=1)
    with pytest.raises(ValueError, match="extra key 'mask'"):
        save_result(tmp_path, "a", **case, label=1, extra={"mask": np.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_is_done(tmp_path):
    assert not is_done(tmp_path, "a")
    _save(tmp_path, "a", np.random.default_rng(6), _square_gt(30))
    assert is_done(tmp_path, "a")
    (tmp_path / "a.png").unlink()
    assert not is_done(tmp_path, "a")
    _save(tmp_path, "b", np.random.default_rng(6), _square_gt(30))
    (tmp_path / "b.npz").write_bytes(b"not a zip file")
    assert not is_done(tmp_path, "b")


# ---------------------------------------------------------------- metrics


def test_metrics_csv_has_the_pinned_header_and_one_row_per_image(tmp_path):
    _populate(tmp_path)
    write_metrics(tmp_path)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "id,label,dice,auroc,auprc"
    assert tuple(lines[0].split(",")) == METRICS_COLUMNS
    assert [line.split(",")[0] for line in lines[1:]] == [
        "000247", "000248", "000249", "000250", "000251", "000252"
    ]


def test_perfect_map_scores_one(tmp_path):
    _save(tmp_path, "a", np.random.default_rng(7), _square_gt(40))
    rows, summary = compute_metrics(tmp_path, "all")
    assert rows[0]["dice"] == 1.0 and rows[0]["auroc"] == 1.0 and rows[0]["auprc"] == 1.0
    assert summary["dice"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert summary["image_auroc"] is None  # one class only


def test_paper_protocol_applies_the_20_pixel_rule(tmp_path):
    _populate(tmp_path)
    rows = {row["id"]: row for row in compute_metrics(tmp_path, "paper")[0]}
    # Dice: diseased slices (label 1) only, whatever their size.
    for image_id in ("000247", "000248", "000249", "000250"):
        assert math.isfinite(rows[image_id]["dice"])
    for image_id in ("000251", "000252"):
        assert math.isnan(rows[image_id]["dice"])
    # AUROC/AUPRC: only more than 20 tumour pixels.
    for image_id in ("000247", "000248", "000249"):
        assert math.isfinite(rows[image_id]["auroc"]) and math.isfinite(rows[image_id]["auprc"])
    for image_id in ("000250", "000251", "000252"):
        assert math.isnan(rows[image_id]["auroc"]) and math.isnan(rows[image_id]["auprc"])
    assert rows["000249"]["auroc"] == 1.0
    _, summary = compute_metrics(tmp_path, "paper")
    assert summary["dice"]["n"] == 4 and summary["auroc"]["n"] == 3 and summary["auprc"]["n"] == 3
    expected = [rows[i]["auroc"] for i in ("000247", "000248", "000249")]
    assert summary["auroc"]["mean"] == pytest.approx(np.mean(expected))
    assert summary["auroc"]["std"] == pytest.approx(np.std(expected))
    assert (summary["n_images"], summary["n_healthy"], summary["n_diseased"]) == (6, 2, 4)


def test_all_protocol_scores_every_image_with_ground_truth(tmp_path):
    _populate(tmp_path)
    rows = {row["id"]: row for row in compute_metrics(tmp_path, "all")[0]}
    assert all(math.isfinite(row["dice"]) for row in rows.values())
    assert rows["000250"]["auroc"] == 1.0  # 20 pixels count here
    # Healthy slices: AUROC undefined; Dice 0 because Otsu marks something in a noisy map.
    assert math.isnan(rows["000251"]["auroc"]) and rows["000251"]["dice"] == 0.0


def test_dice_of_empty_mask_and_empty_ground_truth_is_one(tmp_path):
    x = np.full((1, SIZE, SIZE), 0.5, dtype=np.float32)
    amap = anomaly_map(x, x)  # constant: empty Otsu mask
    save_result(tmp_path, "h", input=x, healthy=x, anomaly=amap, label=0,
                ground_truth=np.zeros((SIZE, SIZE)))
    rows, summary = compute_metrics(tmp_path, "all")
    assert rows[0]["dice"] == 1.0
    assert summary["dice"]["mean"] == 1.0
    assert summary["auroc"] == {"mean": None, "std": None, "n": 0}


def test_summary_is_valid_json_with_null_for_undefined(tmp_path):
    rng = np.random.default_rng(8)
    _save(tmp_path, "a", rng, None, label=1, channels=1)  # no ground truth at all
    summary = write_metrics(tmp_path)
    loaded = _no_bare_nan((tmp_path / "summary.json").read_text())
    assert loaded == summary
    assert loaded["dice"]["mean"] is None and loaded["pixel_auroc_pooled"] is None
    assert loaded["image_auroc"] is None and loaded["protocol"] == "paper"
    row = read_metrics(tmp_path)[0]
    assert row["id"] == "a" and row["label"] == 1
    assert all(math.isnan(row[m]) for m in ("dice", "auroc", "auprc"))
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "a,1,,,"


def test_summary_means_match_the_csv_and_pooled_and_image_scores(tmp_path):
    _populate(tmp_path)
    summary = write_metrics(tmp_path, "paper")
    rows = read_metrics(tmp_path)
    for metric in ("dice", "auroc", "auprc"):
        values = [row[metric] for row in rows if math.isfinite(row[metric])]
        assert summary[metric]["mean"] == pytest.approx(np.mean(values))
        assert summary[metric]["n"] == len(values)
    assert 0.5 < summary["pixel_auroc_pooled"] <= 1.0
    assert 0.0 < summary["pixel_auprc_pooled"] <= 1.0
    assert 0.0 <= summary["image_auroc"] <= 1.0
    assert summary["n_ground_truth"] == 6


def test_stored_mask_must_be_the_otsu_mask(tmp_path):
    _save(tmp_path, "a", np.random.default_rng(9), _square_gt(30))
    data = dict(np.load(tmp_path / "a.npz"))
    data["mask"] = ~data["mask"]
    np.savez(tmp_path / "a.npz", **data)
    with pytest.raises(ResultFileError, match=r"a\.npz: mask"):
        compute_metrics(tmp_path)


def test_unknown_protocol_and_extra_summary_clash(tmp_path):
    _save(tmp_path, "a", np.random.default_rng(10), _square_gt(30))
    with pytest.raises(ValueError, match="protocol 'miccai'"):
        compute_metrics(tmp_path, "miccai")
    with pytest.raises(ValueError, match="extra_summary key"):
        write_metrics(tmp_path, extra_summary={"dice": 1.0})


def test_format_table():
    summary = {
        "protocol": "paper",
        "protocol_description": "d",
        "n_images": 3,
        "dice": {"mean": 0.6843, "std": 0.1, "n": 2},
        "auroc": {"mean": 0.986, "std": 0.01, "n": 2},
        "auprc": {"mean": None, "std": None, "n": 0},
        "image_auroc": None,
        "flags": {"use_ddim": True, "noise_level": 500, "classifier_scale": 100},
    }
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0] == "| Method | Dice | AUROC | AUPRC | image AUROC |"
    assert lines[2] == "| DDIM, L=500, s=100 | 0.684 ± 0.100 | 0.986 ± 0.010 | n/a | n/a |"
    assert format_table(summary, method="VAE").splitlines()[2].startswith("| VAE |")


# ---------------------------------------------------------------- scripts/evaluate.py


def test_evaluate_round_trip_reproduces_the_files(tmp_path, capsys):
    _populate(tmp_path)
    write_metrics(tmp_path)
    csv_before = (tmp_path / "metrics.csv").read_bytes()
    json_before = (tmp_path / "summary.json").read_bytes()
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "summary.json").unlink()
    assert evaluate_main([str(tmp_path)]) == 0
    assert (tmp_path / "metrics.csv").read_bytes() == csv_before
    assert (tmp_path / "summary.json").read_bytes() == json_before
    table = (tmp_path / "table.md").read_text()
    assert capsys.readouterr().out == table
    assert table.startswith("| Method | Dice | AUROC | AUPRC | image AUROC |")


def test_flags_and_seconds_survive_evaluate(tmp_path, capsys):
    _populate(tmp_path)
    flags = {"noise_level": 500, "classifier_scale": 100.0, "use_ddim": True, "data_dir": "x"}
    write_metrics(tmp_path, "paper", extra_summary={"flags": flags, "seconds_per_image": 12.5})
    json_before = (tmp_path / "summary.json").read_bytes()
    assert evaluate_main([str(tmp_path)]) == 0
    assert (tmp_path / "summary.json").read_bytes() == json_before
    assert evaluate_main([str(tmp_path), "--protocol", "all"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["flags"] == flags and summary["seconds_per_image"] == 12.5
    assert summary["protocol"] == "all"
    assert "DDIM, L=500, s=100.0" in capsys.readouterr().out


def test_evaluate_user_errors(tmp_path, capsys):
    assert evaluate_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing: no such folder" in err and err.count("\n") == 1

    assert evaluate_main([str(tmp_path)]) == 2
    assert "no *.npz result files" in capsys.readouterr().err

    _save(tmp_path, "good", np.random.default_rng(11), _square_gt(30))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    assert evaluate_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.npz" in err and err.count("\n") == 1
    assert "Traceback" not in err

    (tmp_path / "broken.npz").unlink()
    (tmp_path / "summary.json").write_text("{not json")
    assert evaluate_main([str(tmp_path)]) == 2
    assert "summary.json: not valid JSON" in capsys.readouterr().err


def test_evaluate_runs_as_a_script(tmp_path):
    _save(tmp_path, "a", np.random.default_rng(12), _square_gt(30))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(tmp_path), "--protocol", "all"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| Method |" in done.stdout
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert next(csv.reader(f)) == list(METRICS_COLUMNS)
    missing = subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(tmp_path / "nope")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert "Traceback" not in missing.stderr


def test_load_result_rejects_files_missing_pinned_keys(tmp_path):
    np.savez(tmp_path / "old.npz", input=np.zeros((1, 4, 4)), anomaly=np.zeros((4, 4)))
    with pytest.raises(ResultFileError, match=r"old\.npz: missing key\(s\) healthy, mask, label"):
        load_result(tmp_path / "old.npz")
    assert evaluate_main([str(tmp_path)]) == 2


def test_save_result_accepts_torch_tensors(tmp_path):
    import torch

    case = _case(np.random.default_rng(13), _square_gt(30))
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in case.items()}
    save_result(tmp_path, "t", **tensors, label=torch.tensor(1),
                ground_truth=torch.from_numpy(_square_gt(30)))
    loaded = load_result(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded["anomaly"], case["anomaly"])
    assert loaded["label"] == 1
