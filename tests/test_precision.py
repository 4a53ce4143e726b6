"""Faster execution paths give the fp32 answer: bf16/fp16 autocast, channels-last, batching, torch.compile.

Tiny networks (those of test_pipeline: 64x64, 32 channels) with seeded random weights; the layers
that guided diffusion initialises to zero are re-drawn so that the UNet's output is not trivially
zero. Translation of the 8 synthetic BRATS test slices (data/brats/testing) with DDIM, 100-step
process, L = 10 (9 encoding + 9 guided decoding steps), classifier scale 100 as in the paper.
Every test runs on the CPU and, where there is one, on a CUDA device (TensorFloat-32 off).

Tolerances, with the values measured on the development machine (AMD EPYC, 2 cores, torch 2.13 CPU):
- bf16 autocast vs fp32, against the fp32 translation with another seed (what a path with the wrong
  noise gives): per image, the mean |diff| is at most 0.1 of the other seed's (measured bf16
  0.0011-0.0022 against 0.0383-0.0411, ratio 0.057), and the largest pixel difference at most 0.2
  of the other seed's (measured 0.084 against 0.565, ratio 0.15; bound 0.113). Wrong half-precision
  paths, measured (largest difference, per-image mean ratio, Otsu pixels that differ): the input
  rounded to 0.01 0.149, 0.092, 3.3 % and timesteps off by one 0.115, 0.083, 3.1 % exceed only the
  largest-difference bound (the former absolute bound of 0.15 let both pass); eps * 1.05 0.102,
  0.077, 4.6 %; eps * 1.1 0.153, 0.123, 8.7 %; timesteps off by 5 0.227, 0.139, 4.9 %; the label
  "diseased" 0.520, 0.416, 13 %. A second bf16 rounding of the output (eps * 1.02 computed in
  bf16: 0.087, 0.057, 3.4 %) stays within every bound. Otsu masks of the anomaly maps differ in
  <= 4 % of the pixels (measured 2.3 %; random-weight networks give low-contrast maps, so many
  pixels lie near the threshold). fp16: the same bounds, CUDA only (float16 rounds 8 times finer
  than bfloat16; not measured yet: no GPU in the session that set them).
- channels-last vs contiguous: one network call (UNet output, classifier gradient) within 1e-5
  of the largest value (measured 4.4e-6 and 3.6e-6); the whole translation within 1e-4
  (measured 6.7e-6). This needed GroupNorm32 to avoid PyTorch's channels-last GroupNorm CPU
  kernel, which was off by 8e-4 per UNet call on these images (see guided_diffusion/nn.py).
- batch 4 vs batch 1 (translate_batch): within 1e-5 on the CPU (measured 1.2e-6 DDIM, 7.2e-7 DDPM),
  1e-4 on CUDA; DDPM with seed 1 differs by up to 1.29.
- torch.compile vs eager: within 1e-4.
No test asserts a timing. The CPU runs on one thread (faster for tiny networks, and immune to a
loaded machine); the thread count is restored afterwards.
"""
import copy
import os

import numpy as np
import pytest
import torch as th
from cpu_helpers import have_cxx_compiler, one_thread, redraw_zero_layers  # noqa: F401  (one_thread is autouse)

from guided_diffusion.anomaly import anomaly_map, otsu_mask
from guided_diffusion.datasets.loaders import create_dataset
from guided_diffusion.guidance import classifier_guided, make_cond_fn
from guided_diffusion.pipeline.devices import autocast_for, compile_network, wrap_network
from guided_diffusion.pipeline.translators import TranslationOptions, image_noise, translate_batch
from guided_diffusion.pipeline.methods.diffusion import TrainLoop
from guided_diffusion.pipeline.methods.diffusion import SampleConfig
from guided_diffusion.pipeline.train import TrainConfig
from guided_diffusion.script_util import (
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.util.flags import RunFlags, SpeedFlags
from guided_diffusion.util.flagspec import parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "brats")
CPU = th.device("cpu")
L = 10
SCALE = 100.0

MODEL_FLAGS = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                   num_heads=1, class_cond=True, learn_sigma=True, use_scale_shift_norm=False, diffusion_steps=100)
CLASSIFIER_FLAGS = dict(image_size=64, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                        classifier_attention_resolutions="16", classifier_num_head_channels=32)


CUDA = th.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    """On CUDA, fp32 means fp32 here: TensorFloat-32 (torch's default for convolutions) is off."""
    if not CUDA:
        yield
        return
    saved = th.backends.cuda.matmul.allow_tf32, th.backends.cudnn.allow_tf32
    th.backends.cuda.matmul.allow_tf32 = th.backends.cudnn.allow_tf32 = False
    yield
    th.backends.cuda.matmul.allow_tf32, th.backends.cudnn.allow_tf32 = saved


def _redraw_zero_layers(net):
    return redraw_zero_layers(net).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def cpu_nets():
    th.manual_seed(0)
    flags = model_and_diffusion_defaults()
    flags.update(MODEL_FLAGS)
    model, diffusion = create_model_and_diffusion(**flags)
    flags = classifier_defaults()
    flags.update(CLASSIFIER_FLAGS)
    classifier = create_classifier(**flags)
    return _redraw_zero_layers(model), diffusion, _redraw_zero_layers(classifier)


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    return th.device(request.param)


@pytest.fixture(scope="module")
def nets(cpu_nets, device):
    model, diffusion, classifier = cpu_nets
    if device.type == "cpu":
        return cpu_nets
    return copy.deepcopy(model).to(device), diffusion, copy.deepcopy(classifier).to(device)


@pytest.fixture(scope="module")
def slices(device):
    ds = create_dataset(os.path.join(DATA, "testing"), "brats", 64, label_dir=os.path.join(DATA, "test_labels"))
    x = th.stack([ds[i][0] for i in range(len(ds))])  # (8, 4, 64, 64) in [0, 1]
    return x.to(device), list(ds.ids)


def translate(nets, x, ids, precision="fp32", channels_last=False, batch_size=8, noise_level=L, compile=False,
              seed=0, use_ddim=True):
    model, diffusion, classifier = nets
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=th.channels_last)
        classifier = copy.deepcopy(classifier).to(memory_format=th.channels_last)
    autocast = autocast_for(x.device, precision)
    model_fn = wrap_network(compile_network(model, x.device) if compile else model, autocast, channels_last)
    guided = classifier_guided(model_fn, classifier, SCALE, autocast=autocast)
    options = TranslationOptions(noise_level, use_ddim=use_ddim)
    return th.cat([translate_batch(guided, diffusion, x[i:i + batch_size],
                                   image_noise(seed, ids[i:i + batch_size], x.device), options)
                   for i in range(0, len(x), batch_size)])


def otsu_masks(x, healthy):
    return np.stack([otsu_mask(a) for a in anomaly_map(x.cpu(), healthy.cpu()).numpy()])


@pytest.fixture(scope="module")
def fp32_reference(nets, slices):
    x, ids = slices
    return translate(nets, x, ids)


@pytest.fixture(scope="module")
def other_seed(nets, slices):
    """The fp32 translation with seed 1: how far a path with other noise (or a wrong network) lands."""
    x, ids = slices
    return translate(nets, x, ids, seed=1)


def per_image_mean_difference(a, b) -> th.Tensor:
    return (a - b).abs().flatten(1).mean(1)  # (B,)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_translation_close_to_fp32_and_same_masks(nets, slices, fp32_reference, other_seed,
                                                                  precision):
    x, ids = slices
    if precision == "fp16" and x.device.type == "cpu":
        pytest.skip("float16 on the CPU is emulated (about 20 times slower than fp32): CUDA only")
    healthy = translate(nets, x, ids, precision=precision)
    assert healthy.dtype == th.float32 and healthy.shape == x.shape
    # rounding moves each image by a small fraction of what other noise moves it (see the docstring)
    rounding = per_image_mean_difference(healthy, fp32_reference)
    seeds = per_image_mean_difference(other_seed, fp32_reference)
    assert rounding.max() <= 0.1 * seeds.min(), (rounding.tolist(), seeds.tolist())
    largest, largest_seeds = (healthy - fp32_reference).abs().max(), (other_seed - fp32_reference).abs().max()
    assert largest <= 0.2 * largest_seeds, (largest.item(), largest_seeds.item())
    differ = (otsu_masks(x, healthy) != otsu_masks(x, fp32_reference)).mean()
    assert differ <= 0.04, f"{differ:.2%} of the Otsu mask pixels differ between {precision} and fp32"


def test_channels_last_equals_contiguous(nets, slices, fp32_reference):
    model, diffusion, classifier = nets
    x, ids = slices
    # one call of each network
    t = th.tensor([3, 40, 70, 99, 0, 10, 20, 30], device=x.device)
    y = th.zeros(8, dtype=th.long, device=x.device)
    cl_model = copy.deepcopy(model).to(memory_format=th.channels_last)
    cl_classifier = copy.deepcopy(classifier).to(memory_format=th.channels_last)
    x_cl = x.contiguous(memory_format=th.channels_last)
    with th.no_grad():
        ref, out = model(x, t, y=y), cl_model(x_cl, t, y=y)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    g_ref = make_cond_fn(classifier, SCALE)(x, t, y=y)
    g_cl = make_cond_fn(cl_classifier, SCALE)(x_cl, t, y=y)
    assert (g_cl - g_ref).abs().max().item() <= 1e-5 * max(1.0, g_ref.abs().max().item())
    # the whole translation
    healthy = translate(nets, x, ids, channels_last=True)
    assert (healthy - fp32_reference).abs().max().item() <= 1e-4


def test_batch_of_four_equals_one_at_a_time(nets, slices):
    x, ids = slices
    x, ids = x[:4], ids[:4]
    together = translate(nets, x, ids, batch_size=4, noise_level=5)
    alone = translate(nets, x, ids, batch_size=1, noise_level=5)
    # cuDNN may pick other algorithms for other batch sizes: a looser bound there
    assert (together - alone).abs().max().item() <= (1e-5 if x.device.type == "cpu" else 1e-4)


def test_ddpm_batch_of_four_equals_one_at_a_time(nets, slices):
    # stochastic DDPM translation: each image draws its noise (the q_sample draw and one per step) from
    # its own generator, so its result does not depend on the images sharing its batch
    x, ids = slices
    x, ids = x[:4], ids[:4]
    together = translate(nets, x, ids, batch_size=4, noise_level=5, use_ddim=False)
    alone = translate(nets, x, ids, batch_size=1, noise_level=5, use_ddim=False)
    assert (together - alone).abs().max().item() <= (1e-5 if x.device.type == "cpu" else 1e-4)
    # and the draws are the images' own: seed 1 gives other results
    other = translate(nets, x, ids, batch_size=4, noise_level=5, use_ddim=False, seed=1)
    assert (other - together).abs().max().item() > 0.05


def test_precision_flag_rejects_unknown_values(cpu_nets, tmp_path):
    with pytest.raises(ValueError, match="--precision 'fp64'"):
        autocast_for(CPU, "fp64")
    model, diffusion, classifier = cpu_nets
    with pytest.raises(ValueError, match="--precision"):
        TrainLoop(copy.deepcopy(model), diffusion, lambda start: iter(()),
                  TrainConfig(run=RunFlags(log_dir=str(tmp_path), progress=False), speed=SpeedFlags(precision="half")))
    # the translation script's flag, with real checkpoint files
    th.save(model.state_dict(), tmp_path / "model.pt")
    th.save(classifier.state_dict(), tmp_path / "classifier.pt")
    argv = [f"--{k}={v}" for k, v in {**MODEL_FLAGS, **CLASSIFIER_FLAGS}.items()]
    with pytest.raises(ValueError, match="--precision 'bf8'"):
        parse_flags(SampleConfig, argv + [
            "--data_dir", os.path.join(DATA, "testing"), "--label_dir", os.path.join(DATA, "test_labels"),
            "--model_path", str(tmp_path / "model.pt"), "--classifier_path", str(tmp_path / "classifier.pt"),
            "--output_dir", str(tmp_path / "out"), "--noise_level", "2", "--precision", "bf8", "--progress", "False",
            "--device", "cpu"])


def test_compiled_unet_translation_equals_eager(nets, slices):
    # compile_network, as --compile True uses it (inductor freezing on the CPU). Three slices in
    # batches of 2: the last batch of one compiles a second graph. Compiling the tiny UNet twice takes
    # about 30-60 s on 2 CPU cores (less with inductor's cache warm).
    x, ids = slices
    if x.device.type == "cpu" and not have_cxx_compiler():
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    x, ids = x[:3], ids[:3]
    eager = translate(nets, x, ids, batch_size=2, noise_level=3)
    compiled = translate(nets, x, ids, batch_size=2, noise_level=3, compile=True)
    assert (compiled - eager).abs().max().item() <= 1e-4
