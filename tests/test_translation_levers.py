"""The translation levers of issue 20: the classifier-scale schedule, AutoDDPM's mask, stitch and resample
(Bercea et al. 2023) and pDDPM's patch-wise noising (Behrendt et al. 2023), checked against values worked
out by hand, independent implementations (numpy, scipy) and direct calls of the diffusion loops, then
through image_train.py and classifier_sample_known.py in this process."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch as th
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET, one_thread, redraw_zero_layers  # noqa: F401  (autouse)

from guided_diffusion import script_util as su
from guided_diffusion import translation_levers as tl
from guided_diffusion.datasets.synthetic import generate
from guided_diffusion.guidance import GuidedModel, make_cond_fn, scale_weight, schedule_cond_fn
from guided_diffusion.pipeline.methods import diffusion as diffusion_family
from guided_diffusion.pipeline.translators import (
    Levers,
    TranslationOptions,
    decode_start,
    image_noise,
    image_seed,
    translate_batch,
)
from guided_diffusion.util.errors import UserError
from guided_diffusion.util.flags import SCALE_SCHEDULES

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
IDS = ["a", "b"]


def _networks(**extra):
    """The tiny UNet (zero layers redrawn) and its process, and a tiny classifier's cond_fn (s = 30)."""
    th.manual_seed(0)
    model, diffusion = su.create_model_and_diffusion(**{**TINY_UNET, **extra})
    classifier = su.create_classifier(**{k: v for k, v in TINY_CLASSIFIER.items() if k.startswith("classifier")
                                         or k == "image_size"})
    return redraw_zero_layers(model).eval(), diffusion, make_cond_fn(redraw_zero_layers(classifier).eval(), 30.0)


def _images(n=2, seed=3):
    return th.rand(n, 4, SIZE, SIZE, generator=th.Generator().manual_seed(seed))


def _noise_of(ids, shape):
    """Each image's first standard-normal draw, from its own generator (an independent copy of the
    per-image seeding: sha256 of "seed:id")."""
    gens = [th.Generator().manual_seed(image_seed(0, i)) for i in ids]
    return gens, lambda: th.stack([th.randn(shape, generator=g) for g in gens])


def _translate_batch(network, diffusion, cond_fn, x, ids, noise_level, use_ddim=True, levers=Levers()):
    """translate_batch with ``network`` guided by ``cond_fn`` (None: unguided), towards y = healthy."""
    model = GuidedModel(network, cond_fn=cond_fn, kind="none" if cond_fn is None else "classifier")
    return translate_batch(model, diffusion, x, image_noise(0, ids, x.device),
                           TranslationOptions(noise_level, use_ddim, levers=levers))


def _ddim(model, diffusion, cond_fn, img, noise, level, denoised_fn=None):
    y = th.zeros(img.shape[0], dtype=th.long)
    with th.no_grad():
        return diffusion.ddim_sample_loop_known(model, tuple(img.shape), img, cond_fn=cond_fn, model_kwargs={"y": y},
                                                noise_level=level, noise=noise, denoised_fn=denoised_fn)[0]


# ------------------------------------------------------------------------------------------ scale schedule


def test_scale_weights_by_hand():
    t = th.tensor([40, 20, 10, 0])
    by_hand = {"constant": [1, 1, 1, 1], "linear": [1, 0.5, 0.25, 0],
               "cosine": [1, 0.5, math.sin(math.pi / 8) ** 2, 0], "rising": [0, 0.5, 0.75, 1]}
    assert set(by_hand) == set(SCALE_SCHEDULES)
    for name, weights in by_hand.items():
        th.testing.assert_close(scale_weight(name, t, 40.0), th.tensor(weights, dtype=th.float32))

    def cond_fn(x, t, **_):
        return th.full_like(x, 7.0)

    assert schedule_cond_fn(cond_fn, "constant", 40.0) is cond_fn  # the paper's guidance, the same function
    grad = schedule_cond_fn(cond_fn, "linear", 40.0)(th.zeros(2, 1, 2, 2), th.tensor([10, 30]))
    th.testing.assert_close(grad[:, 0, 0, 0], th.tensor([7 * 0.25, 7 * 0.75]))  # per image: s * t / t_start
    with pytest.raises(ValueError, match="'steep'"):
        schedule_cond_fn(cond_fn, "steep", 40.0)


def test_the_first_decoding_step_in_the_networks_units():
    plain = su.create_gaussian_diffusion(steps=50)
    assert (decode_start(plain, 10, True), decode_start(plain, 10, False)) == (8.0, 9.0)
    spaced = su.create_gaussian_diffusion(steps=50, timestep_respacing="ddim25")  # kept steps 0, 2, 4, ...
    assert (decode_start(spaced, 10, True), decode_start(spaced, 10, False)) == (16.0, 18.0)
    rescaled = su.create_gaussian_diffusion(steps=50, timestep_respacing="ddim25", rescale_timesteps=True)
    assert decode_start(rescaled, 10, True) == 16 * 1000 / 50


def test_constant_is_the_old_translation_bit_for_bit_and_linear_scales_the_gradient():
    model, diffusion, cond_fn = _networks()
    x = _images()
    _, first = _noise_of(IDS, x.shape[1:])
    by_hand = _ddim(model, diffusion, cond_fn, x, first(), 10)
    with th.no_grad():
        default = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=True)
        constant = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=True,
                                    levers=Levers(scale_schedule="constant"))
        linear = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=True,
                                  levers=Levers(scale_schedule="linear"))
    assert th.equal(default, by_hand) and th.equal(constant, by_hand)

    def faded(x_t, t, **kwargs):  # s(t) = s * t / 8: the decoding of L = 10 starts at t = 8
        return cond_fn(x_t, t, **kwargs) * (t.float() / 8).view(-1, 1, 1, 1)

    _, first = _noise_of(IDS, x.shape[1:])
    th.testing.assert_close(linear, _ddim(model, diffusion, faded, x, first(), 10), rtol=0, atol=1e-6)
    assert (linear - constant).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ AutoDDPM


def test_mask_and_stitch_by_hand():
    x = th.zeros(1, 2, 8, 8)
    x_hat = th.zeros(1, 2, 8, 8)
    x_hat[0, 0] = th.arange(64.0).reshape(8, 8) / 64  # the map: 0 .. 63/64, one value per pixel
    x_hat[0, 1, 2, 5] = 0.9  # a second channel lifts one pixel to 21/64 + 0.9, above every other
    amap = (x_hat - x).abs().sum(1)[0].numpy()
    for quantile, dilation in [(0.95, 1), (0.5, 0), (0.9, 2)]:
        above = amap > np.quantile(amap, quantile)
        expected = scipy.ndimage.binary_dilation(above, np.ones((2 * dilation + 1,) * 2)) if dilation else above
        mask = tl.autoddpm_mask(x, x_hat, quantile, dilation)
        assert mask.shape == (1, 1, 8, 8) and mask.dtype == th.bool
        np.testing.assert_array_equal(mask[0, 0].numpy(), expected)
    assert not tl.autoddpm_mask(x, x_hat, 1.0, 3).any()  # nothing lies above the largest value
    assert tl.autoddpm_mask(x, x_hat, 0.95, 1)[0, 0, 2, 5]  # the pixel the second channel lifted
    mask = tl.autoddpm_mask(x, x_hat, 0.8, 1)
    x = th.rand(1, 2, 8, 8)
    stitched = tl.stitch(x, x_hat, mask)
    outside = ~mask.expand_as(x)
    assert th.equal(stitched[outside], x[outside]) and th.equal(stitched[~outside], x_hat[~outside])
    assert (tl.autoddpm_level(20, 0), tl.autoddpm_level(2, 0), tl.autoddpm_level(20, 7)) == (5, 1, 7)


def test_autoddpm_empty_mask_gives_the_input_and_a_full_mask_the_double_translation():
    model, diffusion, cond_fn = _networks()
    x = _images()
    with th.no_grad():
        empty = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=True,
                                 levers=Levers(autoddpm=True, autoddpm_quantile=1.0))
        # any pixel above the median, dilated by the image's side, marks every pixel
        full = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=True,
                                levers=Levers(autoddpm=True, autoddpm_quantile=0.5, autoddpm_dilation=SIZE,
                                              autoddpm_level=4))
    assert th.equal(empty, x)  # the resampling keeps the input outside the (empty) mask
    _, draw = _noise_of(IDS, x.shape[1:])
    first = _ddim(model, diffusion, cond_fn, x, draw(), 10)
    second = _ddim(model, diffusion, cond_fn, first, draw(), 4)  # the same generators' next draw
    th.testing.assert_close(full, second, rtol=0, atol=1e-6)
    assert (full - first).abs().max() > 1e-3


def test_autoddpm_resamples_the_stitched_image_and_keeps_the_input_outside_the_mask(monkeypatch):
    model, diffusion, cond_fn = _networks()
    x = _images()
    seen = []
    loop = diffusion.ddim_sample_loop_known

    def recording(model_, shape, img, **kwargs):
        out = loop(model_, shape, img, **kwargs)
        seen.append({"img": img.clone(), "out": out[0].clone(), "level": kwargs["noise_level"],
                     "denoised_fn": kwargs["denoised_fn"]})
        return out

    monkeypatch.setattr(diffusion, "ddim_sample_loop_known", recording)
    with th.no_grad():
        healthy = _translate_batch(model, diffusion, cond_fn, x, IDS, 12, use_ddim=True,
                                   levers=Levers(autoddpm=True, autoddpm_quantile=0.9))
    assert [s["level"] for s in seen] == [12, 3]  # L, then L / 4
    first = seen[0]["out"]
    mask = tl.autoddpm_mask(x, first, 0.9, 1)
    assert 0 < mask.float().mean() < 1  # a partial mask
    outside, inside = ~mask.expand_as(x), mask.expand_as(x)
    # the stitched image: the first translation inside the mask, the input exactly outside
    assert th.equal(seen[1]["img"][outside], x[outside]) and th.equal(seen[1]["img"][inside], first[inside])
    assert seen[0]["denoised_fn"] is None and seen[1]["denoised_fn"] is not None
    # the healthy image: the input exactly outside the mask, the resampled image inside
    assert th.equal(healthy[outside], x[outside]) and th.equal(healthy[inside], seen[1]["out"][inside])
    assert (healthy - x)[inside].abs().max() > 1e-3
    # during the resampling the network's x_0 outside the mask is the input's: the region stays on its trajectory
    pred = th.rand_like(x)
    kept = seen[1]["denoised_fn"](pred)
    assert th.equal(kept[outside], x[outside]) and th.equal(kept[inside], pred[inside])


@pytest.mark.parametrize("use_ddim", [True, False])
def test_the_levers_do_not_depend_on_the_batch(use_ddim):
    """Each image's mask is its own map's quantile and its noise its own generator's: translated alone,
    an image comes out as in a batch (up to the rounding of batched convolutions)."""
    model, diffusion, cond_fn = _networks(timestep_respacing="25")
    x = _images()
    levers = Levers(autoddpm=True, autoddpm_quantile=0.8, patch_size=8, scale_schedule="cosine")
    with th.no_grad():
        batch = _translate_batch(model, diffusion, cond_fn, x, IDS, 10, use_ddim=use_ddim, levers=levers)
        for b, image_id in enumerate(IDS):
            alone = _translate_batch(model, diffusion, cond_fn, x[b:b + 1], [image_id], 10, use_ddim=use_ddim,
                                     levers=levers)
            th.testing.assert_close(alone[0], batch[b], rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------------------------------ pDDPM


def test_the_patch_grid_tiles_the_image_once():
    boxes = tl.patch_boxes(8, 12, 4)
    assert boxes[:4] == [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)), (slice(0, 4), slice(8, 12)),
                         (slice(4, 8), slice(0, 4))] and len(boxes) == 6
    cover = sum(tl.box_mask((1, 3, 8, 12), box).int() for box in boxes)
    assert th.equal(cover, th.ones(1, 1, 8, 12, dtype=th.int))
    masks = tl.patch_masks((2, 3, 8, 12), 4, th.tensor([5, 1]))
    assert th.equal(masks[0, 0], tl.box_mask((1, 1, 8, 12), boxes[5])[0, 0])
    assert th.equal(masks[1, 0], tl.box_mask((1, 1, 8, 12), boxes[1])[0, 0])


def _oracle(diffusion, x, target_of):
    """A network whose eps points x_t at ``target_of(its input)`` (an identity denoiser for the target x);
    it records, per call, the pixels where its input differs from x."""
    alpha_bar = th.tensor(diffusion.alphas_cumprod, dtype=th.float32)
    calls = []

    def network(x_t, t, y=None):
        calls.append((x_t != x).any(dim=1))  # (B, H, W)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * target_of(x_t)) / (1 - a).sqrt()

    return network, calls


@pytest.mark.parametrize("use_ddim", [True, False])
def test_each_tile_is_its_own_patchs_reconstruction_from_the_clean_context(use_ddim):
    diffusion = su.create_gaussian_diffusion(steps=50)
    x = _images() * 0.9
    boxes = tl.patch_boxes(SIZE, SIZE, 8)

    def noised_patch(x_t):  # which patch of the grid the network sees noised, per image
        differs = (x_t != x).any(dim=1)
        return th.stack([differs[:, rows, cols].flatten(1).sum(1) for rows, cols in boxes], dim=1).argmax(1)

    identity, calls = _oracle(diffusion, x, lambda x_t: x)
    with th.no_grad():
        out = _translate_batch(identity, diffusion, None, x, IDS, 10, use_ddim=use_ddim,
                               levers=Levers(patch_size=8))
    th.testing.assert_close(out, x, rtol=0, atol=1e-5)  # the identity denoiser gives back x
    # at every step the network saw the clean image outside one patch, the patches in grid order
    steps = 9 + 9 if use_ddim else 10  # DDIM: encoding t = 1..L-1, decoding L-2..0; DDPM: L-1..0
    assert len(calls) == len(boxes) * steps
    for i, differs in enumerate(calls):
        for b in range(len(x)):
            outside = ~tl.box_mask((1, 1, SIZE, SIZE), boxes[i // steps])[0, 0]
            assert differs[b].any() and not differs[b][outside].any()

    shifted, _ = _oracle(diffusion, x, lambda x_t: x + 0.01 * (1 + noised_patch(x_t)).view(-1, 1, 1, 1).float())
    with th.no_grad():
        out = _translate_batch(shifted, diffusion, None, x, IDS, 10, use_ddim=use_ddim,
                               levers=Levers(patch_size=8))
    for k, (rows, cols) in enumerate(boxes):
        th.testing.assert_close(out[:, :, rows, cols], x[:, :, rows, cols] + 0.01 * (k + 1), rtol=0, atol=1e-5)


def test_patched_loss_noises_the_patch_only_and_scores_it_only():
    diffusion = su.create_gaussian_diffusion(steps=50)  # eps prediction, fixed variance: the loss is the MSE
    x = _images()
    t = th.tensor([3, 30])
    noise = th.randn(x.shape, generator=th.Generator().manual_seed(1))
    index = th.tensor([1, 2])
    mask = tl.patch_masks(x.shape, 8, index)
    answer = th.randn(x.shape, generator=th.Generator().manual_seed(2))
    seen = []

    def network(x_t, ts, y=None):
        seen.append(x_t.clone())
        return answer

    losses = tl.patched_training_losses(diffusion, network, x, t, mask, noise=noise)
    a = th.tensor(diffusion.alphas_cumprod, dtype=th.float64)[t].view(-1, 1, 1, 1)
    for b, (rows, cols) in enumerate(tl.patch_boxes(SIZE, SIZE, 8)[k] for k in index.tolist()):
        inside = (a[b].sqrt() * x[b].double() + (1 - a[b]).sqrt() * noise[b].double())[:, rows, cols]
        th.testing.assert_close(seen[0][b, :, rows, cols].double(), inside, rtol=0, atol=1e-6)
        outside = ~tl.box_mask((1, 1, SIZE, SIZE), (rows, cols))[0].expand(4, -1, -1)
        assert th.equal(seen[0][b][outside], x[b][outside])  # the clean context
        by_hand = ((noise[b] - answer[b])[:, rows, cols] ** 2).mean()
        th.testing.assert_close(losses["loss"][b], by_hand)
    answer[~mask.expand_as(answer)] = 100.0  # the output outside the patch does not count
    th.testing.assert_close(tl.patched_training_losses(diffusion, network, x, t, mask, noise=noise)["loss"],
                            losses["loss"])


@pytest.mark.parametrize("extra", [{}, {"timestep_respacing": "10"}, {"use_kl": True}, {"predict_xstart": True}])
def test_a_patch_of_the_whole_image_is_the_ordinary_loss(extra):
    model, diffusion, _ = _networks(**extra)
    x = _images(3)
    t = th.tensor([0, 3, 9])
    noise = th.randn(x.shape, generator=th.Generator().manual_seed(4))
    y = {"y": th.zeros(3, dtype=th.long)}
    whole = th.ones(3, 1, SIZE, SIZE, dtype=th.bool)
    ordinary = diffusion.training_losses(model, x, t, model_kwargs=y, noise=noise)
    patched = tl.patched_training_losses(diffusion, model, x, t, whole, model_kwargs=y, noise=noise)
    assert set(patched) == set(ordinary)
    for key in ordinary:
        th.testing.assert_close(patched[key], ordinary[key], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ through the scripts


def script(name, *argv):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


MODEL = ["--image_size", SIZE, "--num_channels", 32, "--num_res_blocks", 1, "--channel_mult", "1,2", "--num_heads", 1,
         "--attention_resolutions", 8, "--diffusion_steps", 50, "--class_cond", True]
CLASSIFIER = ["--classifier_width", 32, "--classifier_depth", 1, "--classifier_channel_mult", "1,2",
              "--classifier_attention_resolutions", 8, "--classifier_num_head_channels", 32]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The synthetic BRATS set at 16 x 16, a diffusion model trained for 2 steps with --patch_size 8 (the
    patched losses it computed recorded) and a classifier trained for 1 step."""
    root = tmp_path_factory.mktemp("levers")
    generate(str(root), dataset="brats", size=SIZE, n_train=8, n_test=3, tumour_fraction=0.5, seed=1)
    data = root / "brats"
    masks = []
    patched = diffusion_family.patched_training_losses

    def recording(diffusion, model, x_start, t, mask, **kwargs):
        masks.append(mask.clone())
        return patched(diffusion, model, x_start, t, mask, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffusion_family, "patched_training_losses", recording)
        mp.setattr(type(su.create_gaussian_diffusion(steps=50)), "training_losses",
                   lambda *a, **k: pytest.fail("the ordinary loss under --patch_size"))
        script("image_train", "--data_dir", data / "training", *MODEL, "--progress", False, "--batch_size", 4,
               "--lr_anneal_steps", 2, "--patch_size", 8, "--log_dir", root / "m")
    script("classifier_train", "--data_dir", data / "training", "--image_size", SIZE, *CLASSIFIER,
           "--diffusion_steps", 50, "--progress", False, "--batch_size", 4, "--iterations", 1, "--log_dir", root / "c")
    common = ["--data_dir", data / "testing", "--label_dir", data / "test_labels", *MODEL, *CLASSIFIER,
              "--progress", False, "--use_ddim", True, "--noise_level", 8, "--model_path", root / "m" / "model000002.pt",
              "--classifier_path", root / "c" / "model000001.pt"]
    return {"root": root, "masks": masks, "common": common}


def test_image_train_noises_one_patch_of_the_grid_per_image(trained):
    boxes = [tl.box_mask((1, 1, SIZE, SIZE), box)[0] for box in tl.patch_boxes(SIZE, SIZE, 8)]
    assert len(trained["masks"]) == 2  # one call per step (batch 4, no micro-batches)
    for mask in th.cat(trained["masks"]):
        assert sum(th.equal(mask, box) for box in boxes) == 1
    flags = json.loads((trained["root"] / "m" / "flags_image_train.json").read_text())
    assert flags["patch_size"] == 8


def _translate(trained, name, *flags):
    out = trained["root"] / name
    summary = script("classifier_sample_known", *trained["common"], *flags, "--output_dir", out,
                     "--log_dir", str(out) + "-log")
    healthy = {}
    for path in sorted(out.glob("*.npz")):
        with np.load(path) as z:
            healthy[path.stem] = z["healthy"]
    return summary, healthy, json.loads((out / "settings.json").read_text())


def test_the_flags_reach_the_method_from_the_script(trained):
    _, plain, settings = _translate(trained, "plain")
    assert len(plain) == 3 and settings["flags"]["autoddpm"] is False
    runs = {"auto": ["--autoddpm", True, "--autoddpm_quantile", 0.8, "--autoddpm_level", 3],
            "linear": ["--scale_schedule", "linear"], "patches": ["--patch_size", 8]}
    names = {"auto": "AutoDDPM q=0.8 L2=3", "linear": "linear s(t)", "patches": "pDDPM P=8"}
    for run, flags in runs.items():
        summary, healthy, settings = _translate(trained, run, *flags)
        assert summary["method"] == f"DDIM, L=8, s=100, {names[run]}"
        given = {flags[i][2:]: flags[i + 1] for i in range(0, len(flags), 2)}
        assert {k: settings["flags"][k] for k in given} == given
        assert any(not np.array_equal(healthy[k], plain[k]) for k in plain), run


@pytest.mark.parametrize("flags, message", [
    (["--autoddpm_quantile", 0], "--autoddpm_quantile 0.0: expected 0 < q <= 1"),
    (["--autoddpm_quantile", 1.5], "--autoddpm_quantile 1.5: expected 0 < q <= 1"),
    (["--autoddpm_level", -1], "--autoddpm_level -1: expected 0 or more"),
    (["--autoddpm_level", 51], "--autoddpm_level 51: expected 0 (L / 4) or 1..50"),
    (["--autoddpm_dilation", -2], "--autoddpm_dilation -2: expected 0 or more"),
    (["--patch_size", 5], "--patch_size 5: expected 0 (off) or a patch side that divides --image_size 16"),
    (["--patch_size", 32], "--patch_size 32: expected 0 (off) or a patch side that divides --image_size 16"),
    (["--patch_size", -8], "--patch_size -8: expected 0 or more"),
    (["--scale_schedule", "linear", "--guidance", "none"], "--scale_schedule linear: schedules the classifier's"),
])
def test_bad_values_are_one_line_errors_naming_the_flag(trained, tmp_path, flags, message):
    with pytest.raises(UserError) as err:
        script("classifier_sample_known", *trained["common"], *flags, "--output_dir", tmp_path / "o",
               "--log_dir", tmp_path / "l")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("o/*.npz"))


def test_image_train_refuses_a_patch_that_does_not_tile_the_image(trained, tmp_path):
    with pytest.raises(UserError, match=r"--patch_size 6: expected 0 \(off\) or a patch side that divides"):
        script("image_train", "--data_dir", trained["root"] / "brats" / "training", *MODEL, "--progress", False,
               "--lr_anneal_steps", 1, "--patch_size", 6, "--log_dir", tmp_path / "m")
