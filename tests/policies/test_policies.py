"""Unit tests of the heuristic and oracle commitment policies on hand-built trace states.

Every expected mask is worked out by hand from the published rule the policy implements (see the
survey in ``shared/reference/heuristics.md``). Positions are numbered from 0.
"""

from __future__ import annotations

import math

import pytest
import torch
from decoding_fakes import FakeBackbone, distinct_prompts
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_states import build_state

from commit_env.decoding import CommitDecision, DecodeConfig, TraceState, decode
from commit_env.policies import (
    EntropyBoundPolicy,
    FactorPolicy,
    KLASSPolicy,
    OraclePolicy,
    ProphetPolicy,
    ThresholdPolicy,
    TopKPolicy,
    even_schedule_k,
    list_policies,
    make_policy,
)

INF = math.inf


def bits(mask: torch.Tensor) -> list[list[int]]:
    """Mask rows as lists of committed positions (easy to read in failures)."""
    assert mask.dtype == torch.bool
    return [torch.nonzero(row).flatten().tolist() for row in mask]


# ----------------------------------------------------------------------------- top-k
def test_topk_confidence_k1_and_k2():
    state = build_state([[0.1, 0.5, 0.3, 0.9], [0.8, 0.2, 0.6, 0.4]])
    assert bits(TopKPolicy(k=1).select(state)) == [[3], [0]]
    assert bits(TopKPolicy(k=2).select(state)) == [[1, 3], [0, 2]]


def test_topk_ignores_ineligible_positions():
    state = build_state(
        [[0.1, 0.5, 0.3, 0.9]],
        eligible=[[True, False, True, False]],
        committed=[[False, False, False, True]],
    )
    assert bits(TopKPolicy(k=1).select(state)) == [[2]]
    assert bits(TopKPolicy(k=3).select(state)) == [[0, 2]]  # k beyond the eligible count


def test_topk_ties_break_to_the_leftmost():
    state = build_state([[0.5, 0.7, 0.7, 0.7]])
    assert bits(TopKPolicy(k=1).select(state)) == [[1]]
    assert bits(TopKPolicy(k=2).select(state)) == [[1, 2]]


def test_topk_margin_and_entropy_scores():
    conf = [[0.9, 0.8, 0.7, 0.6]]
    state = build_state(conf, margin=[[0.1, 0.2, 0.6, 0.3]], entropy=[[0.5, 0.05, 0.4, 0.01]])
    assert bits(TopKPolicy(score="margin", k=1).select(state)) == [[2]]
    assert bits(TopKPolicy(score="margin", k=2).select(state)) == [[2, 3]]
    assert bits(TopKPolicy(score="entropy", k=1).select(state)) == [[3]]  # lowest entropy
    assert bits(TopKPolicy(score="entropy", k=2).select(state)) == [[1, 3]]


def test_topk_random_is_seeded():
    state = build_state([[0.5] * 20] * 2)

    def draws(seed: int) -> list[list[list[int]]]:
        policy = TopKPolicy(score="random", k=3, seed=seed)
        policy.reset(state)
        return [bits(policy.select(state)) for _ in range(3)]

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    assert all(len(row) == 3 for step in first for row in step)
    assert first[0] != first[1]  # the generator advances between steps


@pytest.mark.parametrize(
    ("masks", "budget", "nfe", "expected"),
    [
        (10, 5, 1, 2),  # 10 masks over 5 steps
        (10, 4, 1, 3),  # ceil(10 / 4)
        (7, 5, 3, 3),  # 3 steps left: ceil(7 / 3)
        (3, 5, 5, 3),  # last allowed step: everything
        (1, 8, 1, 1),
        (4, 2, 9, 4),  # past the budget: clamp to one step left
    ],
)
def test_even_schedule_counts(masks: int, budget: int, nfe: int, expected: int):
    G = 12
    committed = [[i >= masks for i in range(G)]]
    state = build_state([[0.5] * G], committed=committed, budget=budget, nfe=nfe)
    assert even_schedule_k(state).tolist() == [expected]
    assert len(bits(TopKPolicy(schedule="even").select(state))[0]) == expected


def test_even_schedule_is_per_row():
    state = build_state(
        [[0.5] * 6, [0.5] * 6],
        committed=[[False] * 6, [False, False] + [True] * 4],
        budget=3,
        nfe=[1, 2],
    )
    assert even_schedule_k(state).tolist() == [2, 1]


# ----------------------------------------------------------------------------- threshold
def test_threshold_commits_everything_above_tau_inclusive():
    state = build_state(
        [[0.95, 0.9, 0.5, 0.92, 0.89], [0.3, 0.6, 0.5, 0.1, 0.2]],
        eligible=[[True, True, True, False, True], [True] * 5],
        committed=[[False, False, False, True, False], [False] * 5],
    )
    # Row 0: 0.95 and 0.9 pass (0.92 is committed); row 1: none passes -> top-1 only.
    assert bits(ThresholdPolicy(0.9).select(state)) == [[0, 1], [1]]
    assert bits(ThresholdPolicy(0.5).select(state)) == [[0, 1, 2, 4], [1, 2]]


# ----------------------------------------------------------------------------- factor
def test_factor_rule_worked_example():
    # Sorted confidences 0.95, 0.9, 0.8, 0.7, 0.6 (positions 1, 4, 2, 0, 3). With f = 1:
    # r=1: 2*0.05=0.10 ok; r=2: 3*0.10=0.30 ok; r=3: 4*0.20=0.80 ok; r=4: 5*0.30=1.50 fail.
    state = build_state([[0.7, 0.95, 0.8, 0.6, 0.9]])
    assert bits(FactorPolicy(1.0).select(state)) == [[1, 2, 4]]
    # f = 0.5: r=3 fails (0.80 > 0.5) -> ranks 1-2.
    assert bits(FactorPolicy(0.5).select(state)) == [[1, 4]]
    # f = 2: r=4 passes (1.5), r=5: 6*0.4=2.4 fails.
    assert bits(FactorPolicy(2.0).select(state)) == [[0, 1, 2, 4]]


def test_factor_always_commits_rank_one():
    state = build_state([[0.3, 0.2, 0.25]])  # r=1: 2*0.7=1.4 > 1 fails, committed anyway
    assert bits(FactorPolicy(1.0).select(state)) == [[0]]


def test_factor_ranks_only_eligible_positions():
    # The committed 0.99 is not rank 1: ranks are 0.95 (r=1), 0.6 (r=2: 3*0.4=1.2 fail).
    state = build_state(
        [[0.99, 0.95, 0.6]],
        committed=[[True, False, False]],
    )
    assert bits(FactorPolicy(1.0).select(state)) == [[1]]


# ----------------------------------------------------------------------------- EB-Sampler
def _norm(nats: list[float], vocab: int) -> list[float]:
    return [h / math.log(vocab) for h in nats]


def test_eb_prefix_by_confidence():
    V = 100
    # Confidence order: positions 2, 0, 3, 1 with entropies 0.05, 0.04, 0.03, 0.5 nats.
    # Prefix sums minus max: 0, 0.04, 0.07, 0.62-0.5=0.12 > 0.1 -> first three.
    state = build_state(
        [[0.8, 0.6, 0.9, 0.7]], entropy=[_norm([0.04, 0.5, 0.05, 0.03], V)], vocab_size=V
    )
    assert bits(EntropyBoundPolicy(gamma=0.1).select(state)) == [[0, 2, 3]]
    assert bits(EntropyBoundPolicy(gamma=0.05).select(state)) == [[0, 2]]
    assert bits(EntropyBoundPolicy(gamma=0.0).select(state)) == [[2]]
    assert bits(EntropyBoundPolicy(gamma=1.0).select(state)) == [[0, 1, 2, 3]]


def test_eb_uses_nats_not_normalized_entropy():
    # Normalized entropies 0.01 each: in nats 0.01 * log(1000) = 0.069; the pair's excess 0.069
    # fits gamma 0.1 but a third (0.138) does not. Normalized values would accept all four.
    state = build_state([[0.9, 0.8, 0.7, 0.6]], entropy=[[0.01] * 4], vocab_size=1000)
    assert bits(EntropyBoundPolicy(gamma=0.1).select(state)) == [[0, 1]]


def test_eb_orders_by_entropy_and_margin():
    V = 50
    state = build_state(
        [[0.9, 0.8, 0.7, 0.6]],
        margin=[[0.1, 0.2, 0.9, 0.3]],
        entropy=[_norm([0.5, 0.02, 0.01, 0.3], V)],
        vocab_size=V,
    )
    # entropy order: 2 (0.01), 1 (0.02), 3 (0.3): excess 0.01, then 0.33-0.3=0.03, then 0.53.
    assert bits(EntropyBoundPolicy(gamma=0.1, order="entropy").select(state)) == [[1, 2, 3]]
    # margin order: 2, 3, 1, 0: excess 0.01, 0.03, then 0.83 - 0.5 = 0.33 > 0.1.
    assert bits(EntropyBoundPolicy(gamma=0.1, order="margin").select(state)) == [[1, 2, 3]]
    assert bits(EntropyBoundPolicy(gamma=0.02, order="margin").select(state)) == [[2, 3]]


def test_eb_ignores_ineligible_positions():
    V = 100
    state = build_state(
        [[0.99, 0.9, 0.8]],
        entropy=[_norm([5.0, 0.02, 0.03], V)],
        committed=[[True, False, False]],
        vocab_size=V,
    )
    assert bits(EntropyBoundPolicy(gamma=0.1).select(state)) == [[1, 2]]


# ----------------------------------------------------------------------------- KLASS
def test_klass_ready_needs_confidence_and_stable_history():
    state = build_state(
        [
            [0.7, 0.9, 0.6, 0.95, 0.99],
            [0.5, 0.9, 0.8, 0.1, 0.2],
            [0.7, 0.9, 0.8, 0.1, 0.2],
        ],
        kl_history=[
            # ready | one KL too big | conf not > tau_c | inf history | ready but committed
            [[0.01, 0.001], [0.02, 0.001], [0.0, 0.0], [INF, 0.0], [0.0, 0.0]],
            # nothing ready: low confidence or unstable -> fall back to top-1 confidence
            [[0.0, 0.0], [0.0, 0.016], [0.015, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[INF, INF]] * 5,  # first forward: nothing is ready
        ],
        committed=[[False, False, False, False, True], [False] * 5, [False] * 5],
    )
    assert bits(KLASSPolicy().select(state)) == [[0], [1], [1]]
    assert bits(KLASSPolicy(fallback_k=2).select(state)) == [[0], [1, 2], [1, 2]]
    # history=1 looks only at the newest KL: row 0 positions 1 and 3, row 1 position 2 ready.
    assert bits(KLASSPolicy(history=1).select(state)) == [[0, 1, 3], [2], [1]]
    assert bits(KLASSPolicy(history=1, conf_threshold=0.5).select(state)) == [
        [0, 1, 2, 3],
        [2],
        [1],
    ]


def test_klass_history_longer_than_state_raises():
    state = build_state([[0.9]], kl_history=[[[0.0, 0.0]]])
    with pytest.raises(ValueError, match="history"):
        KLASSPolicy(history=3).select(state)


# ----------------------------------------------------------------------------- Prophet
@pytest.mark.parametrize(
    ("nfe", "threshold"),
    [(1, 7.5), (3, 7.5), (4, 5.0), (6, 5.0), (7, 2.5), (10, 2.5)],  # budget 10: 0.1 ... 1.0
)
def test_prophet_exit_threshold_falls_with_progress(nfe: int, threshold: float):
    gaps = [[threshold + 0.5] * 3, [threshold - 0.5] * 3]
    state = build_state([[0.5, 0.9, 0.7]] * 2, logit_gap=gaps, budget=10, nfe=nfe)
    decision = ProphetPolicy().select(state)
    assert isinstance(decision, CommitDecision)
    assert decision.fill_rows is not None and decision.fill_rows.dtype == torch.bool
    assert decision.fill_rows.tolist() == [True, False]
    assert bits(decision.mask) == [[1], [1]]
    assert bits(ProphetPolicy(k=2).select(state).mask) == [[1, 2], [1, 2]]


def test_prophet_gap_is_mean_over_masked_span():
    # Committed positions (gap 0) must not dilute the mean; span=2 takes the first two masks.
    state = build_state(
        [[0.5, 0.5, 0.5, 0.5]] * 2,
        committed=[[True, False, False, False], [False, False, False, False]],
        logit_gap=[[0.0, 8.0, 8.0, 7.8], [9.0, 8.0, 1.0, 1.0]],
        budget=10,
        nfe=1,
    )
    assert ProphetPolicy().select(state).fill_rows.tolist() == [True, False]
    assert ProphetPolicy(span=2).select(state).fill_rows.tolist() == [True, True]
    assert ProphetPolicy(span=1).select(state).fill_rows.tolist() == [True, True]


def test_prophet_never_fills_finished_rows():
    state = build_state(
        [[0.5, 0.5]], committed=[[True, True]], logit_gap=[[50.0, 50.0]], budget=4, nfe=4
    )
    decision = ProphetPolicy().select(state)
    assert decision.fill_rows.tolist() == [False]
    assert bits(decision.mask) == [[]]


# ----------------------------------------------------------------------------- oracle
def test_oracle_commits_matches_indexed_by_row_ids():
    reference = torch.tensor([[3, 4, 5, 6], [7, 7, 7, 7], [3, 9, 5, 9]])
    state = build_state(
        [[0.5] * 4] * 2,
        proposal=[[3, 4, 5, 6], [3, 4, 5, 6]],
        row_ids=[2, 0],
        eligible=[[True] * 4, [True, True, False, True]],
        committed=[[False] * 4, [False, False, True, False]],
    )
    # Row 0 is caller row 2 (matches at 0 and 2); row 1 is caller row 0 (all match but 2 is
    # not eligible).
    assert bits(OraclePolicy(reference).select(state)) == [[0, 2], [0, 1, 3]]


def test_oracle_rejects_bad_references():
    with pytest.raises(ValueError, match="reference"):
        OraclePolicy(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="non-empty"):
        OraclePolicy()
    state = build_state([[0.5] * 4])
    with pytest.raises(ValueError, match="G=4"):
        OraclePolicy(torch.zeros(1, 5, dtype=torch.long)).select(state)


# ----------------------------------------------------------------------------- registry
def test_make_policy_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown policy") as info:
        make_policy("greedy")
    for name in ("topk", "threshold", "factor", "eb", "klass", "prophet", "oracle"):
        assert name in str(info.value)
    assert list_policies() == sorted(list_policies())


def test_make_policy_unknown_param_lists_valid_params():
    with pytest.raises(ValueError, match="tau") as info:
        make_policy("threshold", tau=0.5)
    assert "threshold" in str(info.value)
    with pytest.raises(ValueError) as info:
        make_policy("topk", _generator=None)  # not an init parameter
    assert "score" in str(info.value) and "schedule" in str(info.value)


def test_make_policy_converts_strings():
    policy = make_policy("threshold", threshold="0.7")
    assert isinstance(policy.threshold, float) and policy.threshold == 0.7
    assert isinstance(make_policy("threshold", threshold="1").threshold, float)
    topk = make_policy("topk", k="2", score="margin", schedule="even")
    assert isinstance(topk.k, int) and topk.k == 2 and topk.score == "margin"
    assert make_policy("prophet", span="3").span == 3
    assert make_policy("prophet", span="none").span is None
    assert make_policy("klass", history="1", kl_threshold="1e-3").kl_threshold == 0.001
    assert make_policy("eb", gamma=0.2).gamma == 0.2  # non-strings pass through


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("topk", {"k": "1.5"}),
        ("topk", {"k": "two"}),
        ("topk", {"k": "0"}),
        ("topk", {"score": "loud"}),
        ("threshold", {"threshold": "1.5"}),
        ("factor", {"factor": "0"}),
        ("eb", {"gamma": "-1"}),
        ("eb", {"order": "size"}),
        ("klass", {"history": "0"}),
        ("prophet", {"early": "0.8", "late": "0.5"}),
    ],
)
def test_make_policy_rejects_bad_values_with_value_error(name: str, params: dict):
    with pytest.raises(ValueError):
        make_policy(name, **params)


def test_describe_and_params():
    for name in list_policies():
        if name == "oracle":
            policy = make_policy(name, reference=torch.zeros(1, 2, dtype=torch.long))
            assert policy.params == {}
        else:
            policy = make_policy(name)
            assert all(not k.startswith("_") for k in policy.params)
        assert policy.describe().startswith(f"{name}(")


# ----------------------------------------------------------------------------- every policy
def _all_policies(G: int) -> list:
    return [
        TopKPolicy(),
        TopKPolicy(score="margin", k=2),
        TopKPolicy(score="entropy", k=3),
        TopKPolicy(score="random", k=2, seed=3),
        TopKPolicy(schedule="even"),
        ThresholdPolicy(),
        ThresholdPolicy(0.3),
        FactorPolicy(),
        FactorPolicy(3.0),
        EntropyBoundPolicy(),
        EntropyBoundPolicy(gamma=1.0, order="entropy"),
        KLASSPolicy(),
        KLASSPolicy(history=1, kl_threshold=0.5),
        ProphetPolicy(),
        ProphetPolicy(high=0.0, mid=0.0, low=0.0, k=0),
        OraclePolicy(torch.randint(3, 12, (5, G), generator=torch.Generator().manual_seed(G))),
    ]


@st.composite
def random_states(draw) -> TraceState:
    B = draw(st.integers(1, 4))
    G = draw(st.integers(1, 8))
    unit = st.floats(0.0, 1.0, width=32)
    conf = [[draw(unit) for _ in range(G)] for _ in range(B)]
    committed = [[draw(st.booleans()) for _ in range(G)] for _ in range(B)]
    window = [[draw(st.booleans()) for _ in range(G)] for _ in range(B)]
    eligible = [
        [w and not c for w, c in zip(wr, cr, strict=True)]
        for wr, cr in zip(window, committed, strict=True)
    ]
    kl = st.one_of(st.just(INF), st.floats(0.0, 0.0625, width=32))
    return build_state(
        conf,
        eligible=eligible,
        committed=committed,
        margin=[[draw(unit) for _ in range(G)] for _ in range(B)],
        entropy=[[draw(unit) for _ in range(G)] for _ in range(B)],
        logit_gap=[[draw(st.floats(0.0, 10.0, width=32)) for _ in range(G)] for _ in range(B)],
        kl_history=[[[draw(kl), draw(kl)] for _ in range(G)] for _ in range(B)],
        proposal=[[draw(st.integers(3, 11)) for _ in range(G)] for _ in range(B)],
        nfe=draw(st.integers(1, 8)),
        budget=draw(st.integers(1, 8)),
        vocab_size=draw(st.sampled_from([12, 100, 50000])),
        row_ids=draw(st.permutations(range(5)))[:B],
    )


@settings(max_examples=40, deadline=None, database=None)
@given(random_states())
def test_every_policy_returns_bool_mask_inside_eligible(state: TraceState):
    B, G = state.batch_size, state.gen_length
    for policy in _all_policies(G):
        policy.reset(state)
        out = policy.select(state)
        mask = out.mask if isinstance(out, CommitDecision) else out
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, policy
        assert tuple(mask.shape) == (B, G), policy
        assert not (mask & ~state.eligible).any(), f"{policy} set a non-eligible bit"
        if isinstance(out, CommitDecision) and out.fill_rows is not None:
            assert out.fill_rows.dtype == torch.bool and tuple(out.fill_rows.shape) == (B,)
        if not isinstance(policy, OraclePolicy):  # heuristics always commit at least one
            has = state.eligible.any(-1)
            assert torch.equal(mask.any(-1) & has, has), f"{policy} committed nothing"


@pytest.mark.parametrize("name", ["topk", "threshold", "factor", "eb", "klass", "prophet"])
def test_heuristics_decode_without_forced_commits(name: str):
    prompts = distinct_prompts(3)
    config = DecodeConfig(gen_length=8, window="block:4", step_budget=6)
    result = decode(FakeBackbone(), prompts, make_policy(name), config)
    assert not result.forced_commits.any()
    assert (result.nfe <= 6).all()
    assert (result.commit_step >= 0).all()


def test_oracle_reproduces_a_sequential_reference():
    prompts = distinct_prompts(4)
    config = DecodeConfig(gen_length=8, window="block:4", eos_stop=False)
    reference = decode(FakeBackbone(), prompts, TopKPolicy(k=1), config)
    oracle = decode(FakeBackbone(), prompts, OraclePolicy(reference.tokens), config, batch_size=3)
    assert (oracle.nfe <= reference.nfe).all()
    matched = oracle.tokens == reference.tokens
    assert matched.float().mean() > 0.5
