"""`python -m mmvae ...`: the `mmvae` command (as `python -m mmvae.cli`)."""
import sys

from .cli import main

sys.exit(main())
