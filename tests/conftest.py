"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def build_random_backbone_dir(path: Path, seed: int = 0) -> Path:
    """Save a tiny random BertForMaskedLM (2 layers, hidden 32) and the embedded char tokenizer."""
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
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # fixed random weights, without disturbing the caller's RNG
    model = BertForMaskedLM(config)
    torch.random.set_rng_state(rng_state)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT checkpoint directory, usable as ``hf:<dir>``."""
    return build_random_backbone_dir(tmp_path_factory.mktemp("random_bert"))


@pytest.fixture(autouse=True)
def _sb3_logdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep SB3's default logger folders out of the system temp dir.

    ``learn()`` without ``tensorboard_log`` creates ``$TMPDIR/SB3-<date>`` unless ``SB3_LOGDIR``
    names a folder; point it at pytest's own (cleaned) temp tree.
    """
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path_factory.getbasetemp() / "sb3-logs"))
