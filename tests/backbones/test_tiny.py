import time

import pytest
import torch
from safetensors.torch import load_file

from commit_env.backbones import load_backbone
from commit_env.backbones.tiny import TinyBackboneTrainConfig, build_tiny_tokenizer
from commit_env.decoding import DecodeConfig
from commit_env.evaluate import evaluate_policy
from commit_env.policies import make_policy
from commit_env.tasks import EMBEDDED_TASKS, get_task


def test_tokenizer_round_trips_task_text():
    tok = build_tiny_tokenizer()
    text = "f(x,y)=3x+2y+1:x*3+2*y+1"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert len({tok.pad_token_id, tok.mask_token_id, tok.eos_token_id}) == 3


def test_embedded_backbone_loads_fast_and_offline():
    load_backbone("tiny", cache=False)  # imports transformers once
    start = time.perf_counter()
    backbone = load_backbone("tiny", cache=False)
    assert time.perf_counter() - start < 2.0
    assert backbone.mask_token_id != backbone.pad_token_id
    assert backbone.vocab_size == len(build_tiny_tokenizer())


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


@pytest.mark.parametrize("family", EMBEDDED_TASKS)
def test_quality_bar_sequential(tiny, family):
    # One token per step by confidence: the bar is >= 0.85 at the default difficulty.
    ev = evaluate_policy(
        tiny, get_task(family), make_policy("topk"), DecodeConfig(gen_length=16), n=60, seed=11
    )
    assert ev.scores.mean() >= 0.8  # 0.85 bar, minus sampling slack for 60 examples


def test_quality_bar_all_at_once_collapses(tiny):
    collapsed = 0
    for family in EMBEDDED_TASKS:
        task = get_task(family)
        seq = evaluate_policy(
            tiny, task, make_policy("topk"), DecodeConfig(gen_length=16), n=40, seed=12
        ).scores.mean()
        once = evaluate_policy(
            tiny, task, make_policy("topk", k=16), DecodeConfig(gen_length=16), n=40, seed=12
        ).scores.mean()
        collapsed += once <= seq / 2
    assert collapsed >= 2


def test_train_backbone_is_seeded_and_loadable(tmp_path):
    from commit_env.backbones.tiny import train_tiny_backbone

    cfg = TinyBackboneTrainConfig(
        out=str(tmp_path / "a"),
        steps=3,
        batch_size=4,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        log_dir=str(tmp_path / "tb"),
        save_every=2,
    )
    summary = train_tiny_backbone(cfg)
    assert summary["steps"] == 3 and summary["checkpoint_bytes"] > 0
    import dataclasses

    train_tiny_backbone(dataclasses.replace(cfg, out=str(tmp_path / "b"), log_dir=None))
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    backbone = load_backbone(f"hf:{tmp_path / 'a'}", cache=False)
    out = backbone.forward(torch.tensor([[5, 6, 1, 1]]), torch.ones(1, 4, dtype=torch.long))
    assert out.logits.shape == (1, 4, backbone.vocab_size)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bad_train_config():
    with pytest.raises(ValueError):
        TinyBackboneTrainConfig(min_gen=10, max_gen=5)
    with pytest.raises(ValueError):
        TinyBackboneTrainConfig(hidden_size=30, num_heads=4)
