"""Fixtures of the environment tests: one shared backbone spec for the whole session.

The embedded ``tiny`` checkpoint is used when it exists (it loads in about a second); otherwise,
or with ``COMMIT_ENV_TEST_BACKBONE=random``, a randomly initialised 2-layer BERT with the embedded
tokenizer is saved to a temp dir and used as ``hf:<dir>``. The session holds a reference to the
loaded backbone so that every env in the tests shares it through ``load_backbone``'s cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The tiny models here are far too small to gain from intra-op threads, and on a shared
    # 2-core machine a second spinning thread makes every forward several times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def backbone_spec(random_backbone_dir: Path):
    """Spec string of the backbone every env test uses (held loaded for the session)."""
    from commit_env.backbones import TINY_BACKBONE_DIR, load_backbone

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    use_tiny = (TINY_BACKBONE_DIR / "config.json").is_file()
    if os.environ.get("COMMIT_ENV_TEST_BACKBONE") == "random" or not use_tiny:
        spec = f"hf:{random_backbone_dir}"
    else:
        spec = "tiny"
    held = load_backbone(spec, device="cpu")
    yield spec
    del held


@pytest.fixture
def env_kwargs(backbone_spec: str) -> dict:
    """Small, fast settings: qa task, G = 8, CPU."""
    return {"task": "qa", "backbone": backbone_spec, "gen_length": 8, "device": "cpu"}
