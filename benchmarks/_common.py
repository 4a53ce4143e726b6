"""Helpers shared by the benchmarks: network presets, devices, timers, peak memory, machine info.

The presets are the original README's flags (SPEC section 6a); ``--tiny`` swaps in the small
networks of the tests so that ``make bench`` finishes in about a minute on a laptop CPU.
Weights are random but seeded; the layers that guided diffusion initialises to zero (the last
convolution of every residual branch and of the UNet) are re-drawn with their layer's default
initialisation, so that the networks' outputs, and hence timing and precision differences,
are not trivially zero.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import time

import torch as th

from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)

# SPEC section 6a: MODEL_FLAGS, DIFFUSION_FLAGS and CLASSIFIER_FLAGS of the original README
README_PRESETS = dict(
    num_channels=128, class_cond=True, num_res_blocks=2, num_heads=1, learn_sigma=True,
    use_scale_shift_norm=False, attention_resolutions="16",
    diffusion_steps=1000, noise_schedule="linear", rescale_learned_sigmas=False, rescale_timesteps=False,
    classifier_attention_resolutions="32,16,8", classifier_depth=4, classifier_width=32,
    classifier_pool="attention", classifier_resblock_updown=True, classifier_use_scale_shift_norm=True,
    dataset="brats",
)
# the networks of tests/test_pipeline.py
TINY_PRESETS = dict(
    num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
    classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
    classifier_attention_resolutions="16", classifier_num_head_channels=32,
)


def add_network_flags(parser: argparse.ArgumentParser) -> None:
    """Every model/classifier/diffusion flag of the scripts, defaulting to the README presets.

    ``--image_size`` and ``--classifier_num_head_channels`` default to "auto" (see :func:`network_flags`).
    """
    defaults = model_and_diffusion_defaults()
    defaults.update(classifier_defaults())
    defaults.update(README_PRESETS)
    defaults["image_size"] = 0  # 0: 256 on CUDA, 64 on the CPU
    defaults["classifier_num_head_channels"] = 0  # 0: 64, or 32 where 64 does not divide the widths
    add_dict_to_argparser(parser, defaults)
    parser.add_argument("--tiny", action="store_true",
                        help="small networks (those of the tests) instead of the README presets")
    parser.add_argument("--model_path", default="", help="optional UNet checkpoint instead of random weights")
    parser.add_argument("--classifier_path", default="", help="optional classifier checkpoint")


def network_flags(args: argparse.Namespace, device: th.device) -> dict:
    """The resolved flags (a dict) after ``--tiny`` and the automatic defaults."""
    flags = dict(vars(args))
    if args.tiny:
        flags.update(TINY_PRESETS)
    if not flags["image_size"]:
        flags["image_size"] = 256 if device.type == "cuda" else 64
    if not flags["classifier_num_head_channels"]:
        # at 64x64 the classifier's widths are 32, 64, 96, 128: heads of 64 channels do not split 96
        flags["classifier_num_head_channels"] = 64 if flags["image_size"] == 256 else 32
    return flags


def _redraw_zero_layers(net: th.nn.Module) -> None:
    for module in net.modules():
        params = list(module.parameters(recurse=False))
        if params and hasattr(module, "reset_parameters") and all(not p.any() for p in params):
            module.reset_parameters()


def build_networks(flags: dict, device: th.device, seed: int = 0):
    """(model, diffusion, classifier) in eval mode on ``device``, gradients off, seeded random weights
    (or the checkpoints of ``model_path`` / ``classifier_path``)."""
    from guided_diffusion.unet_forensics import load_state_dict_into

    th.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**args_to_dict_from(flags, model_and_diffusion_defaults()))
    classifier = create_classifier(**args_to_dict_from(flags, classifier_defaults()))
    for net, path, what in ((model, flags.get("model_path"), "diffusion model"),
                            (classifier, flags.get("classifier_path"), "classifier")):
        if path:
            load_state_dict_into(net, path, what)
        else:
            _redraw_zero_layers(net)
        net.to(device).eval().requires_grad_(False)
    return model, diffusion, classifier


def args_to_dict_from(flags: dict, defaults: dict) -> dict:
    return args_to_dict(argparse.Namespace(**flags), defaults.keys())


def pick_device(name: str) -> th.device:
    if name:
        return th.device(name)
    return th.device("cuda" if th.cuda.is_available() else "cpu")


def sync(device: th.device) -> None:
    if device.type == "cuda":
        th.cuda.synchronize(device)


def now(device: th.device) -> float:
    """A wall-clock reading after all queued work on ``device`` has finished."""
    sync(device)
    return time.perf_counter()


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so that the next path's resident-set
    peak starts from what is really in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the
    process's resident-set high-water mark (VmHWM of /proc/self/status, reset through
    /proc/self/clear_refs before the block; where that is impossible, ru_maxrss since the start).
    """

    def __init__(self, device: th.device):
        self.device = device
        self.kind = ""
        self.peak_mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            th.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
        else:
            _release_free_memory()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.kind = "process RSS peak (VmHWM, reset per path)"
            except OSError:
                self.kind = "process RSS peak (ru_maxrss, since start)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mib = th.cuda.max_memory_allocated(self.device) / 2**20
        elif "VmHWM" in self.kind:
            with open("/proc/self/status") as f:
                line = next(l for l in f if l.startswith("VmHWM:"))
            self.peak_mib = int(line.split()[1]) / 1024
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


def machine_info(device: th.device) -> dict:
    """Device, CPU model, threads, torch version and the load average at the time."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": th.get_num_threads(),
            "torch": th.__version__, "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = th.cuda.get_device_name(device)
        info["cuda"] = th.version.cuda
        info["tf32_matmul"] = th.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = th.backends.cudnn.allow_tf32
    return info


def write_json(result: dict, path: str) -> None:
    """Write ``result`` as one JSON line to ``path`` (if given), through a temporary file."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(result) + "\n")
    os.replace(tmp, path)


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` holds (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], fmt)) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
