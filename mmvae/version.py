"""The package version: a leaf module, so that `checkpoint.py` and `setup.cfg` read it without importing mmvae."""
__version__ = "0.1.0"
