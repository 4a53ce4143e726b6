"""What the pieces of the training scaffold (:mod:`guided_diffusion.pipeline.train`) share: a piece
names its networks (the checkpoint files), its parameter groups (one AdamW each) and computes its losses
from the step's batch and the scaffold's draws for the global batch. :class:`OneNetworkPiece` is the base
of the pieces with one network. Each method's piece is in its module (:mod:`.methods`): the diffusion
UNet's and the noise-aware classifier's (guided diffusion's ``TrainLoop`` and ``ClassifierTrainLoop``) in
:mod:`.methods.diffusion`, each baseline's in its own.
"""
from __future__ import annotations

import torch as th

from .train import Piece


class OneNetworkPiece(Piece):
    """A piece with one network ``net`` (file prefix ``model``), one optimizer (``opt``), wrapped in DDP."""

    net: th.nn.Module

    def modules(self):
        return {"model": self.net}

    def param_groups(self):
        return {"opt": (list(self.net.parameters()), {})}

    def main_module(self):
        return self.net


