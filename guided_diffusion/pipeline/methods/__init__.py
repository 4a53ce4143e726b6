"""The registry of methods: what the scripts, tune.py's bundles, the driver's plans, compare.py's rows
and :mod:`..commands` read.

A *method* (:class:`Method`) is one way to detect anomalies end to end, one row of the comparison. Its
module holds what is the method's own: its flag groups, its configs, its networks' factory and checkpoint
hint, its training piece, its run functions and translator, its demo stages as data (:class:`Demo`).
Adding a method is one new module and one line below. A family that shares its scripts declares several
methods on its shared module (:mod:`.diffusion`: :mod:`.paper`, :mod:`.cfg`, :mod:`.simplex`). What every
method shares stays shared: the training scaffold (:mod:`..train`), the translation loop (:mod:`..translate`),
checkpoints (:mod:`..networks`), scoring (:mod:`..evaluate`) and the steps of :mod:`..runs`.
"""
from . import cfg, dae, fpgan, intensity, paper, simplex, vae
from .base import Checkpoint, Command, Demo, DemoFlag, Method, Training

METHODS: dict[str, Method] = {m.key: m for m in (
    *paper.METHODS,
    cfg.METHOD,
    simplex.METHOD,
    dae.METHOD,
    vae.METHOD,
    fpgan.METHOD,
    intensity.METHOD,
)}
"""Every method by its key, in the order of the comparison's rows (those ``make demo`` runs too first)."""

__all__ = ["Checkpoint", "Command", "Demo", "DemoFlag", "Method", "METHODS", "Training"]
