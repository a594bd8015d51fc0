"""WINO, ReMDM-style remasking and FreeDave: published rules, invariants, lossless drafting."""

from __future__ import annotations

import pytest
import torch
from decoding_fakes import CountingBackbone, FakeBackbone, distinct_prompts

from commit_env.decoding import DecodeConfig, Decoder, decode
from commit_env.evaluate import sample_examples
from commit_env.policies import (
    FreeDavePolicy,
    ReMDMPolicy,
    TopKPolicy,
    WINOPolicy,
    list_policies,
    make_policy,
)
from commit_env.tasks import get_task
from commit_env.tasks.registry import EMBEDDED_TASKS, TESTBED_TASKS


# ----------------------------------------------------------------------------- FreeDave
@pytest.fixture(scope="module")
def tiny():
    from commit_env.backbones import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="module")
def testbed():
    from commit_env.backbones import load_backbone

    return load_backbone("tiny-testbed")


@pytest.mark.parametrize("family", EMBEDDED_TASKS + TESTBED_TASKS)
@pytest.mark.parametrize("which", ["tiny", "testbed"])
def test_freedave_reproduces_sequential_top1_on_every_family(request, family, which):
    backbone = request.getfixturevalue(which)  # the testbed checkpoint is trained on every family
    task = get_task(family)
    prompts = [e.prompt for e in sample_examples(task, 4, seed=1)]
    window = "full" if family in EMBEDDED_TASKS else "block:8"
    config = DecodeConfig(gen_length=task.default_gen_length, window=window)
    sequential = decode(backbone, prompts, TopKPolicy(k=1), config)
    drafted = decode(backbone, prompts, FreeDavePolicy(draft_steps=4), config)
    assert torch.equal(drafted.tokens, sequential.tokens)
    assert (drafted.nfe <= sequential.nfe).all()
    assert int(drafted.nfe.sum()) < int(sequential.nfe.sum())


@pytest.mark.parametrize("window", ["full", "block:3", "sliding:4"])
@pytest.mark.parametrize("eos_bias", [0.0, 2.5])
@pytest.mark.parametrize("K", [1, 2, 5])
def test_freedave_is_lossless_on_the_fake_backbone(window, eos_bias, K):
    backbone = FakeBackbone(eos_bias=eos_bias, scale=6.0)
    prompts = distinct_prompts(6, seed=K)
    config = DecodeConfig(gen_length=9, window=window)
    sequential = decode(backbone, prompts, TopKPolicy(k=1), config, batch_size=4)
    drafted = decode(backbone, prompts, FreeDavePolicy(draft_steps=K), config, batch_size=4)
    assert torch.equal(drafted.tokens, sequential.tokens)
    if K == 1:
        assert torch.equal(drafted.nfe, sequential.nfe)


def test_freedave_accounting_matches_the_real_forwards():
    backbone = CountingBackbone(FakeBackbone(scale=6.0))
    prompts = distinct_prompts(3)
    result = decode(backbone, prompts, FreeDavePolicy(draft_steps=3), DecodeConfig(gen_length=8))
    assert int(result.nfe.max()) == backbone.n_calls  # one forward per step, shared by all rows
    real_tokens = sum(int(c.attention_mask.sum()) for c in backbone.calls)
    assert int(result.forward_tokens.sum()) == real_tokens  # every drafted copy is counted


def test_freedave_rejects_bad_draft_steps():
    with pytest.raises(ValueError, match="draft_steps"):
        FreeDavePolicy(draft_steps=0)


# ----------------------------------------------------------------------------- WINO
def test_wino_defaults_are_the_published_ones():
    p = WINOPolicy()
    assert (p.draft_threshold, p.verify_threshold) == (0.6, 0.9)
    assert (p.cap_fraction, p.cap_min, p.cap_max) == (0.7, 5, 20)
    assert p.decode_config().remask_cap == p.remask_cap > 0


class _Recorder:
    """Wraps a policy and records the masked count and the decision at every step."""

    def __init__(self, policy):
        self.policy = policy
        self.log = []

    def reset(self, state):
        self.policy.reset(state)

    def select(self, state):
        decision = self.policy.select(state)
        self.log.append((state.masked.sum(-1).clone(), decision))
        return decision


@pytest.mark.parametrize("window", ["full", "block:4"])
def test_wino_gains_a_token_every_step_and_remasks_within_its_limit(window):
    backbone = FakeBackbone(scale=1.5)  # low confidence: wide drafts get verified and remasked
    prompts = distinct_prompts(5, seed=2)
    policy = WINOPolicy(draft_threshold=0.2, verify_threshold=0.6)
    recorder = _Recorder(policy)
    config = policy.decode_config(DecodeConfig(gen_length=12, window=window, eos_stop=False))
    decoder = Decoder(backbone, config)
    state = decoder.start(prompts)
    recorder.reset(state)
    step, accepted_before = 0, torch.zeros(5, dtype=torch.long)
    while not state.all_done:
        remasks_before, committed_before = state.remasks.clone(), state.committed.clone()
        state = decoder.step(state, recorder.select(state))
        step += 1
        remasked = state.remasks - remasks_before
        # WINO's limit: at most (tokens accepted by the previous step) - 1 remasks ...
        assert (remasked <= (accepted_before - 1).clamp(min=0)).all()
        accepted_before = (state.committed & ~committed_before).sum(-1)
        # ... so the masked count is at most G - t after t steps (termination within G steps)
        assert (state.masked.sum(-1) <= max(0, 12 - step)).all()
    assert state.committed.all()
    assert int(state.remasks.sum()) > 0, "the setting should exercise narrow-out"
    assert (state.nfe <= 12).all()


def test_wino_leave_one_out_copies_cost_forward_tokens_not_nfe():
    backbone = CountingBackbone(FakeBackbone(scale=1.5))
    prompts = distinct_prompts(3)
    policy = WINOPolicy(draft_threshold=0.2, verify_threshold=0.6)
    config = policy.decode_config(DecodeConfig(gen_length=10))
    result = decode(backbone, prompts, policy, config)
    assert int(result.nfe.max()) == backbone.n_calls
    real_tokens = sum(int(c.attention_mask.sum()) for c in backbone.calls)
    assert int(result.forward_tokens.sum()) == real_tokens
    per_row = (result.forward_tokens / result.nfe).min()
    assert int(result.forward_tokens.sum()) > int(result.nfe.sum()) * int(per_row) - 1


@pytest.mark.parametrize(
    "kwargs", [{"draft_threshold": 1.5}, {"verify_threshold": -0.1}, {"cap_min": 0}]
)
def test_wino_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        WINOPolicy(**kwargs)


# ----------------------------------------------------------------------------- ReMDM
@pytest.mark.parametrize("schedule", ["cap", "rescale", "conf"])
def test_remdm_remasks_finishes_in_its_steps_and_is_seeded(schedule):
    backbone = FakeBackbone()
    prompts = distinct_prompts(4)
    policy = ReMDMPolicy(steps=6, eta=0.5, schedule=schedule, seed=3)
    config = policy.decode_config(DecodeConfig(gen_length=10, eos_stop=False))
    first = decode(backbone, prompts, policy, config)
    again = decode(
        backbone, prompts, ReMDMPolicy(steps=6, eta=0.5, schedule=schedule, seed=3), config
    )
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.remasks, again.remasks)
    assert (first.nfe <= 6).all()
    assert int(first.remasks.sum()) > 0


def test_remdm_eta_zero_never_remasks():
    result = decode(
        FakeBackbone(),
        distinct_prompts(3),
        ReMDMPolicy(eta=0.0),
        DecodeConfig(gen_length=8, remask_cap=1),
    )
    assert int(result.remasks.sum()) == 0


def test_remdm_rejects_bad_schedule():
    with pytest.raises(ValueError, match="schedule"):
        ReMDMPolicy(schedule="loop")


# ----------------------------------------------------------------------------- registry
def test_new_policies_are_registered_and_build_from_strings():
    assert {"wino", "remdm", "freedave"} <= set(list_policies())
    assert make_policy("freedave", draft_steps="6").draft_steps == 6
    assert make_policy("wino", verify_threshold="0.8").verify_threshold == 0.8
    assert make_policy("remdm", steps="none").steps is None


def test_freedave_records_a_trace_of_every_verify_step():
    # Drafted copies keep no trace of their own; the step records the accepted commit and the
    # proposals its one forward produced.
    prompts = distinct_prompts(3)
    config = DecodeConfig(gen_length=8, record_trace=True)
    result = decode(FakeBackbone(scale=6.0), prompts, FreeDavePolicy(draft_steps=3), config)
    (chunk,) = result.trace
    commits = [r["commit"] for r in chunk if "commit" in r]
    # one record per step after the first forward (the last may commit without a forward)
    assert int(result.nfe.max()) - 1 <= len(commits) <= int(result.nfe.max())
    assert all(c.shape == (3, 8) and c.dtype == torch.bool for c in commits)
    assert sum(int(c.sum()) for c in commits) == 3 * 8  # each position committed once
