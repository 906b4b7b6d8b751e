"""Published multimodal VAEs as presets over the core parts (`presets.py`), and `build` for the CLI."""
from .presets import (
                      PRESETS,
                      avg,
                      build,
                      default_modalities,
                      dmvae,
                      independent,
                      mmvae,
                      mmvaeplus,
                      mmvm,
                      mmvm_paper,
                      modality_embeddings,
                      mopoe,
                      mvae,
)

__all__ = ["PRESETS", "build", "default_modalities", "modality_embeddings", "mvae", "mmvae", "mopoe", "mmvm",
           "mmvm_paper", "mmvaeplus", "dmvae", "independent", "avg"]
