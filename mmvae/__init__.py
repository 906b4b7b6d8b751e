"""mmvae: multimodal VAEs with shared and private latents."""
from .errors import CheckpointError, InputError
from .loading import load
from .modality import Modality
from .model import MultimodalVAE
from .trainer import Trainer
from .version import __version__

__all__ = ["Modality", "MultimodalVAE", "Trainer", "load", "InputError", "CheckpointError", "__version__"]
