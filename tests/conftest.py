"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and on a busy 2-core machine far faster (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory):
    """The suite's own user cache folder (built datasets, shared classifiers), never the user's ~/.cache/mmvae."""
    import os

    before = os.environ.get("MMVAE_CACHE")
    os.environ["MMVAE_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if before is None:
        os.environ.pop("MMVAE_CACHE", None)
    else:
        os.environ["MMVAE_CACHE"] = before
