"""The guided model (guidance.GuidedModel, issue 21): classifier guidance as a wrapper of the network, like
classifier-free guidance, checked against gradients worked out by hand, and the translation loop that takes
it against the direct calls of the pinned gaussian_diffusion loops."""
import pytest
import torch as th
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET, one_thread, redraw_zero_layers  # noqa: F401  (autouse)

from guided_diffusion import script_util as su
from guided_diffusion.guidance import (
    GuidedModel,
    cfg_guided,
    classifier_guided,
    make_cfg_model,
    make_cond_fn,
    unguided,
)
from guided_diffusion.pipeline.translators import TranslationOptions, image_noise, image_seed, translate_batch

SCALE = 30.0


class _TanhClassifier(th.nn.Module):
    """logits_k = a(t) tanh(w_k . x) + v_k with a(t) = 1 + t / 10: small enough to differentiate by hand."""

    def __init__(self, n_in: int):
        super().__init__()
        g = th.Generator().manual_seed(0)
        self.w = th.nn.Parameter(th.randn(2, n_in, generator=g) * 0.5)  # (classes, pixels)
        self.v = th.nn.Parameter(th.randn(2, generator=g))

    def forward(self, x, t):
        return (1 + t.float()[:, None] / 10) * th.tanh(x.flatten(1) @ self.w.T) + self.v


def _by_hand(clf: _TanhClassifier, x: th.Tensor, t: th.Tensor, y: int) -> th.Tensor:
    """s * d/dx log softmax_y: sum_k (1[k = y] - p_k) a(t) (1 - tanh^2(w_k . x)) w_k, per image."""
    with th.no_grad():
        w, a = clf.w.double(), 1 + t.double()[:, None] / 10
        h = th.tanh(x.flatten(1).double() @ w.T)  # (B, classes)
        p = th.softmax(a * h + clf.v.double(), dim=-1)
        coef = (th.nn.functional.one_hot(th.tensor(y), 2).double() - p) * a * (1 - h ** 2)  # (B, classes)
        return (SCALE * coef @ w).float().reshape(x.shape)


def _images(n=2, shape=(1, 3, 3), seed=1):
    return th.rand(n, *shape, generator=th.Generator().manual_seed(seed))


def _kwargs(model, x):
    return model.model_kwargs(x.shape[0], x.device)


def _network(x, t, y=None):
    return th.cat([0.1 * x, th.zeros_like(x)], dim=1)


def test_the_classifier_guided_model_is_s_times_the_gradient_of_log_p_healthy():
    x, t = _images(), th.tensor([3, 17])
    clf = _TanhClassifier(x[0].numel())
    model = classifier_guided(_network, clf, SCALE)
    kwargs = _kwargs(model, x)
    assert kwargs["y"].tolist() == [su.HEALTHY] * 2 and kwargs["y"].dtype == th.long
    grad = model.cond_fn(x, t, **kwargs)
    th.testing.assert_close(grad, _by_hand(clf, x, t, su.HEALTHY), rtol=1e-5, atol=1e-6)
    assert grad.abs().max() > 1e-2
    # the network is untouched: it encodes and decodes; no classifier-free decoder
    assert model.network is _network and model.decode is None and model.decoder is _network
    assert model.describe() == "s=30"


def test_an_unconditional_network_guided_by_the_classifier_gets_no_label():
    x, t = _images(), th.tensor([3, 17])
    clf = _TanhClassifier(x[0].numel())
    seen = []

    def unconditional(x, t, **kwargs):  # a UNet made with --class_cond False refuses a label
        seen.append(sorted(kwargs))
        return th.cat([0.1 * x, th.zeros_like(x)], dim=1)

    model = classifier_guided(unconditional, clf, SCALE, class_cond=False)
    kwargs = _kwargs(model, x)
    th.testing.assert_close(model.network(x, t, **kwargs), unconditional(x, t))
    assert seen == [[], []]
    th.testing.assert_close(model.cond_fn(x, t, **kwargs), _by_hand(clf, x, t, su.HEALTHY), rtol=1e-5, atol=1e-6)


def test_the_scheduled_model_has_scale_s_at_the_first_decoding_step_and_0_at_t_0():
    x = _images()
    clf = _TanhClassifier(x[0].numel())
    model = classifier_guided(_network, clf, SCALE)
    linear = model.scheduled("linear", 8.0)  # a decoding that starts at t = 8
    kwargs = _kwargs(model, x)
    first, last, half = th.tensor([8, 8]), th.tensor([0, 0]), th.tensor([4, 0])
    th.testing.assert_close(linear.cond_fn(x, first, **kwargs), _by_hand(clf, x, first, 0), rtol=1e-5, atol=1e-6)
    assert th.equal(linear.cond_fn(x, last, **kwargs), th.zeros_like(x))
    # per image: s * t / t_start
    expected = _by_hand(clf, x, half, 0) * th.tensor([0.5, 0.0]).view(-1, 1, 1, 1)
    th.testing.assert_close(linear.cond_fn(x, half, **kwargs), expected, rtol=1e-5, atol=1e-6)
    rising = model.scheduled("rising", 8.0)
    assert th.equal(rising.cond_fn(x, first, **kwargs), th.zeros_like(x))
    th.testing.assert_close(rising.cond_fn(x, last, **kwargs), _by_hand(clf, x, last, 0), rtol=1e-5, atol=1e-6)
    # constant: the paper's guidance, the very same function; the rest of the model is kept
    assert model.scheduled("constant", 8.0).cond_fn is model.cond_fn
    assert (linear.network, linear.target, linear.describe()) == (_network, su.HEALTHY, "s=30")
    assert unguided(_network).scheduled("linear", 8.0).cond_fn is None


def test_the_masked_model_guides_inside_the_mask_only():
    x, t = _images(shape=(2, 3, 3)), th.tensor([5, 9])
    clf = _TanhClassifier(x[0].numel())
    mask = th.zeros(2, 1, 3, 3, dtype=th.bool)
    mask[0, :, 0, :] = True  # image 0: the first row; image 1: one pixel
    mask[1, :, 2, 1] = True
    model = classifier_guided(_network, clf, SCALE).masked(mask)
    grad = model.cond_fn(x, t, **_kwargs(model, x))
    inside = mask.expand_as(x)
    assert th.equal(grad[~inside], th.zeros(int((~inside).sum())))
    th.testing.assert_close(grad[inside], _by_hand(clf, x, t, 0)[inside], rtol=1e-5, atol=1e-6)
    assert model.network is _network  # the network is not masked: only the gradient


def test_with_clean_context_every_callable_sees_the_clean_image_outside_the_patch():
    x, clean = _images(seed=1), _images(seed=2)
    mask = th.zeros(2, 1, 3, 3, dtype=th.bool)
    mask[:, :, 1:, 1:] = True
    seen = {}

    def recorder(name):
        def fn(x_in, t, **_):
            seen[name] = x_in.clone()
            return th.zeros_like(x_in)
        return fn

    model = GuidedModel(recorder("network"), decode=recorder("decode"), cond_fn=recorder("cond_fn"),
                        kind="classifier", scale=1.0).with_clean_context(clean, mask)
    t = th.tensor([1, 2])
    for fn in (model.network, model.decode, model.cond_fn):
        fn(x, t, y=th.zeros(2, dtype=th.long))
    expected = th.where(mask, x, clean)  # by hand: x inside the patch, the clean image elsewhere
    assert set(seen) == {"network", "decode", "cond_fn"}
    assert all(th.equal(v, expected) for v in seen.values())
    assert unguided(_network).with_clean_context(clean, mask).cond_fn is None


def test_the_cfg_model_decodes_with_the_combined_prediction_and_encodes_with_the_network():
    x, t = _images(), th.tensor([2, 7])

    def network(x_in, t_in, y=None):  # eps = (y + 1) x, variance channel = y
        return th.cat([(y.float() + 1).view(-1, 1, 1, 1) * x_in, y.float().view(-1, 1, 1, 1).expand_as(x_in)], 1)

    model = cfg_guided(network, 2.0, su.NULL_CLASS, channels=1)
    out = model.decoder(x, t, **_kwargs(model, x))
    # Ho & Salimans 2022, Eq. 6 with y = 0 and null = 2: 3 * (1 x) - 2 * (3 x); the variance: the conditional's
    th.testing.assert_close(out[:, :1], 3 * x - 2 * 3 * x)
    assert th.equal(out[:, 1:], th.zeros_like(x))
    assert model.network is network and model.cond_fn is None and model.describe() == "CFG W=2"


def test_unguided_models_and_a_bad_kind():
    x = _images()
    assert _kwargs(unguided(_network, class_cond=False), x) == {}
    assert _kwargs(unguided(_network), x)["y"].tolist() == [su.HEALTHY] * 2
    assert unguided(_network).describe() == "unguided" and unguided(_network).cond_fn is None
    with pytest.raises(ValueError, match="guidance 'clf': expected one of classifier, cfg, none"):
        GuidedModel(_network, kind="clf")


def _tiny_networks(uncond_label=False):
    th.manual_seed(0)
    model, diffusion = su.create_model_and_diffusion(**{**TINY_UNET, "timestep_respacing": "25"},
                                                     uncond_label=uncond_label)
    classifier = su.create_classifier(**{k: v for k, v in TINY_CLASSIFIER.items() if k.startswith("classifier")
                                         or k == "image_size"})
    return redraw_zero_layers(model).eval(), diffusion, redraw_zero_layers(classifier).eval()


@pytest.mark.parametrize("guidance, use_ddim", [("classifier", True), ("classifier", False), ("cfg", True)])
def test_the_loop_with_a_guided_model_is_the_direct_call_bit_for_bit(guidance, use_ddim):
    """translate_batch(guided model, ...) equals gaussian_diffusion's loop called with the network, cond_fn or
    decode_model and y = healthy, and each image's draws from its own generator (an independent copy)."""
    model, diffusion, classifier = _tiny_networks(uncond_label=guidance == "cfg")
    ids, level = ["a", "b"], 6
    x = th.rand(2, 4, 16, 16, generator=th.Generator().manual_seed(4))
    if guidance == "classifier":
        guided = classifier_guided(model, classifier, SCALE)
        direct = dict(cond_fn=make_cond_fn(classifier, SCALE))
    else:
        guided = cfg_guided(model, 2.0, su.NULL_CLASS, 4)
        direct = dict(decode_model=make_cfg_model(model, 2.0, su.NULL_CLASS, 4))
    gens = [th.Generator().manual_seed(image_seed(7, i)) for i in ids]

    def draw(shape):
        return th.stack([th.randn(shape, generator=g) for g in gens])

    kwargs = dict(model_kwargs={"y": th.zeros(2, dtype=th.long)}, noise_level=level, noise=draw(x.shape[1:]), **direct)
    with th.no_grad():
        new = translate_batch(guided, diffusion, x, image_noise(7, ids, x.device), TranslationOptions(level, use_ddim))
        if use_ddim:
            old = diffusion.ddim_sample_loop_known(model, tuple(x.shape), x, **kwargs)[0]
        else:
            old = diffusion.p_sample_loop_known(model, tuple(x.shape), x, noise_fn=lambda x_t, t: draw(x_t.shape[1:]),
                                                **kwargs)[0]
    assert th.equal(new, old)
    assert (new - x).abs().max() > 1e-3
