"""The registry of methods: what the scripts, tune.py's bundles, the driver's plans, compare.py's rows
and :mod:`..commands` read.

A *method* (:class:`Method`) is one module here holding what is the method's own: its flag groups,
its configs, its networks' factory and checkpoint hint, its training piece, its run functions and
translator, its demo flags. Adding a method is one new module and one line below. What every method
shares stays shared: the training scaffold (:mod:`..train`), the translation loop (:mod:`..translate`),
checkpoints (:mod:`..networks`), scoring (:mod:`..evaluate`) and the steps of :mod:`..runs`.
"""
from . import dae, diffusion, fpgan, intensity, vae
from .base import Command, Demo, Method

METHODS: dict[str, Method] = {m.key: m for m in (
    diffusion.METHOD,
    dae.METHOD,
    vae.METHOD,
    fpgan.METHOD,
    intensity.METHOD,
)}
"""Every method by its key, in the order of the comparison's rows."""

__all__ = ["Command", "Demo", "Method", "METHODS"]
