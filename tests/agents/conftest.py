"""Shared fixtures of the agent tests: one embedded backbone for the whole session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # Small networks on a shared 2-core box: one intra-op thread is faster and steadier.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def backbone():
    from commit_env.backbones import load_backbone

    return load_backbone("tiny")  # held for the session so every env shares it via the cache
