"""The anomaly map's levers (guided_diffusion/maps.py, issue 20) against values worked out by hand or by an
independent implementation, and the translation scripts' --map_* flags end to end."""
import json

import numpy as np
import pytest
import torch as th
from scipy import ndimage
from cpu_helpers import one_thread  # noqa: F401  (one_thread is autouse)

from guided_diffusion.anomaly import anomaly_map
from guided_diffusion.maps import MIN_SCALE, MapOptions, make_map
from guided_diffusion.util.errors import UserError

C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # SSIM's constants for data range 1 (Wang et al. 2004, Eq. 13)


def _rng_images(seed=0, shape=(3, 4, 12, 12)):
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


def _ssim_by_formula(a: np.ndarray, b: np.ndarray, win: int = 7) -> np.ndarray:
    """Local SSIM (Wang et al. 2004, Eq. 13) written out: means, variances and covariance over a uniform
    win x win window (edges reflected), sample (N - 1) normalisation of the second moments."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mean = lambda z: ndimage.uniform_filter(z, size=win, mode="reflect")  # noqa: E731
    n = win * win
    mu_a, mu_b = mean(a), mean(b)
    var_a = (mean(a * a) - mu_a ** 2) * n / (n - 1)
    var_b = (mean(b * b) - mu_b ** 2) * n / (n - 1)
    cov = (mean(a * b) - mu_a * mu_b) * n / (n - 1)
    return ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a ** 2 + mu_b ** 2 + C1) * (var_a + var_b + C2))


# ------------------------------------------------------------------------------------------ the default


def test_default_options_are_the_papers_map_bit_for_bit():
    x, healthy = _rng_images()
    for a, b in ((x, healthy), (x[0], healthy[0])):  # a batch and one image
        ours, paper = make_map(a, b), anomaly_map(a, b)
        assert ours.dtype == np.float32 and np.array_equal(ours, paper)
        assert np.array_equal(make_map(a, b, MapOptions("abs", "none", 0.0)), paper)
    ours = make_map(th.from_numpy(x), th.from_numpy(healthy))
    assert isinstance(ours, th.Tensor) and th.equal(ours, anomaly_map(th.from_numpy(x), th.from_numpy(healthy)))


# ------------------------------------------------------------------------------------------ residuals


def test_ssim_residual_of_constant_images_by_hand():
    # constant images: no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) everywhere
    x = np.full((2, 9, 9), 0.5, dtype=np.float32)
    healthy = np.stack([np.full((9, 9), 0.3), np.full((9, 9), 0.5)]).astype(np.float32)
    expected = 1 - (2 * 0.5 * 0.3 + C1) / (0.5 ** 2 + 0.3 ** 2 + C1)  # = 0.04 / 0.3401, channel 1 adds 0
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(residual="ssim")), np.full((9, 9), expected),
                               rtol=1e-5)
    # abs+ssim: the product of the two residuals, per channel
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(residual="abs+ssim")),
                               np.full((9, 9), 0.2 * expected), rtol=1e-5)
    # identical images: no dissimilarity anywhere, whatever their texture
    a, _ = _rng_images(1)
    for residual in ("ssim", "abs+ssim"):
        np.testing.assert_allclose(make_map(a, a.copy(), MapOptions(residual=residual)), 0.0, atol=1e-6)


def test_ssim_residual_matches_the_formula_on_textured_images():
    x, healthy = _rng_images(2, (2, 3, 16, 16))
    expected = sum(1 - _ssim_by_formula(x[0, c], healthy[0, c]) for c in range(3))
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(residual="ssim"))[0], expected, rtol=1e-4, atol=1e-5)
    expected = sum(np.abs(x[1, c] - healthy[1, c]) * (1 - _ssim_by_formula(x[1, c], healthy[1, c]))
                   for c in range(3))
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(residual="abs+ssim"))[1], expected, rtol=1e-4,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------ normalisation


def test_channel_normalisation_divides_by_the_median_residual_over_the_brain():
    # one image, 2 channels, 1 x 5 pixels; the last pixel is background (0 in both input channels)
    x = np.array([[[0.5, 0.5, 0.5, 0.5, 0.0]], [[0.2, 0.2, 0.2, 0.2, 0.0]]], dtype=np.float32)
    healthy = np.array([[[0.4, 0.3, 0.4, 0.5, 0.9]], [[0.2, 0.2, 0.0, 0.1, 0.0]]], dtype=np.float32)
    # residuals over the brain (first 4 pixels): channel 0 [0.1, 0.2, 0.1, 0.0] median 0.1 (the background's
    # 0.9 left out), channel 1 [0, 0, 0.2, 0.1] median 0.05
    expected = np.array([[0.1 / 0.1 + 0 / 0.05, 0.2 / 0.1 + 0, 0.1 / 0.1 + 0.2 / 0.05, 0 + 0.1 / 0.05,
                          0.9 / 0.1 + 0]])
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(normalise="channel")), expected, rtol=1e-5)
    # the scale is the image's own: a second image in the batch does not change the first one's map
    batch = make_map(np.stack([x, x * 0.5]), np.stack([healthy, healthy * 3]), MapOptions(normalise="channel"))
    np.testing.assert_allclose(batch[0], expected, rtol=1e-5)


def test_channel_normalisation_floors_the_scale_and_takes_the_whole_image_without_brain():
    x = np.zeros((2, 2, 2), dtype=np.float32)  # no brain: the median over the whole image
    healthy = np.array([[[0.1, 0.2], [0.3, 0.4]], [[0, 0], [0, 0.5]]], dtype=np.float32)
    # channel 0: median 0.25; channel 1: median 0 -> MIN_SCALE
    expected = np.array([[0.1, 0.2], [0.3, 0.4]]) / 0.25 + np.array([[0, 0], [0, 0.5]]) / MIN_SCALE
    np.testing.assert_allclose(make_map(x, healthy, MapOptions(normalise="channel")), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------ smoothing


def test_smoothing_spreads_a_point_as_the_sampled_gaussian():
    x = np.zeros((1, 11, 11), dtype=np.float32)
    healthy = x.copy()
    healthy[0, 5, 5] = 1.0  # a one-pixel residual of 1 in the middle, 5 pixels from every edge
    amap = make_map(x, healthy, MapOptions(smooth=1.0))
    # the filter's 1-D kernel: exp(-k^2 / 2) for |k| <= 4 (4 sigma), normalised to sum 1
    k = np.arange(-4, 5)
    w = np.exp(-k ** 2 / 2.0)
    w /= w.sum()
    expected = np.zeros((11, 11))
    expected[1:10, 1:10] = np.outer(w, w)
    np.testing.assert_allclose(amap, expected, atol=1e-7)
    assert amap.sum() == pytest.approx(1.0, abs=1e-6)


def test_levers_compose_in_order_and_keep_the_input_kind():
    x, healthy = _rng_images(3, (2, 2, 10, 10))
    options = MapOptions("abs+ssim", "channel", 1.5)
    ours = make_map(th.from_numpy(x), th.from_numpy(healthy), options)
    assert isinstance(ours, th.Tensor) and ours.dtype == th.float32 and ours.shape == (2, 10, 10)
    for i in range(2):
        per_channel = [np.abs(x[i, c] - healthy[i, c]) * (1 - _ssim_by_formula(x[i, c], healthy[i, c]))
                       for c in range(2)]
        brain = (x[i] > 0).any(axis=0)
        summed = sum(r / max(np.median(r[brain]), MIN_SCALE) for r in per_channel)
        expected = ndimage.gaussian_filter(summed, 1.5)
        np.testing.assert_allclose(ours[i].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_bad_options_name_the_flag():
    with pytest.raises(UserError, match="--map_residual l2: expected one of abs, ssim, abs\\+ssim"):
        MapOptions(residual="l2")
    with pytest.raises(UserError, match="--map_normalise image"):
        MapOptions(normalise="image")
    with pytest.raises(UserError, match="--map_smooth -1"):
        MapOptions(smooth=-1.0)
    small = np.zeros((1, 5, 6), dtype=np.float32)
    with pytest.raises(UserError, match="--map_residual ssim: .* at least 7 x 7 pixels, found 5 x 6"):
        make_map(small, small, MapOptions(residual="ssim"))


# ------------------------------------------------------------------------------------------ the scripts


SIZE = 16


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    from guided_diffusion.datasets.synthetic import generate
    root = tmp_path_factory.mktemp("data")
    generate(str(root), dataset="brats", size=SIZE, n_train=0, n_test=4, tumour_fraction=0.5, seed=3)
    return {"test": root / "brats" / "testing", "labels": root / "brats" / "test_labels"}


def _intensity(brats, out, *flags):
    from guided_diffusion.pipeline.cli import run_script
    from guided_diffusion.pipeline.methods import METHODS
    argv = ["--data_dir", brats["test"], "--label_dir", brats["labels"], "--image_size", SIZE, "--progress", False,
            "--output_dir", out, "--log_dir", out.parent / f"{out.name}-log", *flags]
    command = METHODS["intensity"].commands["intensity_translate"]
    return run_script(command.config, command.run, [str(a) for a in argv])


def test_a_translation_script_stores_the_map_of_its_map_flags(brats, tmp_path):
    summary = _intensity(brats, tmp_path / "smooth", "--map_smooth", 1)
    assert summary["flags"]["map_smooth"] == 1.0 and summary["n_images"] == 4
    for path in sorted((tmp_path / "smooth").glob("*.npz")):
        with np.load(path) as z:
            by_scipy = ndimage.gaussian_filter(np.abs(z["input"] - z["healthy"]).sum(axis=0), sigma=1.0)
            np.testing.assert_allclose(z["anomaly"], by_scipy, rtol=1e-5, atol=1e-6)
            assert not np.allclose(z["anomaly"], z["input"][3])  # not the unsmoothed FLAIR intensity
    settings = json.loads((tmp_path / "smooth" / "settings.json").read_text())["flags"]
    assert (settings["map_residual"], settings["map_normalise"], settings["map_smooth"]) == ("abs", "none", 1.0)
    # a folder made with other map options is not relabelled
    with pytest.raises(UserError, match=r"--map_smooth 1.0 \(now 0.0\)"):
        _intensity(brats, tmp_path / "smooth")
    with pytest.raises(UserError, match=r"--map_residual abs \(now ssim\)"):
        _intensity(brats, tmp_path / "smooth", "--map_smooth", 1, "--map_residual", "ssim")
    assert _intensity(brats, tmp_path / "smooth", "--map_smooth", 1)["n_images"] == 4  # the same ones resume


def test_map_flags_are_checked_as_they_are_parsed(brats, tmp_path):
    with pytest.raises(UserError, match="--map_smooth -0.5: expected a sigma of 0"):
        _intensity(brats, tmp_path / "x", "--map_smooth", -0.5)
    with pytest.raises(UserError, match="--map_normalise 'image': expected one of none, channel"):
        _intensity(brats, tmp_path / "x", "--map_normalise", "image")


def test_a_noise_level_ensemble_averages_the_levels_maps_made_with_the_options():
    from cpu_helpers import TINY_UNET, redraw_zero_layers
    from guided_diffusion import script_util as su
    from guided_diffusion.guidance import unguided
    from guided_diffusion.pipeline.translators import DiffusionTranslation
    th.manual_seed(0)
    model, diffusion = su.create_model_and_diffusion(**TINY_UNET)
    redraw_zero_layers(model).eval()
    x = th.rand(2, 4, SIZE, SIZE)
    ids = ["a", "b"]

    def translate(levels, options):
        with th.no_grad():
            return DiffusionTranslation(unguided(model), diffusion, seed=0, noise_levels=levels, use_ddim=True,
                                        map_options=options)(x, ids)

    healthy, amap = translate((2, 4), MapOptions(smooth=1.0))
    members = [translate((level,), MapOptions(smooth=1.0)).numpy() for level in (2, 4)]  # one healthy image each
    np.testing.assert_allclose(healthy.numpy(), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
    expected = np.mean([ndimage.gaussian_filter(np.abs(x.numpy() - h).sum(axis=1), sigma=(0, 1, 1))
                        for h in members], axis=0)  # each member's map smoothed, then averaged
    np.testing.assert_allclose(amap.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(amap.numpy(), np.mean([np.abs(x.numpy() - h).sum(axis=1) for h in members], axis=0),
                           atol=1e-3)
