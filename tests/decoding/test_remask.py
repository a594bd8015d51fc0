"""Remasking and draft-and-verify in the engine: off by default (bit for bit), limits, accounts."""

from __future__ import annotations

import json

import pytest
import torch
from decoding_fakes import MASK, CountingBackbone, FakeBackbone, distinct_prompts
from golden_decodes import PATH as GOLDEN_PATH
from golden_decodes import run_grid

from commit_env.decoding import CommitDecision, DecodeConfig, Decoder, DraftDecision, decode
from commit_env.policies import TopKPolicy


# ----------------------------------------------------------------------------- off = unchanged
def test_remask_off_reproduces_the_golden_decodes_bit_for_bit():
    assert run_grid() == json.loads(GOLDEN_PATH.read_text())


def test_remask_allowed_but_never_asked_changes_nothing():
    golden = json.loads(GOLDEN_PATH.read_text())
    assert run_grid(remask_cap=3) == golden


def test_remask_while_off_raises(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=6))
    state = decoder.start(distinct_prompts(2))
    remask = torch.zeros(2, 6, dtype=torch.bool)
    remask[0, 0] = True
    with pytest.raises(ValueError, match="remask_cap"):
        decoder.step(state, CommitDecision(state.eligible, remask=remask))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_remask_cap_raises(bad):
    with pytest.raises(ValueError, match="remask_cap"):
        DecodeConfig(remask_cap=bad)


@pytest.mark.parametrize("shape", [(2, 5), (1, 6), (2, 6, 1)])
def test_remask_of_wrong_shape_raises(fake: FakeBackbone, shape):
    decoder = Decoder(fake, DecodeConfig(gen_length=6, remask_cap=1))
    state = decoder.start(distinct_prompts(2))
    with pytest.raises(ValueError, match="remask"):
        decoder.step(
            state, CommitDecision(state.eligible, remask=torch.zeros(shape, dtype=torch.bool))
        )


# ----------------------------------------------------------------------------- semantics
class RandomRemasker:
    """Commits one random eligible position and remasks random committed ones (adversarial)."""

    def __init__(self, seed: int, p: float = 0.6) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.p = p
        self.asked = 0

    def select(self, state):
        B, G = state.batch_size, state.gen_length
        commit = torch.rand(B, G, generator=self.gen) < 0.3
        remask = torch.rand(B, G, generator=self.gen) < self.p  # any bits, valid or not
        self.asked += int((remask & ~state.done[:, None] & (state.nfe > 0)[:, None]).sum())
        return CommitDecision(commit, remask=remask)


@pytest.mark.parametrize("window", ["full", "block:3", "sliding:4"])
@pytest.mark.parametrize("cap", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_adversarial_remasking_terminates_within_the_cap_bound(window, cap, seed):
    backbone = CountingBackbone(FakeBackbone(eos_bias=1.0))
    prompts = distinct_prompts(4, seed=seed)
    G = 6
    config = DecodeConfig(gen_length=G, window=window, remask_cap=cap)
    decoder = Decoder(backbone, config)
    state = decoder.start(prompts)
    prompt_region = state.canvas[:, :-G].clone()
    policy = RandomRemasker(seed)
    steps = 0
    while not state.all_done:
        before = state.remask_count.clone()
        state = decoder.step(state, policy.select(state))
        steps += 1
        assert steps <= G * (1 + cap), "remasking must not loop forever"
        assert torch.equal(state.canvas[:, :-G], prompt_region)  # prompts never remasked
        assert (state.remask_count >= before).all()
        assert (state.remask_count <= cap).all()
        masked_now = state.gen_tokens == MASK
        assert torch.equal(masked_now, ~state.committed)
    assert state.committed.all()
    assert (state.gen_tokens != MASK).all()
    assert torch.equal(state.remasks, state.remask_count.sum(-1))
    assert int(state.remasks.sum() + state.remask_ignored.sum()) == policy.asked
    assert torch.equal(state.nfe, state.step)
    assert state.nfe.tolist() == backbone.row_counts(prompts, G)
    assert (state.remask_changed <= state.remasks).all()


def test_remask_only_hits_committed_positions_inside_the_window(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=6, window="sliding:3", remask_cap=2))
    state = decoder.start(distinct_prompts(1))
    first = torch.zeros(1, 6, dtype=torch.bool)
    first[0, [0, 2]] = True  # commit 0 and 2: the window becomes positions 1..3
    state = decoder.step(state, first)
    assert state.remaskable.tolist() == [[False, False, True, False, False, False]]
    token = int(state.gen_tokens[0, 2])
    remask = torch.ones(1, 6, dtype=torch.bool)  # every bit: only position 2 may take effect
    commit = torch.zeros(1, 6, dtype=torch.bool)
    commit[0, 1] = True
    state = decoder.step(state, CommitDecision(commit, remask=remask))
    assert state.committed.tolist() == [[True, True, False, False, False, False]]
    assert int(state.remasks) == 1 and int(state.remask_ignored) == 5
    assert int(state.remasked_token[0, 2]) == token
    assert int(state.commit_step[0, 2]) == -1
    assert bool(state.eligible[0, 2])  # proposed again by this step's forward


def test_per_position_cap_blocks_further_remasks(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=4, remask_cap=1))
    state = decoder.start(distinct_prompts(1))
    one = torch.zeros(1, 4, dtype=torch.bool)
    one[0, 0] = True
    state = decoder.step(state, one)
    state = decoder.step(state, CommitDecision(torch.zeros_like(one), remask=one))
    assert int(state.remask_count[0, 0]) == 1 and not state.committed[0, 0]
    state = decoder.step(state, one)  # committed again
    assert not state.remaskable[0, 0]
    state = decoder.step(state, CommitDecision(torch.zeros_like(one), remask=one))
    assert bool(state.committed[0, 0]) and int(state.remask_ignored) == 1


def test_budget_fill_ignores_remasks_and_keeps_the_budget(fake: FakeBackbone):
    config = DecodeConfig(gen_length=6, step_budget=3, remask_cap=5)
    decoder = Decoder(fake, config)
    state = decoder.start(distinct_prompts(2))
    while not state.all_done:
        state = decoder.step(state, CommitDecision(state.eligible, remask=state.remaskable))
    assert (state.nfe <= 3).all()
    assert state.committed.all()


def test_remask_changed_counts_tokens_that_differ():
    backbone = FakeBackbone()
    config = DecodeConfig(gen_length=5, remask_cap=4, eos_stop=False)
    result = decode(backbone, distinct_prompts(3), _EveryOtherStep(), config)
    assert (result.remasks > 0).all()
    assert (result.remask_changed <= result.remasks).all()
    assert result.summary()["remasks"] == float(result.remasks.float().mean())


def test_recommits_in_plain_steps_are_tracked(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=5, remask_cap=4, eos_stop=False))
    state = decoder.start(distinct_prompts(3))
    policy = _EveryOtherStep()  # remasks in CommitDecision steps, recommits in plain-mask steps
    while not state.all_done:
        state = decoder.step(state, policy.select(state))
    assert (state.remasks > 0).all()
    assert (state.remasked_token == -1).all()  # every remasked position was committed again


class _EveryOtherStep:
    """Commits the top-1 eligible and, every other step, remasks everything remaskable."""

    def select(self, state):
        commit = TopKPolicy().select(state)
        if int(state.nfe.max()) % 2:
            return CommitDecision(commit, remask=state.remaskable)
        return commit


# ----------------------------------------------------------------------------- draft-and-verify
def test_draft_step_runs_one_forward_over_k_copies_and_counts_their_tokens():
    backbone = CountingBackbone(FakeBackbone())
    prompts = distinct_prompts(3)
    decoder = Decoder(backbone, DecodeConfig(gen_length=6, eos_stop=False))
    state = decoder.start(prompts)
    tokens_before = state.forward_tokens.clone()
    K = 3
    drafts = torch.zeros(3, K, 6, dtype=torch.bool)
    for k in range(K):
        drafts[:, k, k] = True  # copy k commits position k
    seen = {}

    def accept(before, drafted):
        seen["rows"] = drafted.batch_size
        seen["committed"] = drafted.committed.clone()
        return torch.tensor([0, 1, 2])

    calls = backbone.n_calls
    state = decoder.step(state, DraftDecision(drafts, accept))
    assert backbone.n_calls == calls + 1  # one batched forward over every copy
    assert backbone.calls[-1].rows == 3 * K
    assert seen["rows"] == 3 * K
    assert seen["committed"].view(3, K, 6)[:, :, :K].tolist() == [torch.eye(K).bool().tolist()] * 3
    assert state.nfe.tolist() == [2, 2, 2]
    per_row = state.attention_mask.sum(-1)
    assert torch.equal(state.forward_tokens - tokens_before, per_row * K)
    for b in range(3):  # row b kept copy b
        assert state.committed[b].nonzero().squeeze(1).tolist() == [b]


def test_draft_copies_that_finish_their_row_run_no_forward():
    backbone = CountingBackbone(FakeBackbone())
    decoder = Decoder(backbone, DecodeConfig(gen_length=4, eos_stop=False))
    state = decoder.start(distinct_prompts(2))
    drafts = torch.ones(2, 2, 4, dtype=torch.bool)
    drafts[:, 0] = False
    drafts[:, 0, 0] = True  # copy 0 commits one position, copy 1 everything
    before = state.forward_tokens.clone()
    state = decoder.step(state, DraftDecision(drafts, lambda s, d: torch.tensor([1, 0])))
    assert backbone.calls[-1].rows == 2  # only the two copies 0
    assert bool(state.done[0]) and not bool(state.done[1])
    assert torch.equal(state.forward_tokens - before, state.attention_mask.sum(-1))


def test_draft_step_rejects_bad_input(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=4))
    state = decoder.start(distinct_prompts(2))
    ok = torch.zeros(2, 2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="commit"):
        decoder.step(state, DraftDecision(torch.zeros(2, 4, dtype=torch.bool), lambda s, d: 0))
    with pytest.raises(ValueError, match="accept"):
        decoder.step(state, DraftDecision(ok, lambda s, d: torch.tensor([0, 5])))
    sampled = Decoder(fake, DecodeConfig(gen_length=4, temperature=1.0))
    s2 = sampled.start(distinct_prompts(2))
    with pytest.raises(ValueError, match="greedy"):
        sampled.step(s2, DraftDecision(ok, lambda s, d: torch.zeros(2, dtype=torch.long)))


def test_draft_step_gives_rows_without_a_forward_only_their_first_forward():
    from commit_env.policies import FreeDavePolicy

    backbone = CountingBackbone(FakeBackbone())
    decoder = Decoder(backbone, DecodeConfig(gen_length=5))
    state = decoder.start(distinct_prompts(2), forward=False)
    state = decoder.step(state, FreeDavePolicy(draft_steps=3).select(state))
    assert backbone.n_calls == 1 and backbone.calls[0].rows == 2  # copy 0 of each row only
    assert state.nfe.tolist() == [1, 1]
    assert not state.committed.any()
    assert torch.equal(state.forward_tokens, state.attention_mask.sum(-1))
