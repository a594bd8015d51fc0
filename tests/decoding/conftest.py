"""Fixtures of the decoding tests: a fake backbone, a counting wrapper, a tiny real BERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from decoding_fakes import CountingBackbone, FakeBackbone


@pytest.fixture
def fake() -> FakeBackbone:
    """A fresh deterministic fake backbone (V=12, H=8)."""
    return FakeBackbone()


@pytest.fixture
def counting(fake: FakeBackbone) -> CountingBackbone:
    """The fake backbone behind a wrapper that records every forward call."""
    return CountingBackbone(fake)


@pytest.fixture(scope="session")
def tiny_bert_dir(random_backbone_dir: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the embedded char tokenizer."""
    return random_backbone_dir


@pytest.fixture(scope="session")
def hf_backbone(tiny_bert_dir: Path):
    """The tiny BERT loaded through ``load_backbone("hf:<dir>")`` (the real adapter), offline."""
    from commit_env.backbones import load_backbone

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        backbone = load_backbone(f"hf:{tiny_bert_dir}", device="cpu", dtype="float32", cache=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return backbone
