"""Helpers shared by test modules that run networks on the CPU (imported like visdom_fixture).

    from cpu_helpers import have_cxx_compiler, one_thread  # noqa: F401  (one_thread is autouse)
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch as th


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
