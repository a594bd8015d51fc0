"""The reference-consistent oracle: its forced commits write the reference token."""

from __future__ import annotations

import torch
from decoding_fakes import FakeBackbone, distinct_prompts
from policy_states import build_state

from commit_env.decoding import CommitDecision, DecodeConfig, decode
from commit_env.policies import OraclePolicy, TopKPolicy, make_policy


def test_forced_commit_is_the_reference_token_at_the_most_confident_position():
    reference = torch.tensor([[3, 4, 5, 6], [9, 9, 9, 9]])
    state = build_state(
        [[0.1, 0.9, 0.2, 0.3], [0.5, 0.6, 0.7, 0.8]],
        proposal=[[3, 1, 1, 1], [1, 1, 1, 1]],
        eligible=[[True] * 4, [True, True, True, False]],
        committed=[[False] * 4, [False, False, False, True]],
    )
    plain = OraclePolicy(reference).select(state)
    assert plain.tolist() == [[True, False, False, False], [False] * 4]
    decision = OraclePolicy(reference, consistent=True).select(state)
    assert isinstance(decision, CommitDecision)
    # row 0 has a match: no forcing; row 1 has none: its most confident eligible position (2)
    assert decision.mask.tolist() == [[True, False, False, False], [False, False, True, False]]
    assert torch.equal(decision.tokens, reference)
    assert make_policy("oracle", reference=reference, consistent="true").consistent
    assert OraclePolicy(reference, consistent=True).params == {"consistent": True}


def test_engine_writes_decision_tokens_only_where_committed():
    backbone = FakeBackbone()
    prompts = distinct_prompts(3)
    config = DecodeConfig(gen_length=8, eos_stop=False)
    reference = decode(backbone, prompts, TopKPolicy(k=1), config).tokens
    target = torch.full_like(reference, 7)  # a token the fake model never proposes first
    consistent = OraclePolicy(target, consistent=True)
    result = decode(backbone, prompts, consistent, config)
    assert torch.equal(result.tokens, target)  # every commit wrote the reference token
    assert (result.nfe <= 8).all()
    plain = decode(backbone, prompts, OraclePolicy(target), config)
    assert not torch.equal(plain.tokens, target)  # the engine's forced commits do not


def test_consistent_oracle_reproduces_the_sequential_reference_with_fewer_forwards():
    backbone = FakeBackbone()
    prompts = distinct_prompts(4)
    config = DecodeConfig(gen_length=8, window="block:4", eos_stop=False)
    reference = decode(backbone, prompts, TopKPolicy(k=1), config)
    result = decode(backbone, prompts, OraclePolicy(reference.tokens, consistent=True), config)
    assert torch.equal(result.tokens, reference.tokens)
    assert (result.nfe <= reference.nfe).all()
