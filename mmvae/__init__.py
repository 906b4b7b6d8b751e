"""mmvae: multimodal VAEs with shared and private latents."""
__version__ = "0.1.0"

from .errors import CheckpointError, InputError  # noqa: E402
from .modality import Modality  # noqa: E402
from .model import MultimodalVAE  # noqa: E402
from .trainer import Trainer  # noqa: E402


def load(path, modalities=None, map_location="cpu"):
    """A trained model back from a checkpoint file or run folder, rebuilt from the configuration stored in it."""
    from .checkpoint import load_model
    from .model import MultimodalVAE

    return load_model(path, builder=lambda cfg: MultimodalVAE.from_config(cfg, modalities), map_location=map_location)


__all__ = ["Modality", "MultimodalVAE", "Trainer", "load", "InputError", "CheckpointError", "__version__"]
