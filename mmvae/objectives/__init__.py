"""Objectives: turn a model's encodings into a loss with typed terms.

`base.SubsetObjective` owns what every subset objective does first (encode, aggregate, draw subsets and samples,
score every modality); each estimator is a small subclass that only weights those scores:
`ELBO` (the published mixture and sum ELBOs as settings), `IWAE` and `DReG` (importance-weighted bounds).
`regularisers` adds weighted terms of the batch's posterior means (separation, contrastive, geometry) to any of them.
"""
from __future__ import annotations

from ..registry import from_spec
from .base import Draws, ModelOutput, Objective, PrivateDraw, Reconstruction, Settings, SubsetObjective
from .elbo import ELBO
from .iwae import IWAE, DReG, LogWeights
from .regularisers import REGULARISERS, Regulariser, Regularisers, make_regularisers

OBJECTIVES: dict[str, type] = {"elbo": ELBO, "iwae": IWAE, "dreg": DReG}


def make_objective(spec) -> Objective:
    """An objective from an instance, a name ("elbo", "iwae", "dreg") or a config dict; None is the ELBO."""
    return ELBO() if spec is None else from_spec(spec, OBJECTIVES, "objective")


__all__ = ["OBJECTIVES", "make_objective", "Objective", "SubsetObjective", "Settings", "Draws", "ModelOutput",
           "Reconstruction", "PrivateDraw", "ELBO", "IWAE", "DReG", "LogWeights",
           "REGULARISERS", "Regulariser", "Regularisers", "make_regularisers"]
