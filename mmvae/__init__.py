"""mmvae: multimodal VAEs with shared and private latents."""
from .errors import CheckpointError, InputError
from .loading import load
from .modality import Modality, register_likelihood, register_network
from .model import MultimodalVAE
from .trainer import Trainer
from .version import __version__

__all__ = ["Modality", "MultimodalVAE", "Trainer", "load", "register_network", "register_likelihood", "InputError",
           "CheckpointError", "__version__"]
