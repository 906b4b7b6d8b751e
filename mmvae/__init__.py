"""mmvae: multimodal VAEs with shared and private latents."""
from .checkpoint import load_model
from .errors import CheckpointError, InputError
from .modality import Modality
from .model import MultimodalVAE
from .trainer import Trainer
from .version import __version__


def load(path, modalities=None, map_location="cpu"):
    """A trained model back from a checkpoint file or run folder, rebuilt from the configuration stored in it."""
    return load_model(path, builder=lambda cfg: MultimodalVAE.from_config(cfg, modalities), map_location=map_location)


__all__ = ["Modality", "MultimodalVAE", "Trainer", "load", "InputError", "CheckpointError", "__version__"]
