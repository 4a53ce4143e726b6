"""Helpers shared by test modules that run networks on the CPU (imported like visdom_fixture).

    from cpu_helpers import have_cxx_compiler, one_thread  # noqa: F401  (one_thread is autouse)
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch as th

from guided_diffusion.script_util import model_and_diffusion_defaults

# the tiny networks of the training tests (tests/test_train.py) and their multi-process worker
TINY_UNET = {**model_and_diffusion_defaults(), "image_size": 16, "num_channels": 32, "num_res_blocks": 1,
             "channel_mult": "1,2", "attention_resolutions": "8", "num_heads": 1, "learn_sigma": True,
             "class_cond": True, "diffusion_steps": 50}
TINY_CLASSIFIER = dict(image_size=16, classifier_use_fp16=False, classifier_width=32, classifier_depth=1,
                       classifier_attention_resolutions="8", classifier_use_scale_shift_norm=True,
                       classifier_resblock_updown=True, classifier_pool="attention", learn_sigma=False,
                       diffusion_steps=50, noise_schedule="linear", timestep_respacing="", use_kl=False,
                       predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
                       classifier_channel_mult="1,2", classifier_num_head_channels=32)


def have_cxx_compiler() -> bool:
    """torch.compile on the CPU (inductor) builds C++ kernels: is there a compiler to build them?"""
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for the importing module (faster for tiny networks, and immune to a loaded
    machine); the thread count is restored after the module's last test."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def redraw_zero_layers(net: th.nn.Module) -> th.nn.Module:
    """Give the layers that guided diffusion initialises to zero (output convolutions, residual branches)
    random weights, so that outputs and gradients are not trivially zero."""
    for module in net.modules():
        params = list(module.parameters(recurse=False))
        if params and hasattr(module, "reset_parameters") and all(not p.any() for p in params):
            module.reset_parameters()
    return net
