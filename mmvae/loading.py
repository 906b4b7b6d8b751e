"""`mmvae.load`: a trained MultimodalVAE back from a checkpoint file or run folder."""
from __future__ import annotations

import copy
import os

import torch

from .checkpoint import load_model
from .errors import CheckpointError
from .modality import Modality
from .model import MultimodalVAE
from .registry import UnregisteredPartError


def _rebuild(cfg, modalities):
    """`MultimodalVAE.from_config`, each stored modality rebuilt under its name (for the error messages)."""
    if modalities is not None and torch.empty(0).is_meta:  # load_model's size probe: build default networks into
        modalities = copy.deepcopy(modalities)  # copies, or the caller's modalities would keep meta networks
    if modalities is None and isinstance(cfg, dict) and isinstance(cfg.get("modalities"), dict):
        modalities = {n: Modality.from_config(c, n) for n, c in cfg["modalities"].items()}
    return MultimodalVAE.from_config(cfg, modalities)


def load(path: str | os.PathLike, modalities=None, map_location: str | torch.device = "cpu") -> MultimodalVAE:
    """The model rebuilt from the configuration stored in the checkpoint, its weights loaded, in eval mode.

    Your own networks and likelihoods are rebuilt by the names they were registered under (`mmvae.register_network`,
    `mmvae.register_likelihood`): register them in this process first. A stored name never imports code.
    modalities: the `Modality` objects, for a model built with unregistered custom networks.
    Raises InputError (also a CheckpointError) naming the modality and the type when a stored type is not registered.
    """
    try:
        return load_model(path, builder=lambda cfg: _rebuild(cfg, modalities), map_location=map_location)
    except CheckpointError as e:
        if isinstance(e.__context__, UnregisteredPartError):  # load_model wraps what the builder raised
            raise UnregisteredPartError(f"{path}: {e.__context__}") from None
        raise
