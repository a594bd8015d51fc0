"""Fuzz: >= 1,000 action sequences through the vector env; every episode ends within budget.

Each hypothesis example drives 8 slots of one vector env (G = 8, cross-setting budgets and
windows) until at least ``EPISODES_PER_EXAMPLE`` episodes have finished, with one of the action
modes below. ``MAX_EXAMPLES * EPISODES_PER_EXAMPLE >= 1000`` action sequences in total.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit_env.envs import CommitVectorEnv

NUM_ENVS, G = 8, 8
MAX_EXAMPLES, EPISODES_PER_EXAMPLE = 25, 40
SETTINGS = {
    "gen_length": [3, 5, 8],
    "window": ["full", "block:1", "sliding:2"],
    "step_budget": [1, 2, 4, None],
}
MODES = ["random", "zeros", "ones", "non_eligible", "pattern", "mixed"]
SEQUENCES = {"finished": 0}  # episodes (= action sequences) driven by the fuzz test


@pytest.fixture(scope="module")
def venv(backbone_spec):
    env = CommitVectorEnv(
        num_envs=NUM_ENVS, task="qa", backbone=backbone_spec, settings=SETTINGS, device="cpu"
    )
    yield env
    env.close()


def make_action(mode, obs, rng, pattern, t):
    eligible = obs["eligible"] > 0.5  # [B, G]
    if mode == "mixed":
        mode = MODES[int(rng.integers(len(MODES) - 1))]
    if mode == "zeros":
        return np.zeros((NUM_ENVS, G), dtype=np.int8)
    if mode == "ones":
        return np.ones((NUM_ENVS, G), dtype=bool)
    if mode == "non_eligible":
        return ~eligible  # only bits the engine must ignore
    if mode == "pattern":
        row = np.asarray(pattern[t % len(pattern)], dtype=np.int64)
        return np.broadcast_to(row, (NUM_ENVS, G)).copy()
    return (rng.random((NUM_ENVS, G)) < rng.random()).astype(np.float32)  # SB3-style floats


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**31 - 1),
    pattern=st.lists(st.lists(st.integers(0, 1), min_size=G, max_size=G), min_size=1, max_size=4),
)
def test_every_episode_terminates_within_budget(venv, mode, seed, pattern):
    rng = np.random.default_rng(seed)
    obs, _ = venv.reset(seed=seed)
    space = venv.observation_space
    assert obs in space
    core = venv._core
    budgets = np.array([ep.budget for ep in core.episodes])
    lengths = np.zeros(NUM_ENVS, dtype=int)
    returns = np.zeros(NUM_ENVS)
    ended = np.zeros(NUM_ENVS, dtype=bool)
    finished = 0
    t = 0
    while finished < EPISODES_PER_EXAMPLE:
        action = make_action(mode, obs, rng, pattern, t)
        obs, rewards, terminated, truncated, infos = venv.step(action)
        t += 1
        assert obs in space
        assert np.isfinite(rewards).all()
        assert truncated.dtype == bool and not truncated.any()
        assert not (terminated & ended).any()  # a resetting slot never terminates
        live = ~ended
        lengths[live] += 1
        returns[live] += rewards[live]
        assert (lengths[live] <= budgets[live]).all(), (lengths, budgets)
        for i in np.flatnonzero(terminated):
            assert infos["steps"][i] == lengths[i] <= budgets[i]
            assert infos["nfe"][i] <= budgets[i]
            assert 0.0 <= infos["task_score"][i] <= 1.0
            assert returns[i] == pytest.approx(infos["task_score"][i] - 0.01 * lengths[i])
            finished += 1
            SEQUENCES["finished"] += 1
        for i in np.flatnonzero(ended):  # these slots were reset by this step
            assert rewards[i] == 0.0
            budgets[i] = core.episodes[i].budget
            lengths[i] = 0
            returns[i] = 0.0
        ended = terminated.copy()
        assert t < 100 * EPISODES_PER_EXAMPLE, "episodes stopped terminating"
    assert finished >= EPISODES_PER_EXAMPLE


def test_fuzz_drove_at_least_one_thousand_sequences():
    assert MAX_EXAMPLES * EPISODES_PER_EXAMPLE >= 1000
    if SEQUENCES["finished"] == 0:
        pytest.skip("the fuzz test did not run in this session")
    assert SEQUENCES["finished"] >= 1000
