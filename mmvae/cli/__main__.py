"""`python -m mmvae.cli ...` (and `torchrun -m mmvae.cli ...`): the `mmvae` command."""
import sys

from . import main

sys.exit(main())
