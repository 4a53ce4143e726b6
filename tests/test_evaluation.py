"""Evaluation protocols, threshold rules, post-processing and bootstrap, against hand-computed values.

The fixture (``_write_test_set``) is 2 patients x 3 slices of 4x4 anomaly maps, integer-valued
so that every threshold and Dice is exact. Background pixels are 1; ``T`` marks a tumour
(ground truth) pixel. Rows top to bottom, (row, col) indices:

    patient A                               patient B
    A10 healthy   A11 tumour  A12 tumour    B10 tumour   B11 tumour  B12 healthy
    1 1 1 1       1 1 1 1     6T 6T 1 1     1 1 1 7      1  1 1 1    5 1 1 1
    1 1 1 1       1 8T 8T 1   1  1  1 1     1 1 1 1      8T 1 1 1    1 1 1 1
    1 1 1 1       1 8T 6T 1   1  1  1 1     1 1 1 1      6T 1 1 1    1 1 1 1
    1 1 1 3*      1 1 1 1     5  1  1 1     1 1 4T 4T    1  1 1 1    1 1 1 1

Slices 10, 11, 12 of each patient; ``label`` 1 where there is tumour. ``*``: the one pixel whose
input channels are all 0 (outside the brain). Tumour pixels: A 4 + 2 = 6, B 2 + 2 = 4.

Otsu per slice (two or three levels; every split is clear-cut: e.g. A11 1|6,8 has between-class
variance 12/16 * 4/16 * (7.5 - 1)^2 = 7.92 against 6.67 for 1,6|8):
A10 {3*} -> healthy slice marked, Dice 0; A11 {8,8,8,6} -> 1; A12 {6,6,5} -> 2*2/(3+2) = 4/5;
B10 {7,4,4} -> 4/5; B11 {8,6} -> 1; B12 {5} -> healthy slice marked, Dice 0.

The validation run (``_write_val_set``): patient V, V10 (tumour pixel (0,0) = 8, a 7 at (0,1),
input 0 on row 3) and V11 (healthy, a 2 at (1,1), input 0 on column 3).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from guided_diffusion.anomaly import dice
from guided_diffusion.evaluation.bootstrap import resample_weights
from guided_diffusion.evaluation.postprocess import median_filter, remove_small_components
from guided_diffusion.evaluation.ranking import ranking_scores
from guided_diffusion.evaluation.results import compute_metrics, read_metrics, save_result, write_metrics
from guided_diffusion.evaluation.thresholds import best_threshold
from guided_diffusion.util.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _map(entries: dict) -> np.ndarray:
    amap = np.ones((4, 4), dtype=np.float32)
    for (r, c), value in entries.items():
        amap[r, c] = value
    return amap


def _save(folder, image_id, amap, tumour, patient=None, slice=None, outside=()):
    gt = np.zeros((4, 4), dtype=np.uint8)
    for r, c in tumour:
        gt[r, c] = 1
    x = np.full((4, 4, 4), 0.5, dtype=np.float32)
    for r, c in outside:
        x[:, r, c] = 0.0
    save_result(folder, image_id, input=x, healthy=x, anomaly=amap, label=int(gt.any()), ground_truth=gt,
                patient=patient, slice=slice)


TEST_SET = {
    # id: (patient, slice, map, tumour pixels, pixels outside the brain)
    "A10": ("A", 10, {(3, 3): 3}, (), ((3, 3),)),
    "A11": ("A", 11, {(1, 1): 8, (1, 2): 8, (2, 1): 8, (2, 2): 6}, ((1, 1), (1, 2), (2, 1), (2, 2)), ()),
    "A12": ("A", 12, {(0, 0): 6, (0, 1): 6, (3, 0): 5}, ((0, 0), (0, 1)), ()),
    "B10": ("B", 10, {(3, 2): 4, (3, 3): 4, (0, 3): 7}, ((3, 2), (3, 3)), ()),
    "B11": ("B", 11, {(1, 0): 8, (2, 0): 6}, ((1, 0), (2, 0)), ()),
    "B12": ("B", 12, {(0, 0): 5}, (), ()),
}


def _write_test_set(folder, patients=True):
    for image_id, (patient, z, entries, tumour, outside) in TEST_SET.items():
        _save(folder, image_id, _map(entries), tumour, patient if patients else None, z if patients else None,
              outside)
    return folder


def _write_val_set(folder):
    _save(folder, "V10", _map({(0, 0): 8, (0, 1): 7}), ((0, 0),), "V", 10, [(3, c) for c in range(4)])
    _save(folder, "V11", _map({(1, 1): 2}), (), "V", 11, [(r, 3) for r in range(4)])
    return folder


@pytest.fixture
def test_set(tmp_path):
    return _write_test_set(tmp_path / "test")


@pytest.fixture
def val_set(tmp_path):
    return _write_val_set(tmp_path / "val")


def _dice_of(rows):
    return {row["id"]: row["dice"] for row in rows}


def approx(value):
    return pytest.approx(float(value), rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ protocols under Otsu


def test_paper_protocol_with_otsu(test_set):
    """paper: Dice over the diseased slices A11, A12, B10, B11 = (1 + 4/5 + 4/5 + 1) / 4 = 0.9;
    no slice has more than 20 tumour pixels (of 16), so per-slice AUROC/AUPRC score none."""
    rows, s = compute_metrics(test_set, "paper")
    assert _dice_of(rows) == {"A10": pytest.approx(np.nan, nan_ok=True), "A11": 1.0, "A12": approx(F(4, 5)),
                              "B10": approx(F(4, 5)), "B11": 1.0, "B12": pytest.approx(np.nan, nan_ok=True)}
    assert s["dice"] == {"mean": approx(F(9, 10)), "std": approx(0.1), "n": 4}
    assert s["auroc"]["n"] == 0 and s["auprc"]["n"] == 0
    assert (s["threshold_rule"], s["threshold"]) == ("otsu", None)


def test_slice_protocol_scores_healthy_slices(test_set):
    """slice: all six slices; the healthy A10 and B12 are marked by Otsu (Dice 0):
    (0 + 1 + 4/5 + 4/5 + 1 + 0) / 6 = 0.6. healthy_fp_rate = 2/2. ``all`` is the same."""
    rows, s = compute_metrics(test_set, "slice")
    assert _dice_of(rows) == {"A10": 0.0, "A11": 1.0, "A12": approx(F(4, 5)), "B10": approx(F(4, 5)),
                              "B11": 1.0, "B12": 0.0}
    assert s["dice"]["mean"] == approx(F(3, 5)) and s["dice"]["n"] == 6
    assert s["healthy_fp_rate"] == 1.0 and s["n_healthy_slices"] == 2
    rows_all, s_all = compute_metrics(test_set, "all")
    assert rows_all == rows and s_all["dice"] == s["dice"] and s_all["protocol"] == "all"


def test_volume_protocol_with_otsu(test_set, tmp_path):
    """volume: the per-slice Otsu masks stacked. A: marked A10 {3*}, A11 4, A12 3 = 8 voxels, 6 of
    them tumour (of 6): Dice 2*6/(8+6) = 6/7. B: B10 3, B11 2, B12 1 = 6, 4 tumour (of 4): 8/10 = 4/5.
    Mean 29/35, std (6/7 - 4/5)/2 = 1/35. metrics_volume.csv holds the two patients."""
    s = write_metrics(test_set, "volume")
    assert s["dice"] == {"mean": approx(F(29, 35)), "std": approx(F(1, 35)), "n": 2}
    assert s["n_patients"] == 2 and s["postprocessing"]["neighbourhood"] == "3-D"
    with open(test_set / "metrics_volume.csv", newline="") as f:
        patients = list(csv.DictReader(f))
    assert [(p["patient"], p["n_slices"], p["lesion_voxels"]) for p in patients] == [("A", "3", "6"), ("B", "3", "4")]
    assert float(patients[0]["dice"]) == approx(F(6, 7)) and float(patients[1]["dice"]) == approx(F(4, 5))
    # SPEC 6a's five columns first, then where each slice comes from (the README's patient,slice)
    lines = (test_set / "metrics.csv").read_text().splitlines()
    assert lines[0] == "id,label,dice,auroc,auprc,patient,slice"
    assert [line.split(",")[-2:] for line in lines[1:]] == [["A", "10"], ["A", "11"], ["A", "12"], ["B", "10"],
                                                          ["B", "11"], ["B", "12"]]
    assert [(r["patient"], r["slice"]) for r in read_metrics(test_set)][::3] == [("A", 10), ("B", 10)]
    write_metrics(test_set, "slice")  # a later slice evaluation removes the stale per-patient table
    assert not (test_set / "metrics_volume.csv").exists()


def test_volume_needs_patient_keys(tmp_path):
    """Files without patient/slice keys (older runs) score under slice, not volume."""
    folder = _write_test_set(tmp_path / "old", patients=False)
    assert compute_metrics(folder, "slice")[1]["dice"]["mean"] == approx(F(3, 5))
    write_metrics(folder, "slice")  # nothing to locate: exactly SPEC 6a's columns
    assert (folder / "metrics.csv").read_text().splitlines()[0] == "id,label,dice,auroc,auprc"
    assert read_metrics(folder)[0]["patient"] is None
    with pytest.raises(UserError, match=r"--protocol volume: .*A10\.npz has no patient and slice keys"):
        compute_metrics(folder, "volume")


# ------------------------------------------------------------------ threshold rules


def test_best_threshold_slice(test_set):
    """best, slice (candidates: the tumour values 8, 6, 4; a pixel is positive when >= candidate):
    >= 8: A10 1, A11 2*3/7 = 6/7, A12 0, B10 0, B11 2/3, B12 1 -> 37/63;
    >= 6: A10 1, A11 1, A12 1, B10 0 (only the 7), B11 1, B12 1 -> 5/6;
    >= 4: 1, 1, 4/5, 4/5, 1, 0 -> 23/30; nothing: 2/6.
    Best: >= 6, threshold halfway to the next lower value present (5): 5.5. Labelled oracle."""
    rows, s = compute_metrics(test_set, "slice", threshold="best")
    assert s["threshold"] == 5.5 and s["threshold_rule"] == "best"
    assert s["dice"]["mean"] == approx(F(5, 6)) and s["threshold_fit"]["mean_dice"] == approx(F(5, 6))
    assert s["threshold_fit"]["candidates"] == 3 and "oracle" in s["threshold_description"]
    assert s["healthy_fp_rate"] == 0.0


def test_best_threshold_paper_and_volume(test_set):
    """paper + best (units A11, A12, B10, B11): >= 8: (6/7 + 0 + 0 + 2/3)/4 = 8/21; >= 6: 3/4;
    >= 4: 0.9 -> best >= 4, next lower value in these slices 1: threshold 2.5, Dice 0.9.
    volume + best: >= 8: A 2*3/(3+6) = 2/3, B 2/5 -> 8/15; >= 6: A 12/12 = 1, B (7, 8, 6) 4/7 -> 11/14;
    >= 4: A (8 voxels but the 3) 12/13, B (4,4,7,8,6,5) 8/10 -> 56/65 -> best >= 4, threshold
    (3 + 4)/2 = 3.5 (A10's 3 is in patient A's volume)."""
    _, paper = compute_metrics(test_set, "paper", threshold="best")
    assert paper["threshold"] == 2.5 and paper["dice"]["mean"] == approx(F(9, 10))
    _, volume = compute_metrics(test_set, "volume", threshold="best")
    assert volume["threshold"] == 3.5 and volume["dice"]["mean"] == approx(F(56, 65))


def test_val_threshold_is_fitted_on_the_validation_run(test_set, val_set):
    """val: on the validation run, >= 8 marks exactly V10's tumour pixel (Dice 1 and 1, mean 1;
    nothing: 1/2), the next lower value is V10's 7: threshold 7.5. Applied unchanged to the
    test set, > 7.5 is the ">= 8" column above: slice 37/63, volume 8/15 (A 2/3, B 2/5).
    auto with --val_dir is val for slice and volume."""
    _, s = compute_metrics(test_set, "slice", threshold="val", val_dir=str(val_set))
    assert s["threshold"] == 7.5 and s["dice"]["mean"] == approx(F(37, 63))
    assert s["threshold_fit"] == {"set": str(val_set), "mean_dice": 1.0, "candidates": 1}
    _, v = compute_metrics(test_set, "volume", val_dir=str(val_set))  # threshold auto
    assert v["threshold_rule"] == "val" and v["threshold"] == 7.5 and v["dice"]["mean"] == approx(F(8, 15))


def test_fpr_threshold_on_healthy_brain_pixels(test_set, val_set):
    """fpr: healthy validation pixels inside the brain: V10 rows 0-2 without the tumour pixel
    (11: one 7, ten 1), V11 columns 0-2 (12: one 2, eleven 1): n = 23.
    --fpr 0.05: k = floor(1.15) = 1 pixel may be above: threshold = 2nd largest = 2 (1/23 above).
    Test masks > 2: A10 {3} (Dice 0), A11 1, A12 4/5, B10 4/5, B11 1, B12 {5} 0 -> 0.6, both
    healthy slices marked. --fpr 0.01: k = 0, threshold 7 (the largest): > 7 -> 37/63."""
    _, s = compute_metrics(test_set, "slice", threshold="fpr", val_dir=str(val_set), fpr=0.05)
    assert s["threshold"] == 2.0 and s["dice"]["mean"] == approx(F(3, 5)) and s["healthy_fp_rate"] == 1.0
    assert s["threshold_fit"]["pixels"] == 23 and s["threshold_fit"]["fpr_achieved"] == approx(F(1, 23))
    _, default = compute_metrics(test_set, "slice", threshold="fpr", val_dir=str(val_set))
    assert default["threshold"] == 7.0 and default["dice"]["mean"] == approx(F(37, 63))


def test_a_given_threshold_is_applied_unchanged(test_set):
    """--threshold 5.5 (a number, as a bundle holds it): the ">= 6" column of test_best_threshold_slice,
    5/6, with no search; --threshold 7.5 is val's ">= 8" column, 37/63. Text that is neither a rule
    nor a number is refused."""
    _, s = compute_metrics(test_set, "slice", threshold="5.5")
    assert (s["threshold_rule"], s["threshold"], s["threshold_fit"]) == ("fixed", 5.5, None)
    assert s["dice"]["mean"] == approx(F(5, 6)) and "5.5, given" in s["threshold_description"]
    assert compute_metrics(test_set, "slice", threshold="7.5")[1]["dice"]["mean"] == approx(F(37, 63))
    with pytest.raises(UserError, match="--threshold 'high'"):
        compute_metrics(test_set, "slice", threshold="high")
    # tune.py's test translation and evaluate.py line keep a given number (there is no rule named "fixed")
    from guided_diffusion.pipeline.tune import TuneConfig, applied_evaluation
    from guided_diffusion.util.flagspec import parse_flags
    tuning = parse_flags(TuneConfig, ["--out", "o", "--protocol", "volume", "--threshold", "5.5"])
    assert applied_evaluation(tuning, "val_folder").threshold == "5.5"


def test_threshold_flags_are_checked(test_set, val_set):
    with pytest.raises(UserError, match="--threshold val: needs --val_dir"):
        compute_metrics(test_set, "volume", threshold="val")
    with pytest.raises(UserError, match="--val_dir .*: only --threshold val or fpr use it"):
        compute_metrics(test_set, "slice", threshold="best", val_dir=str(val_set))
    with pytest.raises(UserError, match="--fpr 1.5"):
        compute_metrics(test_set, "slice", threshold="fpr", val_dir=str(val_set), fpr=1.5)
    with pytest.raises(UserError, match="--median 4"):
        compute_metrics(test_set, "slice", median=4)


# ------------------------------------------------------------------ post-processing


def test_brain_mask(test_set):
    """--brain_mask: A10's 3* is outside the brain, so Otsu sees A10's 15 brain pixels (all 1,
    constant): nothing marked, Dice 1. slice: (1 + 1 + 4/5 + 4/5 + 1 + 0)/6 = 23/30; healthy
    slices marked: B12 only, 1/2."""
    _, s = compute_metrics(test_set, "slice", brain_mask=True)
    assert s["dice"]["mean"] == approx(F(23, 30)) and s["healthy_fp_rate"] == 0.5
    assert s["postprocessing"]["brain_mask"] is True


def test_median_2d_per_slice_and_3d_for_volume(test_set):
    """--median 3, 2-D (reflecting edges): a pixel keeps a value above 1 only when 5 of its 9
    window values are. A corner pixel counts itself 4 times and its two edge neighbours twice:
    A12's (0,0) (6, with (0,1) = 6) and B10's (3,3) (4, with (3,2) = 4) survive; every other
    non-1 pixel, A11's 2x2 block included (4 of 9 in every window), becomes 1.
    Otsu: A10, A11, B11, B12 constant (nothing marked): 1, 0, 0, 1; A12 {(0,0)}: 2/3; B10 {(3,3)}:
    2/3 -> slice mean (1 + 0 + 2/3 + 2/3 + 0 + 1)/6 = 5/9.
    volume, 3-D (27 values, 14 needed): the most, 13, is at A12 (0,0) (A12 counted twice: 12,
    plus A11's (1,1)); every map becomes constant 1, nothing is marked: Dice 0 for A and B
    (2-D filtering would have given A 2/7 and B 2/5)."""
    _, s = compute_metrics(test_set, "slice", median=3)
    assert s["dice"]["mean"] == approx(F(5, 9)) and s["healthy_fp_rate"] == 0.0
    _, v = compute_metrics(test_set, "volume", median=3)
    assert v["dice"] == {"mean": 0.0, "std": 0.0, "n": 2}


def test_min_component_2d_and_3d(test_set):
    """--min_component on the Otsu masks. 2-D components (8-connected) per slice: A10 {3*} 1,
    A11 block 4, A12 {6,6} 2 and {5} 1, B10 {4,4} 2 and {7} 1, B11 {8,6} 2, B12 {5} 1.
    N = 2 drops the single pixels: every slice becomes perfect, mean 1. N = 3 also drops the pairs:
    1, 1, 0, 0, 0, 1 -> 1/2.
    volume, N = 3, 26-connected in 3-D: A's 8 marked voxels are one component (A10 (3,3) touches
    A11 (2,2) diagonally, A11 (1,1) touches A12 (0,0), A11 (2,1) touches A12 (3,0)): kept, 6/7.
    B: B11 {8,6} joins B12 (0,0) (3 voxels: kept), B10 {4,4} (2) and {7} (1) dropped: 2 tumour
    voxels of 3 marked, 4 in truth: 4/7. Mean (6/7 + 4/7)/2 = 5/7."""
    _, two = compute_metrics(test_set, "slice", min_component=2)
    assert two["dice"]["mean"] == 1.0 and two["healthy_fp_rate"] == 0.0
    _, three = compute_metrics(test_set, "slice", min_component=3)
    assert three["dice"]["mean"] == approx(F(1, 2))
    _, v = compute_metrics(test_set, "volume", min_component=3)
    assert v["dice"]["mean"] == approx(F(5, 7))


def test_median_filter_equals_scipy():
    """The vectorised median is scipy.ndimage.median_filter(mode="reflect") exactly: 2-D per slice
    and 3-D, odd sizes, ties (integer values) and windows larger than the image."""
    rng = np.random.default_rng(0)
    for shape, size in (((3, 9, 7), 3), ((5, 6, 8), 5), ((2, 4, 4), 7), ((1, 5, 5), 3)):
        maps = rng.integers(0, 4, size=shape).astype(np.float32)
        maps[0, 0, 0] = 2.5
        np.testing.assert_array_equal(median_filter(maps, size, volumetric=True),
                                      ndimage.median_filter(maps, size=size, mode="reflect"))
        np.testing.assert_array_equal(median_filter(maps, size, volumetric=False),
                                      ndimage.median_filter(maps, size=(1, size, size), mode="reflect"))


def test_remove_small_components_connectivity():
    """Two diagonal pixels are one component (8-connected) in 2-D; two pixels in adjacent slices
    touching diagonally are one component only in 3-D (26-connected)."""
    mask = np.zeros((2, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal in one slice: size 2
    mask[1, 3, 3] = True  # alone in 2-D; in 3-D it touches nothing of slice 0
    kept = remove_small_components(mask, 2, volumetric=False)
    assert kept[0, 0, 0] and kept[0, 1, 1] and not kept[1, 3, 3]
    mask[0, 2, 2] = True  # now slice 0's (2,2) touches slice 1's (3,3) diagonally in 3-D
    assert remove_small_components(mask, 4, volumetric=True).sum() == 4
    assert remove_small_components(mask, 3, volumetric=False).sum() == 3  # slice 0's 3-pixel chain


# ------------------------------------------------------------------ pooled and per-patient ranking


def test_pooled_auprc_and_auroc_by_hand_and_sklearn(test_set):
    """Tumour values: 8 x4, 6 x4, 4 x2 (P = 10); the other 86 pixels: one 7, two 5, one 3, 1s.
    AP: at >= 8 precision 4/4, recall 0.4; >= 6: 8/9, +0.4; >= 4: 10/13, +0.2
    -> 0.4 + 0.4 * 8/9 + 0.2 * 10/13 = 532/585. AUROC: (4*86 + 4*85 + 2*83)/(10*86) = 85/86.
    Both equal scikit-learn on the concatenated pixels. Per patient (volume): A's tumour values
    (8,8,8,6,6,6) lie above all its others (largest 5): AP 1, AUROC 1; B: AP 1/4 + 1/4 * 2/3 +
    2/4 * 4/6 = 3/4, AUROC (44 + 43 + 2*42)/(4*44) = 171/176."""
    _, s = compute_metrics(test_set, "slice")
    maps = np.stack([_map(e) for _, _, e, _, _ in TEST_SET.values()]).ravel()
    truth = np.zeros((6, 4, 4), bool)
    for i, (_, _, _, tumour, _) in enumerate(TEST_SET.values()):
        for r, c in tumour:
            truth[i, r, c] = True
    truth = truth.ravel()
    assert s["auprc_pooled"] == approx(F(532, 585)) == average_precision_score(truth, maps)
    assert s["auroc_pooled"] == approx(F(85, 86)) == roc_auc_score(truth, maps)
    assert s["pixel_auprc_pooled"] == s["auprc_pooled"] and s["pixel_auroc_pooled"] == s["auroc_pooled"]
    write_metrics(test_set, "volume")
    with open(test_set / "metrics_volume.csv", newline="") as f:
        a, b = list(csv.DictReader(f))
    assert (float(a["auprc"]), float(a["auroc"])) == (1.0, 1.0)
    assert float(b["auprc"]) == approx(F(3, 4)) and float(b["auroc"]) == approx(F(171, 176))


def test_ranking_matches_sklearn_on_random_pixels_with_ties():
    """Pooled, per-cluster and weighted (a resample) AP/AUROC equal scikit-learn's, with
    sample_weight for the resample, on quantised random maps (many ties between classes)."""
    rng = np.random.default_rng(1)
    clusters = []
    for n in (500, 300, 800):
        truth = rng.random(n) < 0.2
        values = np.round(rng.random(n) + 0.5 * truth, 2).astype(np.float32)
        clusters.append((values, truth))
    weights = np.array([[2, 0, 1], [0, 3, 0]])
    pos = [v[t].copy() for v, t in clusters]
    neg = [v[~t].copy() for v, t in clusters]
    ranking = ranking_scores(pos, neg, weights)
    values = np.concatenate([v for v, _ in clusters])
    truth = np.concatenate([t for _, t in clusters])
    assert ranking.auprc == pytest.approx(average_precision_score(truth, values), rel=1e-12)
    assert ranking.auroc == pytest.approx(roc_auc_score(truth, values), rel=1e-12)
    for c, (v, t) in enumerate(clusters):
        assert ranking.cluster_auprc[c] == pytest.approx(average_precision_score(t, v), rel=1e-12)
        assert ranking.cluster_auroc[c] == pytest.approx(roc_auc_score(t, v), rel=1e-12)
    for b, row in enumerate(weights):
        pixel_weight = np.concatenate([np.full(v.size, w) for (v, _), w in zip(clusters, row)])
        expected = average_precision_score(truth, values, sample_weight=pixel_weight)
        assert ranking.auprc_resampled[b] == pytest.approx(expected, rel=1e-6)


def test_best_threshold_matches_brute_force():
    """The exact search reaches the best mean Dice over every possible threshold on random units."""
    rng = np.random.default_rng(2)
    units = []
    for _ in range(5):
        amap = np.round(rng.random((1, 6, 6)) * 8).astype(np.float32)
        gt = rng.random((1, 6, 6)) < (0.3 if rng.random() < 0.7 else 0.0)
        units.append((amap, gt, None))
    result = best_threshold(units)
    values = np.unique(np.concatenate([m.ravel() for m, _, _ in units]))
    tries = np.concatenate([values - 0.5, values])
    brute = max(np.mean([dice(m > t, g) for m, g, _ in units]) for t in tries)
    assert result.mean_dice == pytest.approx(brute, abs=1e-12)
    assert np.mean([dice(m > result.threshold, g) for m, g, _ in units]) == pytest.approx(brute, abs=1e-12)


def test_best_threshold_ties_go_to_the_highest():
    """One unit: tumour pixels 8 and 6, two other pixels 6, the rest 1 (G = 2).
    >= 8: 2*1/(1+2) = 2/3; >= 6: 2*2/(4+2) = 2/3; >= 1 (all 16): 2*2/(16+2) = 2/9. The tie goes to
    the highest threshold, halfway between 8 and the next lower value 6: 7."""
    amap = _map({(0, 0): 8, (0, 1): 6, (0, 2): 6, (0, 3): 6})[None]
    gt = np.zeros((1, 4, 4), dtype=bool)
    gt[0, 0, :2] = True
    result = best_threshold([(amap, gt, None)])
    assert result.threshold == 7.0 and result.mean_dice == approx(F(2, 3)) and result.candidates == 2


def test_dice_agrees_with_torchmetrics_on_random_masks():
    """anomaly.dice against torchmetrics' dice_score (foreground class of an index mask) on
    random 2-D slices and 3-D volumes."""
    from torchmetrics.functional.segmentation import dice_score

    rng = np.random.default_rng(3)
    for shape in ((16, 16), (5, 12, 12), (3, 7, 9)):
        for fraction in (0.05, 0.3, 0.7):
            mask = rng.random(shape) < fraction
            gt = rng.random(shape) < 0.2
            gt.flat[0] = True  # never both empty (torchmetrics gives NaN there, we 1.0)
            expected = dice_score(torch.from_numpy(mask[None].astype(np.int64)),
                                  torch.from_numpy(gt[None].astype(np.int64)),
                                  num_classes=2, include_background=False, input_format="index")
            assert dice(mask, gt) == pytest.approx(float(expected), rel=1e-6)


# ------------------------------------------------------------------ strata, bootstrap


def test_dice_by_size_quartiles(test_set):
    """slice, Otsu: lesion sizes 4 (A11, Dice 1), 2, 2, 2 (A12 4/5, B10 4/5, B11 1): quartile edges
    (0/25/50/75/100th percentiles) 2, 2, 2, 2.5, 4; sizes <= 2 go to the first quartile
    ((4/5 + 4/5 + 1)/3 = 13/15), 4 to the last (1). volume: 4 voxels (B, 4/5) and 6 (A, 6/7):
    edges 4, 4.5, 5, 5.5, 6."""
    _, s = compute_metrics(test_set, "slice")
    by_size = s["dice_by_size"]
    assert by_size["edges"] == [2.0, 2.0, 2.0, 2.5, 4.0] and by_size["n"] == [3, 0, 0, 1]
    assert by_size["mean"][0] == approx(F(13, 15)) and by_size["mean"][1:] == [None, None, 1.0]
    _, v = compute_metrics(test_set, "volume")
    assert v["dice_by_size"]["edges"] == [4.0, 4.5, 5.0, 5.5, 6.0] and v["dice_by_size"]["unit"] == "voxels"
    assert v["dice_by_size"]["mean"] == [0.8, None, None, approx(F(6, 7))]


def test_bootstrap_over_two_patients(test_set):
    """With two patients a resample is AA, AB or BB (probabilities 1/4, 1/2, 1/4), so with 1000
    resamples the 2.5th and 97.5th percentiles are the BB and AA values. volume, Otsu: Dice
    [4/5, 6/7]; pooled AP: AA -> A's 1, BB -> B's 3/4, AB -> 532/585: [3/4, 1].
    slice with --brain_mask: A's slices (1, 1, 4/5) -> 14/15, B's (4/5, 1, 0) -> 3/5: [3/5, 14/15]."""
    _, v = compute_metrics(test_set, "volume", bootstrap=1000, seed=0)
    assert v["dice"]["ci95"] == [approx(F(4, 5)), approx(F(6, 7))]
    assert v["auprc_pooled_ci95"] == [pytest.approx(0.75, rel=1e-6), pytest.approx(1.0, rel=1e-6)]
    assert v["bootstrap"] == {"n": 1000, "seed": 0, "unit": "patient", "units": 2}
    _, s = compute_metrics(test_set, "slice", bootstrap=1000, seed=0, brain_mask=True)
    assert s["dice"]["ci95"] == [approx(F(3, 5)), approx(F(14, 15))]


def test_bootstrap_same_seed_same_interval(tmp_path):
    """Without patient keys the bootstrap resamples images; the same seed gives the same
    intervals, another seed other resamples."""
    folder = _write_test_set(tmp_path / "old", patients=False)
    first = compute_metrics(folder, "slice", bootstrap=200, seed=7)[1]
    again = compute_metrics(folder, "slice", bootstrap=200, seed=7)[1]
    assert first["bootstrap"]["unit"] == "image" and first["bootstrap"]["units"] == 6
    assert first["dice"]["ci95"] == again["dice"]["ci95"] is not None
    assert first["auprc_pooled_ci95"] == again["auprc_pooled_ci95"] is not None
    np.testing.assert_array_equal(resample_weights(6, 200, 7), resample_weights(6, 200, 7))
    assert not np.array_equal(resample_weights(6, 200, 7), resample_weights(6, 200, 8))


def test_images_without_ground_truth(tmp_path):
    """CheXpert-like: labels only. Healthy: H1 all 1 (Otsu marks nothing), H2 one pixel 3 (marked);
    diseased: D1 one pixel 5, D2 one pixel 2. healthy_fp_rate 1/2. image score (99th percentile
    of 16 values, 1 + 0.85 * (spike - 1)): H1 1, H2 2.7, D1 4.4, D2 1.85 -> image AUROC: 3 of the
    4 (diseased, healthy) pairs ordered = 3/4. No Dice, no pooled AUPRC, so no interval."""
    for image_id, spike, label in (("H1", 1, 0), ("H2", 3, 0), ("D1", 5, 1), ("D2", 2, 1)):
        x = np.full((1, 4, 4), 0.5, dtype=np.float32)
        save_result(tmp_path, image_id, input=x, healthy=x, anomaly=_map({(1, 1): spike}), label=label)
    _, s = compute_metrics(tmp_path, "slice", bootstrap=100)
    assert s["healthy_fp_rate"] == 0.5 and s["image_auroc"] == 0.75
    assert s["dice"] == {"mean": None, "std": None, "n": 0} and s["auprc_pooled"] is None
    assert s["auprc_pooled_ci95"] is None and s["bootstrap"]["unit"] == "image"


# ------------------------------------------------------------------ scripts


def test_evaluate_script_with_the_new_flags(test_set, val_set, capsys):
    evaluate = _script("evaluate")
    assert evaluate([str(test_set), "--protocol", "volume", "--threshold", "val", "--val_dir", str(val_set),
                     "--brain_mask", "True", "--min_component", "2", "--bootstrap", "50", "--seed", "1"]) == 0
    summary = json.loads((test_set / "summary.json").read_text())
    assert summary["protocol"] == "volume" and summary["threshold"] == 7.5
    assert summary["postprocessing"] == {"brain_mask": True, "median": 0, "min_component": 2,
                                         "neighbourhood": "3-D"}
    assert summary["bootstrap"]["n"] == 50 and "ci95" in summary["dice"]
    out = capsys.readouterr().out
    assert "Threshold: val 7.5" in out and "brain mask, components under 2 dropped" in out
    assert evaluate([str(test_set), "--protocol", "volume", "--median", "3"]) == 0
    assert "3-D median 3" in capsys.readouterr().out
    assert evaluate([str(test_set), "--protocol", "slice", "--threshold", "best"]) == 0
    assert "| Method | Dice (oracle) |" in capsys.readouterr().out
    assert evaluate([str(test_set), "--threshold", "fpr"]) == 2
    assert "error: --threshold fpr: needs --val_dir" in capsys.readouterr().err
    assert evaluate([str(test_set), "--threshold", "median"]) == 2
    assert "error: --threshold 'median': expected one of" in capsys.readouterr().err
    old = _write_test_set(test_set.parent / "old", patients=False)
    assert evaluate([str(old), "--protocol", "volume"]) == 2
    assert "has no patient and slice keys" in capsys.readouterr().err


def test_compare_scores_every_run_alike(test_set, val_set, tmp_path):
    """compare.py rescores each run under the flags given (here the oracle), shows the protocol
    and the rule, and takes one validation folder per run for val."""
    other = _write_test_set(tmp_path / "other")
    write_metrics(test_set, extra_summary={"method": "M1"})
    write_metrics(other, extra_summary={"method": "M2"})
    compare = _script("compare")
    written = compare([str(test_set), str(other), "--out", str(tmp_path / "cmp"), "--examples", "0",
                       "--protocol", "slice", "--threshold", "best"])
    header, _, row, *_ = written["table"].splitlines()
    assert header.startswith("| Method | Protocol | Threshold | Dice (oracle) |")
    assert row.startswith("| M1 | slice | best (oracle) 5.5 | 0.833 ± ")
    with open(tmp_path / "cmp" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["threshold_rule"] == "best" and float(rows[0]["dice_mean"]) == approx(F(5, 6))
    assert json.loads((test_set / "summary.json").read_text())["protocol"] == "paper"  # run folders untouched
    written = compare([str(test_set), str(other), "--out", str(tmp_path / "cmp2"), "--examples", "0",
                       "--protocol", "volume", "--threshold", "val", "--val_dir", f"{val_set},{val_set}"])
    assert "| M2 | volume | val 7.5 | 0.533 ± " in written["table"]
    assert f"on the validation run {val_set}." in written["table"]  # one folder for both: named
    shutil.copytree(val_set, tmp_path / "val2")
    written = compare([str(test_set), str(other), "--out", str(tmp_path / "cmp4"), "--examples", "0",
                       "--protocol", "volume", "--threshold", "val", "--val_dir", f"{val_set},{tmp_path / 'val2'}"])
    assert "mean Dice on each run's own validation folder (--val_dir)." in written["table"]
    assert str(val_set) not in written["table"]
    with pytest.raises(UserError, match="--val_dir .*: expected 2 validation folders"):
        compare([str(test_set), str(other), "--out", str(tmp_path / "cmp3"), "--threshold", "val",
                 "--val_dir", str(val_set)])
