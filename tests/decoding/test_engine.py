"""Tests of the batched decode engine: step invariants (hypothesis), accounting, bad input.

Most tests run on :class:`FakeBackbone`, a seeded function of the whole row whose proposals change
as tokens get committed; ``CountingBackbone`` records every forward so NFE is checked against the
real calls. One group of tests runs through the real transformers adapter on a tiny random BERT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from decoding_fakes import (
    EOS,
    CountingBackbone,
    FakeBackbone,
    ScriptedBackbone,
    distinct_prompts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit_env.decoding import (
    FEATURE_GROUPS,
    FEATURES,
    CommitDecision,
    DecodeConfig,
    Decoder,
    FeatureBuilder,
    TraceState,
    decode,
)
from commit_env.policies import ThresholdPolicy, TopKPolicy


# ----------------------------------------------------------------------------- helpers
class RandomPolicy:
    """Emits random commit masks: all zeros, all ones, only non-eligible bits, or Bernoulli.

    With ``allow_fill`` it sometimes returns a :class:`CommitDecision` sending random rows all-in.
    Reseeded by ``reset`` so two decodes with the same seed see the same masks.
    """

    MODES = ("zeros", "ones", "ineligible", "bernoulli", "eligible_bernoulli")

    def __init__(self, seed: int, *, allow_fill: bool = False) -> None:
        self.seed = seed
        self.allow_fill = allow_fill
        self._gen = torch.Generator().manual_seed(seed)

    def reset(self, state: TraceState) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self._gen)

    def select(self, state: TraceState) -> torch.Tensor | CommitDecision:
        B, G = state.batch_size, state.gen_length
        mode = self.MODES[int(self._rand(1).item() * len(self.MODES))]
        if mode == "zeros":
            mask = torch.zeros(B, G, dtype=torch.bool)
        elif mode == "ones":
            mask = torch.ones(B, G, dtype=torch.bool)
        elif mode == "ineligible":
            mask = ~state.eligible
        elif mode == "bernoulli":
            mask = self._rand(B, G) < 0.3
        else:
            mask = (self._rand(B, G) < 0.4) & state.eligible
        if self.allow_fill and float(self._rand(1)) < 0.3:
            return CommitDecision(mask, self._rand(B) < 0.3)
        return mask


@dataclass(frozen=True)
class RowSpec:
    """One row's settings: generation length g, window kind and width W, effective budget."""

    g: int
    kind: str
    W: int
    budget: int
    limited: bool = True

    @classmethod
    def parse(cls, g: int, window: str, budget: int | None) -> RowSpec:
        kind, _, width = window.partition(":")
        W = g if kind == "full" else min(int(width), g)
        return cls(g, kind, W, g if budget is None else budget, budget is not None)


def default_specs(config: DecodeConfig, batch: int) -> list[RowSpec]:
    return [RowSpec.parse(config.gen_length, config.window, config.step_budget)] * batch


def expected_eligible(
    committed: torch.Tensor, done: torch.Tensor, specs: list[RowSpec]
) -> torch.Tensor:
    """The spec's eligible set, written independently of the engine."""
    B, G = committed.shape
    out = torch.zeros(B, G, dtype=torch.bool)
    for r, spec in enumerate(specs):
        masked = [i for i in range(spec.g) if not committed[r, i]]
        if done[r] or not masked:
            continue
        first, W = masked[0], spec.W
        if spec.kind == "block":
            lo, hi = first // W * W, first // W * W + W
        elif spec.kind == "sliding":
            lo, hi = first, first + W
        else:
            lo, hi = 0, spec.g
        for i in masked:
            out[r, i] = lo <= i < min(hi, spec.g)
    return out


@dataclass
class Snapshot:
    committed: torch.Tensor
    canvas: torch.Tensor
    eligible: torch.Tensor
    proposal: torch.Tensor
    confidence: torch.Tensor
    nfe: torch.Tensor
    step: torch.Tensor
    done: torch.Tensor
    forced: torch.Tensor
    budget_fills: torch.Tensor
    early_fills: torch.Tensor
    fwf: torch.Tensor

    @classmethod
    def of(cls, s: TraceState) -> Snapshot:
        return cls(
            s.committed.clone(),
            s.canvas.clone(),
            s.eligible.clone(),
            s.proposal.clone(),
            s.confidence.clone(),
            s.nfe.clone(),
            s.step.clone(),
            s.done.clone(),
            s.forced_commits.clone(),
            s.budget_fills.clone(),
            s.early_fills.clone(),
            s.filled_without_forward.clone(),
        )


def check_step(
    b: Snapshot,
    decision: torch.Tensor | CommitDecision,
    s: TraceState,
    config: DecodeConfig,
    specs: list[RowSpec],
    backbone: CountingBackbone,
    calls_before: int,
) -> None:
    """Every per-step promise of the engine, for one step from snapshot ``b`` to state ``s``."""
    B, G = s.committed.shape
    eos_ids = torch.tensor(backbone.eos_token_ids)
    fill_eos = backbone.eos_token_ids[0]
    mask = decision.mask if isinstance(decision, CommitDecision) else decision
    fill_rows = decision.fill_rows if isinstance(decision, CommitDecision) else None
    gen_b, gen_s = b.canvas[:, -G:], s.canvas[:, -G:]
    P = s.canvas.shape[1] - G

    # Committed tokens never change; the prompt region never changes.
    assert (~b.committed | s.committed).all()
    assert torch.equal(gen_s[b.committed], gen_b[b.committed])
    assert torch.equal(s.canvas[:, :P], b.canvas[:, :P])

    active = ~b.done
    new = s.committed & ~b.committed
    assert not new[~active].any(), "a finished row got commits"
    pm = mask & b.eligible  # the policy's eligible bits
    limited = torch.tensor([sp.limited for sp in specs])
    budget_rows = active & limited & (b.nfe >= torch.tensor([sp.budget for sp in specs]))
    early_rows = active & ~budget_rows
    early_rows &= fill_rows if fill_rows is not None else torch.zeros(B, dtype=torch.bool)
    d_forced = s.forced_commits - b.forced
    d_budget = s.budget_fills - b.budget_fills
    d_early = s.early_fills - b.early_fills
    d_fwf = s.filled_without_forward - b.fwf
    pos = torch.arange(G)
    for r in range(B):
        if not active[r]:
            assert d_forced[r] == d_budget[r] == d_early[r] == d_fwf[r] == 0
            continue
        masked = ~b.committed[r]
        if budget_rows[r] or early_rows[r]:
            # Last allowed step / all-in: every remaining mask, from the current proposals.
            assert torch.equal(new[r], masked)
            assert torch.equal(gen_s[r][new[r]], b.proposal[r][new[r]])
            n_extra = int((masked & ~pm[r]).sum())
            assert int(d_budget[r]) == (n_extra if budget_rows[r] else 0)
            assert int(d_early[r]) == (0 if budget_rows[r] else n_extra)
            assert d_forced[r] == 0 and d_fwf[r] == 0
            assert s.done[r]
            continue
        assert d_budget[r] == 0 and d_early[r] == 0
        if pm[r].any():
            regular = pm[r]
            assert d_forced[r] == 0, "forced commit although the policy had an eligible bit"
        else:
            assert d_forced[r] == 1, "no forced commit although the policy had no eligible bit"
            # The forced position is a highest-confidence eligible one (an EOS tail fill may
            # commit further eligible positions after it in the same step).
            best = b.confidence[r][b.eligible[r]].max()
            candidates = new[r] & b.eligible[r] & (b.confidence[r] == best)
            assert candidates.any(), "the forced commit is not a best eligible position"
            regular = torch.zeros(G, dtype=torch.bool)
            regular[int(candidates.long().argmax())] = True
        assert (new[r] & regular).equal(regular), "an eligible policy bit was not committed"
        assert torch.equal(gen_s[r][regular], b.proposal[r][regular])
        if specs[r].kind == "block":
            W = specs[r].W
            first = int(masked.long().argmax())
            block = pos // W == first // W
            assert not (regular & ~block).any(), "commit outside the open block"
        tail = new[r] & ~regular
        if tail.any():
            # EOS stop: everything up to a committed EOS is committed, the rest is EOS-filled.
            assert config.eos_stop
            assert (gen_s[r][tail] == fill_eos).all()
            committed_mid = b.committed[r] | regular
            gen_mid = torch.where(regular, b.proposal[r], gen_b[r])
            is_eos = committed_mid & torch.isin(gen_mid, eos_ids)
            assert is_eos.any()
            first_eos = int(is_eos.long().argmax())
            assert not (~committed_mid & (pos < first_eos)).any()
            assert torch.equal(tail, ~committed_mid & (pos > first_eos))
        assert int(d_fwf[r]) == int(tail.sum())

    # Rows are done exactly when fully committed; an unfinished row never meets the EOS stop.
    assert torch.equal(s.done, s.committed.all(-1))
    if config.eos_stop:
        for r in torch.nonzero(~s.done).flatten().tolist():
            is_eos = s.committed[r] & torch.isin(gen_s[r], eos_ids)
            if is_eos.any():
                first_eos = int(is_eos.long().argmax())
                assert (~s.committed[r] & (pos < first_eos)).any(), "EOS stop missed"
    # Accounting: one forward over exactly the unfinished rows (never over finished ones).
    assert torch.equal(s.step, b.step + active.long())
    assert torch.equal(s.nfe, b.nfe + (~s.done).long())
    if (~s.done).any():
        assert backbone.n_calls == calls_before + 1
        assert torch.equal(backbone.calls[-1].canvas, s.canvas[~s.done])
    else:
        assert backbone.n_calls == calls_before
    check_window(s, specs)


def check_window(s: TraceState, specs: list[RowSpec]) -> None:
    assert torch.equal(s.eligible, expected_eligible(s.committed, s.done, specs))
    # No idle forward: every unfinished row has something to commit in the next step.
    assert s.eligible.any(-1)[~s.done].all()


def run_checked(
    backbone: CountingBackbone,
    prompts: list[list[int]],
    config: DecodeConfig,
    policy,
    specs: list[RowSpec] | None = None,
) -> TraceState:
    decoder = Decoder(backbone, config)
    if specs is None:
        specs = default_specs(config, len(prompts))
        state = decoder.start(prompts)
    else:
        state = decoder.start(
            prompts,
            gen_lengths=[sp.g for sp in specs],
            windows=[sp.kind if sp.kind == "full" else f"{sp.kind}:{sp.W}" for sp in specs],
            budgets=[sp.budget for sp in specs],
        )
    G = config.gen_length
    assert backbone.n_calls == 1 and backbone.calls[0].rows == len(prompts)
    assert (state.nfe == 1).all()
    pad = torch.arange(G)[None, :] >= torch.tensor([sp.g for sp in specs])[:, None]  # [B, G]
    assert torch.equal(state.committed, pad)  # padding positions are locked from the start
    check_window(state, specs)
    if hasattr(policy, "reset"):
        policy.reset(state)
    for _ in range(max(sp.budget for sp in specs) + 1):
        if state.all_done:
            break
        before = Snapshot.of(state)
        calls = backbone.n_calls
        decision = policy.select(state)
        state = decoder.step(state, decision)
        check_step(before, decision, state, config, specs, backbone, calls)
    assert state.all_done, "decode did not finish within the step budget"
    assert (state.gen_tokens[pad] == backbone.pad_token_id).all()
    assert (state.commit_step[pad] == -1).all() and (state.commit_step[~pad] >= 0).all()
    assert (state.nfe <= torch.tensor([sp.budget for sp in specs])).all()
    return state


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def scenarios(draw):
    G = draw(st.sampled_from([4, 6, 8, 12]))
    kind = draw(st.sampled_from(["full", "block", "sliding"]))
    if kind == "block":
        window = f"block:{draw(st.sampled_from(divisors(G)))}"
    elif kind == "sliding":
        window = f"sliding:{draw(st.integers(1, G))}"
    else:
        window = "full"
    config = DecodeConfig(
        gen_length=G,
        window=window,
        step_budget=draw(st.none() | st.integers(1, G)),
        eos_stop=draw(st.booleans()),
        temperature=draw(st.sampled_from([0.0, 1.0])),
        seed=draw(st.integers(0, 1000)),
    )
    specs = None
    batch = draw(st.integers(1, 5))
    if draw(st.booleans()):  # per-row generation lengths, windows and budgets
        specs = []
        for _ in range(batch):
            g = draw(st.integers(1, G))
            kind = draw(st.sampled_from(["full", "block", "sliding"]))
            W = (
                g
                if kind == "full"
                else draw(st.sampled_from(divisors(g)) if kind == "block" else st.integers(1, g))
            )
            specs.append(RowSpec(g, kind, W, draw(st.integers(1, g))))
    return {
        "config": config,
        "batch": batch,
        "specs": specs,
        "policy_seed": draw(st.integers(0, 2**16)),
        "allow_fill": draw(st.booleans()),
        "eos_bias": draw(st.sampled_from([0.0, 2.5])),
    }


# ----------------------------------------------------------------------------- invariants
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_engine_invariants(case) -> None:
    config: DecodeConfig = case["config"]
    prompts = distinct_prompts(case["batch"])

    def run() -> tuple[TraceState, CountingBackbone]:
        backbone = CountingBackbone(FakeBackbone(eos_bias=case["eos_bias"]))
        policy = RandomPolicy(case["policy_seed"], allow_fill=case["allow_fill"])
        return run_checked(backbone, prompts, config, policy, case["specs"]), backbone

    state, backbone = run()
    G = config.gen_length
    assert state.committed.all()
    assert torch.equal(state.nfe, state.step)  # start forward + one per non-final step
    assert state.nfe.tolist() == backbone.row_counts(prompts, G)
    assert (state.commit_step < state.step[:, None]).all()
    assert not state.early_fills.any() or case["allow_fill"]
    assert not state.filled_without_forward.any() or config.eos_stop

    again, _ = run()  # same seeds -> identical output and accounting
    assert torch.equal(again.gen_tokens, state.gen_tokens)
    for name in (
        "nfe",
        "step",
        "commit_step",
        "forced_commits",
        "budget_fills",
        "early_fills",
        "filled_without_forward",
    ):
        assert torch.equal(getattr(again, name), getattr(state, name)), name
    assert G == state.gen_length


# ----------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("window", ["full", "block:4", "sliding:3"])
def test_sequential_top1_uses_one_forward_per_token(counting: CountingBackbone, window: str):
    prompts = distinct_prompts(3)
    config = DecodeConfig(gen_length=8, window=window, eos_stop=False)
    state = run_checked(counting, prompts, config, TopKPolicy(k=1))
    assert state.nfe.tolist() == [8, 8, 8]
    assert counting.n_calls == 8
    assert [c.rows for c in counting.calls] == [3] * 8
    assert not state.forced_commits.any()
    assert not state.budget_fills.any()
    assert sorted(state.commit_step[0].tolist()) == list(range(8))


def test_budget_one_fills_everything_after_one_forward(counting: CountingBackbone):
    config = DecodeConfig(gen_length=8, step_budget=1, eos_stop=False)
    result = decode(counting, distinct_prompts(2), TopKPolicy(k=1), config)
    assert result.nfe.tolist() == [1, 1]
    assert counting.n_calls == 1
    assert result.budget_fills.tolist() == [7, 7]  # top-1 by the policy, 7 by the budget
    assert not result.forced_commits.any()
    assert (result.commit_step == 0).all()


def test_budget_one_with_empty_policy_fills_all_without_forcing(counting: CountingBackbone):
    config = DecodeConfig(gen_length=6, window="block:2", step_budget=1, eos_stop=False)
    policy = RandomPolicy(0)
    policy.select = lambda s: torch.zeros_like(s.eligible)  # type: ignore[method-assign]
    result = decode(counting, distinct_prompts(2), policy, config)
    assert result.budget_fills.tolist() == [6, 6]
    assert result.forced_commits.tolist() == [0, 0]


def test_budget_three_counts_exact_fills(counting: CountingBackbone):
    config = DecodeConfig(gen_length=8, step_budget=3, eos_stop=False)
    result = decode(counting, distinct_prompts(2), TopKPolicy(k=1), config)
    assert result.nfe.tolist() == [3, 3]
    assert result.steps.tolist() == [3, 3]
    assert result.budget_fills.tolist() == [5, 5]  # 8 - 2 steps x 1 - 1 policy bit on the last
    assert counting.n_calls == 3


def _zero(state: TraceState) -> torch.Tensor:
    return torch.zeros_like(state.eligible)


class ZeroPolicy:
    def select(self, state: TraceState) -> torch.Tensor:
        return _zero(state)


def test_progress_guarantee_picks_best_eligible_in_block():
    # Confidence rises with position: the forced commit takes the best *eligible* position.
    conf = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    backbone = CountingBackbone(ScriptedBackbone([3, 4, 5, 6, 7, 8, 9, 10], conf))
    config = DecodeConfig(gen_length=8, window="block:4", step_budget=8, eos_stop=False)
    state = run_checked(backbone, [[3]], config, ZeroPolicy())
    assert state.commit_step[0].tolist() == [3, 2, 1, 0, 7, 6, 5, 4]
    assert state.gen_tokens[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert state.forced_commits.tolist() == [7]  # the 8th is the last allowed step's fill
    assert state.budget_fills.tolist() == [1]


def test_sliding_window_follows_first_mask():
    conf = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    backbone = CountingBackbone(ScriptedBackbone([3, 4, 5, 6, 7, 8], conf))
    config = DecodeConfig(gen_length=6, window="sliding:2", eos_stop=False)
    decoder = Decoder(backbone, config)
    state = decoder.start([[3, 4]])
    assert state.eligible[0].tolist() == [True, True, False, False, False, False]
    state = decoder.step(state, _zero(state))  # forced: position 1; window stays at 0
    assert state.eligible[0].tolist() == [True, False, False, False, False, False]
    state = decoder.step(state, _zero(state))  # forced: position 0; window jumps to 2
    assert state.committed[0].tolist() == [True, True, False, False, False, False]
    assert state.eligible[0].tolist() == [False, False, True, True, False, False]
    assert state.window_start.tolist() == [2] and state.window_end.tolist() == [4]


def test_block_window_opens_next_block_without_idle_forward():
    backbone = CountingBackbone(ScriptedBackbone([3] * 8, [0.5] * 8))
    config = DecodeConfig(gen_length=8, window="block:4", eos_stop=False)
    state = run_checked(backbone, [[3]], config, TopKPolicy(k=4))
    assert state.nfe.tolist() == [2]  # one forward per block
    assert state.commit_step[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_no_budget_means_no_budget_fills():
    conf = [0.2, 0.3, 0.4, 0.5]
    backbone = CountingBackbone(ScriptedBackbone([3, 4, 5, 6], conf))
    config = DecodeConfig(gen_length=4, eos_stop=False)
    result = decode(backbone, [[3]], ZeroPolicy(), config)
    assert result.nfe.tolist() == [4]
    assert result.budget_fills.tolist() == [0]
    assert result.forced_commits.tolist() == [4]


# ----------------------------------------------------------------------------- EOS stop
def test_eos_stop_fills_tail_without_forward():
    script = [5, 6, EOS, 7, 8, 9, 10, 11]
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # top-1 goes left to right
    backbone = CountingBackbone(ScriptedBackbone(script, conf))
    config = DecodeConfig(gen_length=8, eos_stop=True)
    state = run_checked(backbone, [[3], [4, 4]], config, TopKPolicy(k=1))
    assert state.nfe.tolist() == [3, 3]
    assert state.filled_without_forward.tolist() == [5, 5]
    assert state.gen_tokens[0].tolist() == [5, 6, EOS] + [EOS] * 5
    assert backbone.n_calls == 3
    no_stop = decode(
        ScriptedBackbone(script, conf),
        [[3]],
        TopKPolicy(k=1),
        DecodeConfig(gen_length=8, eos_stop=False),
    )
    assert no_stop.nfe.tolist() == [8]
    assert no_stop.tokens[0].tolist() == script
    assert no_stop.texts[0] == ScriptedBackbone(script, conf).decode([5, 6])


def test_eos_stop_waits_for_everything_before_the_eos():
    script = [5, 6, EOS, 7, 8, 9]
    conf = [0.5, 0.4, 0.95, 0.3, 0.2, 0.25]  # EOS is committed first
    backbone = CountingBackbone(ScriptedBackbone(script, conf))
    config = DecodeConfig(gen_length=6, eos_stop=True)
    state = run_checked(backbone, [[3]], config, TopKPolicy(k=1))
    assert state.commit_step[0].tolist() == [1, 2, 0, 2, 2, 2]
    assert state.nfe.tolist() == [3]
    assert state.filled_without_forward.tolist() == [3]


def test_finished_rows_leave_the_batch():
    class FirstRowAllIn:
        def select(self, state: TraceState) -> torch.Tensor:
            mask = torch.zeros_like(state.eligible)
            mask[0] = True
            return mask

    counting = CountingBackbone(FakeBackbone())
    config = DecodeConfig(gen_length=6, eos_stop=False)
    state = run_checked(counting, distinct_prompts(3), config, FirstRowAllIn())
    assert [c.rows for c in counting.calls] == [3] + [2] * 5
    assert state.nfe.tolist() == [1, 6, 6]


def test_step_on_finished_state_is_a_no_op(counting: CountingBackbone):
    decoder = Decoder(counting, DecodeConfig(gen_length=4, step_budget=1))
    state = decoder.start([[3]])
    state = decoder.step(state, _zero(state))
    assert state.all_done
    tokens, calls = state.gen_tokens.clone(), counting.n_calls
    state = decoder.step(state, torch.ones_like(state.eligible))
    assert torch.equal(state.gen_tokens, tokens)
    assert counting.n_calls == calls and state.nfe.tolist() == [1]


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def started(counting: CountingBackbone) -> tuple[Decoder, TraceState]:
    decoder = Decoder(counting, DecodeConfig(gen_length=8, window="block:4"))
    return decoder, decoder.start(distinct_prompts(2))


@pytest.mark.parametrize("shape", [(2, 7), (8,), (1, 8), (8, 2), (2, 8, 1)])
def test_mask_of_wrong_shape_names_expected_shape(started, shape):
    decoder, state = started
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        decoder.step(state, torch.zeros(shape, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_mask_of_wrong_dtype_raises_type_error(started, dtype):
    decoder, state = started
    with pytest.raises(TypeError, match="bool"):
        decoder.step(state, torch.zeros((2, 8), dtype=dtype))


def test_non_tensor_mask_raises_type_error(started):
    decoder, state = started
    with pytest.raises(TypeError, match=r"\[2, 8\]"):
        decoder.step(state, [[False] * 8] * 2)  # type: ignore[arg-type]


def test_bad_fill_rows_raise(started):
    decoder, state = started
    with pytest.raises(ValueError, match=r"\[2\]"):
        decoder.step(state, CommitDecision(_zero(state), torch.zeros(3, dtype=torch.bool)))


def test_bits_at_non_eligible_positions_are_ignored(counting: CountingBackbone):
    prompts = distinct_prompts(2)
    config = DecodeConfig(gen_length=8, window="block:4")
    a_dec, b_dec = Decoder(counting, config), Decoder(FakeBackbone(), config)
    a, b = a_dec.start(prompts), b_dec.start(prompts)
    for _ in range(3):
        a = a_dec.step(a, ~a.eligible)  # only non-eligible bits: same as an empty mask
        b = b_dec.step(b, _zero(b))
        assert torch.equal(a.committed, b.committed) and torch.equal(a.canvas, b.canvas)
    assert a.forced_commits.tolist() == [3, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gen_length": 16, "window": "block:5"}, "divide"),
        ({"gen_length": 16, "step_budget": 0}, "step_budget"),
        ({"gen_length": 16, "step_budget": -3}, "step_budget"),
        ({"gen_length": 16, "window": "diagonal"}, "window"),
        ({"gen_length": 16, "window": "sliding:0"}, "window"),
        ({"gen_length": 16, "window": "block:"}, "window"),
        ({"gen_length": 0}, "gen_length"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 1}, "top_k"),
        ({"history": 0}, "history"),
        ({"hidden_features": -1}, "hidden_features"),
    ],
)
def test_invalid_config_raises_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeConfig(**kwargs)


def test_prompt_too_long_raises_before_any_forward():
    counting = CountingBackbone(FakeBackbone(max_length=10))
    decoder = Decoder(counting, DecodeConfig(gen_length=8))
    with pytest.raises(ValueError, match="at most 10"):
        decoder.start([[3], [3, 4, 5]])
    assert counting.n_calls == 0
    with pytest.raises(ValueError, match="at most 10"):
        decode(counting, [[3, 4, 5]], TopKPolicy(), DecodeConfig(gen_length=8))
    assert counting.n_calls == 0


def test_empty_prompts_raise(counting: CountingBackbone):
    decoder = Decoder(counting, DecodeConfig(gen_length=4))
    with pytest.raises(ValueError):
        decoder.start([])
    with pytest.raises(ValueError, match="empty"):
        decoder.start([[3], []])
    assert counting.n_calls == 0


# ----------------------------------------------------------------------------- batching
@pytest.mark.parametrize("window", ["full", "block:3"])
def test_chunked_decode_matches_one_batch(window: str):
    prompts = distinct_prompts(5)
    config = DecodeConfig(gen_length=6, window=window)
    policy = ThresholdPolicy(0.6)
    whole = decode(FakeBackbone(), prompts, policy, config)
    chunked = decode(FakeBackbone(), prompts, policy, config, batch_size=2)
    assert torch.equal(whole.tokens, chunked.tokens)
    assert torch.equal(whole.nfe, chunked.nfe)
    assert torch.equal(whole.commit_step, chunked.commit_step)
    assert whole.texts == chunked.texts


def test_sampled_row_does_not_depend_on_batch():
    prompts = distinct_prompts(4)
    config = DecodeConfig(gen_length=8, window="block:4", temperature=1.0)
    seeds = [10, 11, 12, 13]
    batch = decode(FakeBackbone(), prompts, TopKPolicy(k=2), config, seeds=seeds)
    for i in (0, 2):
        alone = decode(FakeBackbone(), [prompts[i]], TopKPolicy(k=2), config, seeds=[seeds[i]])
        assert torch.equal(alone.tokens[0], batch.tokens[i])
        assert alone.nfe[0] == batch.nfe[i]
    # Sampling really is seeded: other seeds give other outputs somewhere.
    other = decode(FakeBackbone(), prompts, TopKPolicy(k=2), config, seeds=[20, 21, 22, 23])
    assert not torch.equal(other.tokens, batch.tokens)


def test_sampled_confidence_is_probability_of_the_sample(fake: FakeBackbone):
    decoder = Decoder(fake, DecodeConfig(gen_length=8, temperature=1.0))
    state = decoder.start(distinct_prompts(3))
    logits = fake.forward(state.canvas, state.attention_mask).logits[:, -8:]
    probs = logits.softmax(-1).gather(-1, state.proposal[..., None]).squeeze(-1)
    assert torch.allclose(state.confidence, probs, atol=1e-5)
    assert (state.confidence <= state.topk_probs[..., 0] + 1e-6).all()


def test_decode_rejects_bad_batch_size(fake: FakeBackbone):
    with pytest.raises(ValueError, match="batch_size"):
        decode(fake, [[3]], TopKPolicy(), DecodeConfig(gen_length=4), batch_size=0)


# ----------------------------------------------------------------------------- features
def _states(config: DecodeConfig, batch: int = 3):
    """Every state of a decode (start and after each step), with varied finishing times."""
    decoder = Decoder(FakeBackbone(eos_bias=1.0), config)
    state = decoder.start(distinct_prompts(batch))
    policy = RandomPolicy(1)
    yield state
    while not state.all_done:
        state = decoder.step(state, policy.select(state))
        yield state


def test_features_are_finite_in_range_and_shaped():
    config = DecodeConfig(
        gen_length=8, window="sliding:3", top_k=3, history=2, hidden_features=4, step_budget=6
    )
    builder = FeatureBuilder(FEATURE_GROUPS, top_k=3, hidden_dim=4)
    specs = {f.name: f for f in FEATURES}
    assert set(builder.names) == set(specs)
    n = 0
    for state in _states(config):
        B, G = state.batch_size, state.gen_length
        feats = builder.build(state)
        assert set(feats) == set(builder.names)
        for name, value in feats.items():
            expected = {"topk": (B, G, 3), "hidden": (B, G, 4)}.get(name, (B, G))
            assert tuple(value.shape) == expected, name
            assert value.dtype == torch.float32, name
            assert torch.isfinite(value).all(), name
            spec = specs[name]
            assert (value >= spec.low).all() and (value <= spec.high).all(), name
        stacked = builder.stack(state)
        assert tuple(stacked.shape) == (B, G, builder.dim)
        assert builder.dim == len(builder.names) - 2 + 3 + 4
        n += 1
    assert n >= 2


@pytest.mark.parametrize("dropped", ["confidence", "history", "position", "global"])
def test_ablation_groups_drop_their_columns(dropped: str):
    config = DecodeConfig(gen_length=6, top_k=3)
    state = next(_states(config))
    full = FeatureBuilder(("confidence", "history", "position", "global"), top_k=3)
    kept = tuple(g for g in full.groups if g != dropped)
    ablated = FeatureBuilder(kept, top_k=3)
    gone = [f.name for f in FEATURES if f.group == dropped]
    assert not set(gone) & set(ablated.names)
    assert set(ablated.build(state)) == set(full.names) - set(gone)
    assert ablated.dim == full.dim - sum(full.width(n) for n in gone)
    assert ablated.stack(state).shape[-1] == ablated.dim


def test_hidden_features_require_hidden_dim():
    with pytest.raises(ValueError, match="hidden"):
        FeatureBuilder(("confidence", "hidden"), hidden_dim=0)
    with pytest.raises(ValueError, match="unknown feature groups"):
        FeatureBuilder(("confidence", "colour"))
    state = next(_states(DecodeConfig(gen_length=4)))  # no hidden features requested
    assert state.hidden is None
    with pytest.raises(ValueError, match="hidden_features"):
        FeatureBuilder(("hidden",), hidden_dim=4).build(state)


def test_hidden_features_only_requested_when_configured():
    seen: list = []

    class Spy(FakeBackbone):
        def forward(self, canvas, attention_mask, hidden_layers=None):
            seen.append(hidden_layers)
            return super().forward(canvas, attention_mask, hidden_layers)

    Decoder(Spy(), DecodeConfig(gen_length=4)).start([[3]])
    Decoder(Spy(), DecodeConfig(gen_length=4, hidden_features=2)).start([[3]])
    assert seen[0] is None and seen[1] is not None


# ----------------------------------------------------------------------------- real adapter
def test_real_adapter_nfe_matches_counted_forwards(hf_backbone):
    counting = CountingBackbone(hf_backbone)
    prompts = [hf_backbone.encode([t])[0] for t in ("what is 2+3?", "abc", "name a fruit:")]
    config = DecodeConfig(gen_length=8, window="block:4", hidden_features=3)
    state = run_checked(counting, prompts, config, ThresholdPolicy(0.5))
    assert state.nfe.tolist() == counting.row_counts(prompts, 8)
    feats = FeatureBuilder(FEATURE_GROUPS, top_k=3, hidden_dim=3).stack(state)
    assert torch.isfinite(feats).all()
    assert math.isclose(float(state.entropy.max()), float(state.entropy.max()))


def test_real_adapter_chunked_decode_matches_one_batch(hf_backbone):
    prompts = ["what is 2+3?", "abc", "name a fruit:", "x"]
    config = DecodeConfig(gen_length=6, window="block:3")
    whole = decode(hf_backbone, prompts, TopKPolicy(k=2), config)
    chunked = decode(hf_backbone, prompts, TopKPolicy(k=2), config, batch_size=1)
    assert torch.equal(whole.tokens, chunked.tokens)
    assert torch.equal(whole.nfe, chunked.nfe)
    assert len(whole.texts) == 4


def test_rows_admitted_without_forward_join_the_next_step(counting: CountingBackbone):
    from commit_env.decoding.batching import replace_rows

    config = DecodeConfig(gen_length=8, eos_stop=False)
    decoder = Decoder(counting, config)
    state = decoder.start([[3, 4], [5, 6]])
    decoder.step(state, TopKPolicy(k=2).select(state))
    admitted = decoder.start([[7, 8]], forward=False)
    assert admitted.nfe.tolist() == [0]
    replace_rows(state, [1], admitted, pad_token_id=counting.pad_token_id)
    calls = counting.n_calls
    committed_before = state.committed.clone()
    mask = torch.ones(2, 8, dtype=torch.bool)  # every bit for the admitted row is ignored
    mask[0] = state.eligible[0] & (torch.arange(8) == state.eligible[0].long().argmax())
    decoder.step(state, mask)
    assert counting.n_calls == calls + 1  # one forward for the running and the admitted row
    assert state.nfe.tolist() == [3, 1]
    assert state.committed[1].sum() == 0 and state.step[1] == 0  # nothing committed for it
    assert state.committed[0].sum() > committed_before[0].sum()
    reference = decoder.start([[7, 8]])
    torch.testing.assert_close(state.proposal[1], reference.proposal[0])
