"""`mmvae.load`: a trained MultimodalVAE back from a checkpoint file or run folder."""
from __future__ import annotations

import os

import torch

from .checkpoint import load_model
from .model import MultimodalVAE


def load(path: str | os.PathLike, modalities=None, map_location: str | torch.device = "cpu") -> MultimodalVAE:
    """The model rebuilt from the configuration stored in the checkpoint, its weights loaded, in eval mode.

    modalities: the `Modality` objects, for a model built with custom networks (their code is not stored).
    """
    return load_model(path, builder=lambda cfg: MultimodalVAE.from_config(cfg, modalities), map_location=map_location)
