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


def build_random_backbone_dir(path: Path, seed: int = 0) -> Path:
    """Save a tiny random BertForMaskedLM and the embedded char tokenizer into ``path``."""
    from transformers import BertConfig, BertForMaskedLM

    from commit_env.backbones.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=1,
        pad_token_id=0,
        eos_token_id=2,
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # test fixture only: fixed random weights
    model = BertForMaskedLM(config)
    torch.random.set_rng_state(gen_state)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The tiny models here are far too small to gain from intra-op threads, and on a shared
    # 2-core machine a second spinning thread makes every forward several times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def random_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_backbone_dir(tmp_path_factory.mktemp("random_bert"))


@pytest.fixture(scope="session")
def backbone_spec(tmp_path_factory: pytest.TempPathFactory):
    """Spec string of the backbone every env test uses (held loaded for the session)."""
    from commit_env.backbones import TINY_BACKBONE_DIR, load_backbone

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    use_tiny = (TINY_BACKBONE_DIR / "config.json").is_file()
    if os.environ.get("COMMIT_ENV_TEST_BACKBONE") == "random" or not use_tiny:
        path = build_random_backbone_dir(tmp_path_factory.mktemp("random_bert_spec"))
        spec = f"hf:{path}"
    else:
        spec = "tiny"
    held = load_backbone(spec, device="cpu")
    yield spec
    del held


@pytest.fixture
def env_kwargs(backbone_spec: str) -> dict:
    """Small, fast settings: qa task, G = 8, CPU."""
    return {"task": "qa", "backbone": backbone_spec, "gen_length": 8, "device": "cpu"}
