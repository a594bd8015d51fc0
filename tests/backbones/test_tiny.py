"""The embedded backbones: tokenizer, loading, quality bars, headroom, the trainer.

``tiny`` (the default, trained on qa/math/code) keeps its v0.1 bar on those families. The
issue-10 bars below apply to ``tiny-testbed``, the checkpoint trained on every family.

Quality bar (issue 10, item 3), on fresh seeds, greedy, each family's default G:
- one token per step by confidence scores >= 0.90 on every family (200 examples in the slow test,
  50 in the fast one with sampling slack);
- all tokens in one step scores <= 0.20 on every multi-answer family (200 examples; sudoku counts
  only puzzles with several solutions);
- headroom: on >= 3 new families the (reference-consistent) EGP oracle reaches the sequential
  score within 1 point with at most half the NFE of the best heuristic that also reaches it.
"""

import dataclasses
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from commit_env.backbones import load_backbone
from commit_env.backbones.tiny import (
    DEFAULT_MIX,
    MIXES,
    TinyBackboneTrainConfig,
    build_tiny_tokenizer,
    corpus_tasks,
    make_training_batch,
)
from commit_env.decoding import DecodeConfig
from commit_env.evaluate import evaluate_policy, sample_examples
from commit_env.policies import make_policy
from commit_env.tasks import get_task

OLD_FAMILIES = ("qa", "math", "code")
NEW_FAMILIES = (
    "copy",
    "reverse",
    "sort",
    "shuffle",
    "insert:index",
    "insert:any",
    "remove:index",
    "remove:any",
    "replace:index",
    "replace:any",
    "latin",
    "sudoku",
    "qa:list",
)
MULTI_ANSWER = ("shuffle", "insert:any", "remove:any", "replace:any", "latin", "sudoku", "qa:list")
# Where the oracle needs at most half the NFE of these heuristics on 50 examples (stage 10:
# insert:any 2.52 vs 8.02, remove:any 2.54 vs 9.32, replace:any 1.98 vs 8.22, latin 3.50 vs 10.84;
# sudoku no longer does: 1.28 vs 2.20 for threshold 0.9, which reaches the sequential score there).
HEADROOM_FAMILIES = ("insert:any", "remove:any", "replace:any", "latin")
# A few of the swept heuristics (the slow test sweeps them all): the fast ones at each quality.
FAST_HEURISTICS = (
    ("threshold", {"threshold": 0.9}),
    ("threshold", {"threshold": 0.99}),
    ("factor", {"factor": 1.0}),
    ("eb", {"gamma": 0.1}),
)
SEED = 20261130  # fresh: the trainer draws its corpus from seed 0


def test_tokenizer_round_trips_task_text():
    tok = build_tiny_tokenizer()
    text = "f(x,y)=3x+2y+1:x*3+2*y+1 sudoku 1_34;3_12:"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert len({tok.pad_token_id, tok.mask_token_id, tok.eos_token_id}) == 3


def test_embedded_backbone_loads_fast_offline_and_small():
    load_backbone("tiny", cache=False)  # imports transformers once
    for name in ("tiny", "tiny-testbed"):
        start = time.perf_counter()
        backbone = load_backbone(name, cache=False)
        assert time.perf_counter() - start < 2.0
        assert backbone.mask_token_id != backbone.pad_token_id
        assert backbone.vocab_size == len(build_tiny_tokenizer())
    from importlib.resources import files

    for name in ("tiny", "tiny-testbed"):
        data = files("commit_env.backbones") / "data" / name
        assert sum(f.stat().st_size for f in data.iterdir() if f.is_file()) <= 20 * 2**20  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tiny():
    """The testbed checkpoint (the issue-10 bars)."""
    return load_backbone("tiny-testbed")


@pytest.fixture(scope="module")
def tiny_default():
    return load_backbone("tiny")


@pytest.mark.parametrize("family", OLD_FAMILIES)
def test_default_backbone_quality_bar_on_its_families(tiny_default, family):
    # The v0.1 bar of the default checkpoint: one token per step >= 0.85 (0.80 with the sampling
    # slack of 60 examples) at G=16.
    ev = evaluate_policy(
        tiny_default,
        get_task(family),
        make_policy("topk"),
        DecodeConfig(gen_length=16),
        n=60,
        seed=11,
    )
    assert ev.scores.mean() >= 0.8


def test_default_backbone_collapses_all_at_once(tiny_default):
    collapsed = 0
    for family in OLD_FAMILIES:
        task = get_task(family)
        seq = evaluate_policy(
            tiny_default, task, make_policy("topk"), DecodeConfig(gen_length=16), n=40, seed=12
        ).scores.mean()
        once = evaluate_policy(
            tiny_default,
            task,
            make_policy("topk", k=16),
            DecodeConfig(gen_length=16),
            n=40,
            seed=12,
        ).scores.mean()
        collapsed += once <= seq / 2
    assert collapsed >= 2


def _evaluate(backbone, family, policy, n, **kwargs):
    task = get_task(family)
    config = DecodeConfig(gen_length=task.default_gen_length)
    examples = kwargs.pop("examples", None) or sample_examples(task, n, SEED)
    return evaluate_policy(
        backbone, task, policy, config, examples=examples, batch_size=len(examples)
    )


# The testbed checkpoint (8000 steps on DEFAULT_MIX, 8000 + 4000 + 8000 on FOCUS_MIX, 8000 + 8000 on
# REPAIR_MIX, 8000 on LISTS_MIX and 8000 on DISTINCT_MIX, 8000 on LISTS_MIX at lr 1e-4, then 5000 on
# ENDS_MIX at lr 1e-4, about 9.5 hours on one shared CPU core) meets both bars on every family; a
# family that misses a bar is listed here with its measurement (200 fresh examples, seed SEED,
# greedy, default G) and stays visible as an xfail instead of a weakened bar (earlier checkpoints:
# latin 0.02 -> 0.975 with the focus stages, replace:any 0.44 -> 0.965 and code 0.825 -> 1.0 with
# the repair stages, qa:list 0.56 -> 0.79 -> 0.94 with the lists/distinct stages, 0.90 after the
# ends stage).
SEQUENTIAL_MISSED: dict[str, float] = {}
# remove:any collapsed all at once only after the ends stage (0.75 -> 0.085): trained on a uniform
# removal index, the per-position argmax removes the middle item, a valid answer.
ALL_AT_ONCE_MISSED: dict[str, float] = {}


def _bar(family, missed, bar):
    if family not in missed:
        return family
    reason = f"issue-10 bar {bar} missed: measured {missed[family]} on 200 examples, seed {SEED}"
    return pytest.param(family, marks=pytest.mark.xfail(reason=reason, strict=False))


SMOKE_MISSED = {f: v for f, v in SEQUENTIAL_MISSED.items() if v < 0.80}


@pytest.mark.parametrize(
    "family", [_bar(f, SMOKE_MISSED, 0.90) for f in OLD_FAMILIES + NEW_FAMILIES]
)
def test_quality_bar_sequential_fast(tiny, family):
    # A smoke check on 50 fresh examples (0.80: the 0.90 bar minus sampling slack at n=50);
    # the slow test below checks the bar itself on 200.
    score = _evaluate(tiny, family, make_policy("topk"), 50).scores.mean()
    assert score >= 0.80


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", [_bar(f, SEQUENTIAL_MISSED, 0.90) for f in OLD_FAMILIES + NEW_FAMILIES]
)
def test_quality_bar_sequential_200(tiny, family):
    assert _evaluate(tiny, family, make_policy("topk"), 200).scores.mean() >= 0.90


def _several_solutions(family, examples):
    if family != "sudoku":
        return examples
    task = get_task("sudoku")
    return [e for e in examples if task.num_solutions(e) > 1]


@pytest.mark.parametrize("family", [_bar(f, ALL_AT_ONCE_MISSED, 0.20) for f in MULTI_ANSWER])
def test_quality_bar_all_at_once_collapses(tiny, family):
    task = get_task(family)
    examples = _several_solutions(family, sample_examples(task, 200, SEED))
    assert len(examples) >= 20  # about 13% of sudoku puzzles have several solutions
    once = make_policy("topk", k=task.default_gen_length)
    ev = _evaluate(tiny, family, once, len(examples), examples=examples)
    assert (ev.result.nfe == 1).all()
    assert ev.scores.mean() <= 0.20


def _headroom(backbone, family, n, heuristics):
    """(sequential score, oracle score, oracle NFE, best reaching heuristic NFE, its label)."""
    examples = sample_examples(get_task(family), n, SEED)
    sequential = _evaluate(backbone, family, make_policy("topk"), n, examples=examples)
    seq = sequential.scores.mean()
    reference = sequential.result.tokens  # = reference_tokens(...): the sequential decode
    oracle = make_policy("oracle", reference=reference, consistent=True)
    ev = _evaluate(backbone, family, oracle, n, examples=examples)
    reaching = [
        (float(sequential.result.nfe.float().mean()), "sequential")
    ]  # reaches by definition
    for name, params in heuristics:
        h = _evaluate(backbone, family, make_policy(name, **params), n, examples=examples)
        if h.scores.mean() >= seq - 0.01:
            reaching.append((float(h.result.nfe.float().mean()), f"{name}{params}"))
    best = min(reaching, default=(float("inf"), "none"))
    return seq, ev.scores.mean(), float(ev.result.nfe.float().mean()), *best


def test_headroom_fast(tiny):
    wins = {}
    for family in HEADROOM_FAMILIES:
        seq, oracle, oracle_nfe, best_nfe, label = _headroom(tiny, family, 50, FAST_HEURISTICS)
        assert oracle >= seq - 0.01, f"{family}: oracle {oracle:.3f} < sequential {seq:.3f}"
        wins[family] = (round(oracle_nfe, 2), round(best_nfe, 2), label)
    assert all(o <= b / 2 for o, b, _ in wins.values()), wins


@pytest.mark.slow
def test_headroom_against_every_swept_heuristic(tiny):
    from commit_env.evaluation.sweeps import heuristic_grid

    wins = {}
    for family in NEW_FAMILIES:
        G = get_task(family).default_gen_length
        specs = [s for s in heuristic_grid(G) if s.name != "oracle" and s.family != "sequential"]
        heuristics = [(s.name, dict(s.params)) for s in specs]
        seq, oracle, oracle_nfe, best_nfe, label = _headroom(tiny, family, 200, heuristics)
        if oracle >= seq - 0.01 and oracle_nfe <= best_nfe / 2:
            wins[family] = (round(oracle_nfe, 2), round(best_nfe, 2), label)
    assert len(wins) >= 3, wins


def test_corpus_covers_every_family_at_g_and_2g():
    tasks, weights = corpus_tasks()
    names = [name for name, _ in DEFAULT_MIX]
    assert set(OLD_FAMILIES + NEW_FAMILIES) <= set(names)
    assert weights.sum() == pytest.approx(1.0)
    heavy = dict(zip(names, weights, strict=True))
    assert heavy["sudoku"] > heavy["qa"] and heavy["latin"] > heavy["copy"]
    tok = build_tiny_tokenizer()
    buckets = make_training_batch(
        np.random.default_rng(0), tasks, tok, 256, weights=weights, micro_batches=4
    )
    assert len(buckets) == 4
    lengths = [int(b["attention_mask"].sum(-1).max()) for b in buckets]
    assert lengths == sorted(lengths)  # rows bucketed by length
    assert max(lengths) <= TinyBackboneTrainConfig().max_position_embeddings
    for b in buckets:
        target = b["labels"] != -100
        assert target.any(-1).all() and (b["input_ids"][target] == tok.mask_token_id).all()
    # generation regions end with EOS padding up to 2G
    eos = tok.eos_token_id
    n_eos = torch.cat([(b["input_ids"] == eos).sum(-1) for b in buckets])
    assert n_eos.max() >= 24


def test_ends_answer_mode_trains_on_the_first_or_last_valid_answer_only():
    (task,), _ = corpus_tasks((("remove:any@ends", 1.0),))
    plain = get_task("remove:any")
    rng = np.random.default_rng(3)
    example = task.sample(rng)
    answers = [",".join(a) for a in plain.valid_answers(example)]
    drawn = {task.sample_answer(example, rng) for _ in range(200)}
    assert drawn == {answers[0], answers[-1]}  # both modes, nothing in between
    # everything else is the family's own: prompt, verifier, generation length
    assert task.name == "remove" and task.default_gen_length == plain.default_gen_length
    assert task.score(example, answers[len(answers) // 2]) == 1.0
    assert "remove:any@ends" in dict(MIXES["ends"])


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
    train_tiny_backbone(dataclasses.replace(cfg, out=str(tmp_path / "b"), log_dir=None))
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    backbone = load_backbone(f"hf:{tmp_path / 'a'}", cache=False)
    out = backbone.forward(torch.tensor([[5, 6, 1, 1]]), torch.ones(1, 4, dtype=torch.long))
    assert out.logits.shape == (1, 4, backbone.vocab_size)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_rsqrt_schedule_does_not_depend_on_the_step_count():
    # So the checkpoint saved at step s of a long run equals a run with steps=s (same seeds).
    from commit_env.backbones.tiny import _lr_at

    short, long_ = TinyBackboneTrainConfig(steps=300), TinyBackboneTrainConfig(steps=9000)
    assert [_lr_at(s, short) for s in range(300)] == [_lr_at(s, long_) for s in range(300)]
    peak = max(_lr_at(s, short) for s in range(300))
    assert peak == pytest.approx(short.lr) and _lr_at(299, short) < peak
    cosine = dataclasses.replace(short, schedule="cosine")
    assert _lr_at(299, cosine) == pytest.approx(short.lr / 10, rel=0.05)


def test_bad_train_config():
    with pytest.raises(ValueError, match="p_default_gen"):
        TinyBackboneTrainConfig(p_default_gen=0.9, p_double_gen=0.2)
    with pytest.raises(ValueError, match="divisible"):
        TinyBackboneTrainConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="schedule"):
        TinyBackboneTrainConfig(schedule="nope")
    with pytest.raises(ValueError, match="micro_batches"):
        TinyBackboneTrainConfig(batch_size=4, micro_batches=5)
    with pytest.raises(ValueError, match="unknown task"):
        corpus_tasks((("nope", 1.0),))
    with pytest.raises(ValueError, match="unknown answer mode 'middle'.*'ends'"):
        corpus_tasks((("remove:any@middle", 1.0),))
    with pytest.raises(ValueError, match="valid answers by index.*'shuffle'"):
        corpus_tasks((("shuffle@ends", 1.0),))
