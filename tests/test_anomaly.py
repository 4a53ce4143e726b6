"""Anomaly map, Otsu mask and the per-image metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from guided_diffusion.anomaly import (
    IMAGE_SCORE_PERCENTILE,
    anomaly_map,
    dice,
    image_score,
    otsu_mask,
    pixel_auprc,
    pixel_auroc,
)


def test_anomaly_map_sums_absolute_difference_over_channels():
    x = np.array([[[1.0, 0.0]], [[0.5, 0.25]]])  # (C=2, H=1, W=2)
    healthy = np.array([[[0.0, 0.5]], [[1.0, 0.25]]])
    amap = anomaly_map(x, healthy)
    assert isinstance(amap, np.ndarray)
    np.testing.assert_allclose(amap, [[1.0 + 0.5, 0.5 + 0.0]])


def test_anomaly_map_batched_and_torch():
    rng = np.random.default_rng(0)
    x, healthy = rng.random((3, 4, 5, 6)), rng.random((3, 4, 5, 6))
    amap = anomaly_map(x, healthy)
    assert amap.shape == (3, 5, 6)
    np.testing.assert_allclose(amap[1], anomaly_map(x[1], healthy[1]))
    amap_t = anomaly_map(torch.from_numpy(x), torch.from_numpy(healthy))
    assert isinstance(amap_t, torch.Tensor) and amap_t.shape == (3, 5, 6)
    np.testing.assert_allclose(amap_t.numpy(), amap)


def test_anomaly_map_integer_inputs_do_not_wrap():
    x = np.zeros((1, 1, 1), dtype=np.uint8)
    healthy = np.full((1, 1, 1), 3, dtype=np.uint8)
    assert anomaly_map(x, healthy)[0, 0] == 3


def test_anomaly_map_rejects_bad_inputs():
    with pytest.raises(TypeError, match="both be numpy arrays or both torch tensors"):
        anomaly_map(np.zeros((1, 2, 2)), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="expected equal shapes"):
        anomaly_map(np.zeros((1, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        anomaly_map(np.zeros((2, 2)), np.zeros((2, 2)))


def test_otsu_mask_separates_a_bimodal_map():
    rng = np.random.default_rng(1)
    amap = 0.1 + 0.02 * rng.random((32, 32))
    amap[8:16, 4:20] = 0.9 + 0.02 * rng.random((8, 16))
    expected = np.zeros((32, 32), dtype=bool)
    expected[8:16, 4:20] = True
    mask = otsu_mask(amap)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    mask_t = otsu_mask(torch.from_numpy(amap))
    assert isinstance(mask_t, torch.Tensor) and mask_t.dtype == torch.bool
    np.testing.assert_array_equal(mask_t.numpy(), expected)


def test_otsu_mask_of_a_constant_map_is_empty():
    mask = otsu_mask(np.full((5, 5), 0.3))
    assert mask.shape == (5, 5) and not mask.any()


def test_otsu_mask_is_the_same_for_float64_and_float32_maps():
    amap = np.random.default_rng(2).random((64, 64))
    np.testing.assert_array_equal(otsu_mask(amap), otsu_mask(amap.astype(np.float32)))


def test_otsu_mask_rejects_nan():
    amap = np.zeros((3, 3))
    amap[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        otsu_mask(amap)


def test_dice_hand_values():
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True  # 4 pixels
    assert dice(gt, gt) == 1.0
    assert dice(~gt, gt) == 0.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :3] = True  # 6 pixels, 4 of them in gt
    assert dice(mask, gt) == pytest.approx(2 * 4 / (6 + 4))


def test_dice_matches_the_formula_on_random_masks():
    rng = np.random.default_rng(3)
    mask, gt = rng.random((16, 16)) > 0.6, rng.random((16, 16)) > 0.7
    expected = 2 * np.logical_and(mask, gt).sum() / (mask.sum() + gt.sum())
    assert dice(mask, gt) == pytest.approx(expected)
    assert dice(torch.from_numpy(mask), gt.astype(np.uint8)) == pytest.approx(expected)


def test_dice_empty_masks():
    empty, some = np.zeros((3, 3)), np.eye(3)
    assert dice(empty, empty) == 1.0  # both empty: documented convention
    assert dice(some, empty) == 0.0
    assert dice(empty, some) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_pixel_auroc_perfect_inverted_and_hand_value():
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    perfect = gt.astype(np.float64)
    assert pixel_auroc(perfect, gt) == 1.0
    assert pixel_auroc(1.0 - perfect, gt) == 0.0
    assert pixel_auprc(perfect, gt) == 1.0
    # Of the 4 (positive, negative) pairs, 3 are ordered correctly: AUROC 3/4.
    scores = np.array([[0.1, 0.4], [0.35, 0.8]])
    labels = np.array([[0, 0], [1, 1]])
    assert pixel_auroc(scores, labels) == pytest.approx(0.75)
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3.
    assert pixel_auprc(scores, labels) == pytest.approx(0.5 + 1 / 3)


def test_pixel_metrics_are_nan_for_one_class():
    amap = np.random.default_rng(4).random((4, 4))
    for gt in (np.zeros((4, 4)), np.ones((4, 4))):
        assert math.isnan(pixel_auroc(amap, gt))
        assert math.isnan(pixel_auprc(amap, gt))


def test_image_score_is_a_high_percentile():
    amap = np.arange(101, dtype=np.float32).reshape(1, 101)
    assert image_score(amap) == pytest.approx(IMAGE_SCORE_PERCENTILE)
    assert image_score(torch.from_numpy(amap)) == pytest.approx(IMAGE_SCORE_PERCENTILE)


def test_bfloat16_tensors_are_accepted():
    amap = torch.zeros(4, 4, dtype=torch.bfloat16)
    amap[1:3, 1:3] = 1.0
    assert otsu_mask(amap).sum().item() == 4
    assert dice(otsu_mask(amap), amap) == 1.0
