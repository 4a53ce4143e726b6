"""Diffusion maths and samplers: SPEC section 3/4 behaviour and the section-10 defects of the original."""
import math
import os

import numpy as np
import pytest
import torch as th

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.guidance import make_cond_fn
from guided_diffusion.script_util import (
    create_classifier,
    create_gaussian_diffusion,
    create_model,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
FIXTURE = os.path.join(SHARED, "conformance", "tiny_brats.pt")


def tiny_model(channels=4, learn_sigma=True, class_cond=True):
    th.manual_seed(0)
    return create_model(16, 32, 1, channel_mult="1,2", learn_sigma=learn_sigma, class_cond=class_cond,
                        attention_resolutions="8", num_heads=1, dataset="brats" if channels == 4 else "chexpert").eval()


def tiny_classifier(channels=4, pool="attention"):
    th.manual_seed(1)
    return create_classifier(16, False, 32, 1, "8", True, True, pool,
                             dataset="brats" if channels == 4 else "chexpert",
                             classifier_channel_mult="1,2", classifier_num_head_channels=32).eval()


class CountingModel(th.nn.Module):
    """An analytic 'network': eps = 0.1 * x; records the timesteps it sees."""

    def __init__(self, channels, learn_sigma=False):
        super().__init__()
        self.seen = []
        self.learn_sigma = learn_sigma
        self.dummy = th.nn.Parameter(th.zeros(()))

    def forward(self, x, t, y=None):
        self.seen.append(t.clone())
        out = 0.1 * x
        return th.cat([out, th.zeros_like(x)], 1) if self.learn_sigma else out


def test_schedules_reject_unknown_name_and_too_few_steps():
    with pytest.raises(ValueError, match="--noise_schedule 'quadratic'"):
        gd.get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="--diffusion_steps 10"):
        gd.get_named_beta_schedule("linear", 10)


def test_learn_sigma_false_gives_c_output_channels():
    # SPEC section 10: the fork gave 2*C channels even without learned sigma
    x = th.randn(2, 4, 16, 16)
    t = th.tensor([1, 2])
    y = th.tensor([0, 1])
    assert tiny_model(learn_sigma=False)(x, t, y).shape == (2, 4, 16, 16)
    assert tiny_model(learn_sigma=True)(x, t, y).shape == (2, 8, 16, 16)
    assert tiny_model(channels=1, learn_sigma=False)(x[:, :1], t, y).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("width", [32, 64])
def test_spatial_pool_width_comes_from_the_network(width):
    # SPEC section 10: the spatial pool had a hard-coded feature width
    for pool in ("spatial", "spatial_v2"):
        clf = create_classifier(16, False, width, 1, "8", True, True, pool, classifier_channel_mult="1,2",
                                classifier_num_head_channels=32)
        assert clf(th.randn(2, 4, 16, 16), th.tensor([3, 4])).shape == (2, 2)


def test_ddim_sample_without_cond_fn():
    # SPEC section 10: ddim_sample without a cond_fn failed in the original
    diffusion = create_gaussian_diffusion(steps=50)
    model = CountingModel(4)
    out = diffusion.ddim_sample(model, th.randn(2, 4, 8, 8), th.tensor([5, 5]))
    assert out["sample"].shape == (2, 4, 8, 8) and th.isfinite(out["sample"]).all()


def test_plain_loops_run_every_step():
    # SPEC section 10: plain ddim_sample_loop ran zero steps
    diffusion = create_gaussian_diffusion(steps=24)
    for loop in (diffusion.ddim_sample_loop, diffusion.p_sample_loop):
        model = CountingModel(1)
        out = loop(model, (2, 1, 8, 8))
        assert out.shape == (2, 1, 8, 8)
        assert [int(t[0]) for t in model.seen] == list(range(23, -1, -1))


@pytest.mark.parametrize("channels", [1, 4])
def test_ddim_translation_any_channel_count_and_batch(channels):
    # SPEC section 10: the translation indexed four channels and failed on CheXpert
    model, clf = tiny_model(channels), tiny_classifier(channels)
    diffusion = create_gaussian_diffusion(steps=30, learn_sigma=True)
    cond_fn = make_cond_fn(clf, 10.0)
    th.manual_seed(3)
    img = th.rand(3, channels, 16, 16)
    noise = th.randn_like(img)
    y = {"y": th.zeros(3, dtype=th.long)}
    sample, x_noisy, out_img = diffusion.ddim_sample_loop_known(model, img.shape, img, cond_fn=cond_fn,
                                                                model_kwargs=y, noise_level=8, noise=noise)
    assert sample.shape == img.shape and out_img is img
    assert th.equal(x_noisy, diffusion.q_sample(img, th.zeros(3, dtype=th.long), noise=noise))
    # the same image alone, with the same noise, gives the same result
    for i in range(3):
        single, _, _ = diffusion.ddim_sample_loop_known(
            model, (1, channels, 16, 16), img[i:i + 1], cond_fn=cond_fn,
            model_kwargs={"y": th.zeros(1, dtype=th.long)}, noise_level=8, noise=noise[i:i + 1])
        th.testing.assert_close(single[0], sample[i], rtol=1e-4, atol=1e-5)


def test_ddim_translation_step_order():
    model = CountingModel(4)
    diffusion = create_gaussian_diffusion(steps=30)
    phases = []
    img = th.rand(1, 4, 8, 8)
    diffusion.ddim_sample_loop_known(model, img.shape, img, noise_level=6,
                                     callback=lambda out: phases.append((out["phase"], out["t"])))
    assert phases == [("encode", t) for t in (1, 2, 3, 4, 5)] + [("decode", t) for t in (4, 3, 2, 1, 0)]


def test_ddpm_translation_noises_to_level_minus_one():
    # SPEC section 10: the original always noised to t = 499
    model = CountingModel(4)
    diffusion = create_gaussian_diffusion(steps=50)
    img = th.rand(2, 4, 8, 8)
    noise = th.randn_like(img)
    _, x_noisy, _ = diffusion.p_sample_loop_known(model, img.shape, img, noise_level=7, noise=noise)
    assert th.equal(x_noisy, diffusion.q_sample(img, th.full((2,), 6), noise=noise))
    assert [int(t[0]) for t in model.seen] == [6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("level", [0, 31, 2.5, -1])
def test_noise_level_out_of_range(level):
    diffusion = create_gaussian_diffusion(steps=30)
    img = th.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="--noise_level"):
        diffusion.ddim_sample_loop_known(CountingModel(1), img.shape, img, noise_level=level)


def test_respaced_guidance_sees_original_timesteps():
    # SPEC section 10: under respacing the fork passed respaced indices to the classifier
    diffusion = create_gaussian_diffusion(steps=100, timestep_respacing="ddim10")
    seen_by_classifier = []

    def cond_fn(x, t, y=None):
        seen_by_classifier.append(int(t[0]))
        return th.zeros_like(x)

    model = CountingModel(1)
    img = th.rand(1, 1, 8, 8)
    diffusion.ddim_sample_loop_known(model, img.shape, img, noise_level=4, cond_fn=cond_fn,
                                     model_kwargs={"y": th.zeros(1, dtype=th.long)})
    assert seen_by_classifier == [20, 10, 0]
    assert [int(t[0]) for t in model.seen] == [10, 20, 30, 20, 10, 0]
    seen_by_classifier.clear()
    diffusion.p_sample_loop_known(model, img.shape, img, noise_level=3, cond_fn=cond_fn,
                                  model_kwargs={"y": th.zeros(1, dtype=th.long)})
    assert seen_by_classifier == [20, 10, 0]


def test_respaced_process_is_consistent_with_the_base():
    base = create_gaussian_diffusion(steps=100)
    spaced = create_gaussian_diffusion(steps=100, timestep_respacing="10")
    kept = sorted(spaced.timestep_map)
    th.testing.assert_close(th.tensor(spaced.alphas_cumprod), th.tensor(base.alphas_cumprod[kept]))


def test_ddim_encode_decode_roundtrip_without_guidance():
    # with a fixed analytic eps and no clipping, DDIM encoding then decoding returns close to the start
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim100")
    model = CountingModel(1)
    img = th.rand(1, 1, 8, 8) * 0.5
    sample, _, _ = diffusion.ddim_sample_loop_known(model, img.shape, img, noise_level=40,
                                                    noise=th.zeros_like(img))
    assert (sample - img).abs().max() < 0.05


def test_p_sample_uses_given_noise_and_none_at_t0():
    diffusion = create_gaussian_diffusion(steps=50)
    model = CountingModel(1)
    x = th.randn(2, 1, 4, 4)
    noise = th.randn_like(x)
    a = diffusion.p_sample(model, x, th.tensor([3, 0]), noise=noise)["sample"]
    b = diffusion.p_sample(model, x, th.tensor([3, 0]), noise=noise)["sample"]
    assert th.equal(a, b)
    mean = diffusion.p_mean_variance(model, x, th.tensor([3, 0]))["mean"]
    assert th.equal(a[1], mean[1]) and not th.equal(a[0], mean[0])


def test_training_losses_keys_and_learned_sigma():
    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), "image_size": 16,
                                                     "num_channels": 32, "num_res_blocks": 1,
                                                     "channel_mult": "1,2", "attention_resolutions": "8",
                                                     "learn_sigma": True, "class_cond": True,
                                                     "diffusion_steps": 30})
    x = th.rand(2, 4, 16, 16)
    terms = diffusion.training_losses(model, x, th.tensor([0, 7]), model_kwargs={"y": th.tensor([0, 1])})
    assert set(terms) == {"loss", "mse", "vb"}
    th.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


@pytest.mark.skipif(not os.path.exists(FIXTURE), reason="../shared/conformance is absent")
def test_known_loop_intermediates_match_fixture():
    from guided_diffusion import script_util as su
    from guided_diffusion import unet
    r = th.load(FIXTURE, weights_only=False)
    flags = {k: r["model_flags"][k] for k in su.model_and_diffusion_defaults() if k in r["model_flags"]}
    model, diffusion = su.create_model_and_diffusion(**flags)
    model.load_state_dict(r["model_state"])
    clf = unet.EncoderUNetModel(**r["classifier_flags"])
    clf.load_state_dict(r["classifier_state"])
    model.eval(), clf.eval()
    img = r["known_input"]
    sample, x_noisy, _ = diffusion.ddim_sample_loop_known(
        model, img.shape, img, cond_fn=make_cond_fn(clf, r["classifier_scale"]),
        model_kwargs={"y": th.zeros(1, dtype=th.long)}, noise_level=r["noise_level"], noise=r["known_t0_noise"])
    th.testing.assert_close(x_noisy, r["known_guided"]["x_noisy"], rtol=1e-5, atol=1e-6)
    th.testing.assert_close(sample, r["known_guided"]["sample"], rtol=1e-3, atol=1e-4)


class KnownEps(th.nn.Module):
    """An analytic 'network' predicting eps = 0.3 x - 0.2 (no learned variance)."""

    def forward(self, x, t, y=None):
        return 0.3 * x - 0.2


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_eta_follows_eq_12(eta):
    # DDIM (Song et al. 2021) Eq. 12 by hand, in float64, with the linear schedule of SPEC section 3
    # (T = 50: betas from 1e-4 * 20 to 0.02 * 20):
    #   x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    #   sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)
    #   x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
    # at t = 10 and at t = 0 (where ab_prev = 1, so sigma = 0 and no noise is added)
    steps = 50
    betas = np.linspace(1e-4 * 1000 / steps, 0.02 * 1000 / steps, steps)
    alpha_bar = np.cumprod(1 - betas)
    diffusion = create_gaussian_diffusion(steps=steps)
    g = th.Generator().manual_seed(0)
    x = th.randn(2, 1, 4, 4, generator=g)
    noise = th.randn(2, 1, 4, 4, generator=g)
    out = diffusion.ddim_sample(KnownEps(), x, th.tensor([10, 0]), clip_denoised=False, eta=eta, noise=noise)
    for i, t in enumerate([10, 0]):
        xt, z = x[i].double(), noise[i].double()
        eps = 0.3 * xt - 0.2
        ab, ab_prev = alpha_bar[t], (alpha_bar[t - 1] if t > 0 else 1.0)
        x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z
        if t == 10:
            assert sigma > 0.05  # the noise term matters here
        # float32 arithmetic in the library: measured max |diff| 2.1e-7 (values up to 2.1)
        th.testing.assert_close(out["pred_xstart"][i].double(), x0, rtol=1e-6, atol=1e-6)
        th.testing.assert_close(out["sample"][i].double(), expected, rtol=1e-6, atol=1e-6)
