"""ObservationLayout: the env's observation, reproducible from any trace state."""

from __future__ import annotations

import numpy as np
import pytest

from commit_env.envs.commit_env import CommitEnv
from commit_env.envs.observation import ACCOUNTS, ObservationLayout


def test_layout_observe_equals_the_env_observation(backbone_spec):
    env = CommitEnv(
        task="qa",
        backbone=backbone_spec,
        gen_length=8,
        window="block:4",
        features=("confidence", "history", "position", "global"),
    )
    obs, _ = env.reset(seed=3)
    core = env._core
    layout = ObservationLayout(
        ("confidence", "history", "position", "global"),
        top_k=3,
        hidden_dim=8,
        gen_length=8,
        vocab_size=core.backbone.vocab_size,
    )
    for _ in range(3):
        again = layout.observe(core.state)
        assert set(again) == set(obs)
        for key, value in obs.items():
            np.testing.assert_array_equal(again[key][0], value)
        obs, _, terminated, _, _ = env.step(env.action_space.sample() * obs["eligible"] > 0.5)
        if terminated:
            break
    assert layout.space() == env.observation_space
    env.close()


def test_layout_columns_and_errors():
    layout = ObservationLayout(("confidence",), top_k=3, hidden_dim=0, gen_length=4, vocab_size=50)
    widths = {key: b - a for key, (a, b) in layout.columns.items()}
    assert widths["eligible"] == widths["proposal"] == widths["tokens"] == 4
    assert all(widths[name] == 1 for name in ACCOUNTS)
    assert layout.obs_width == sum(widths[key] for key in layout.keys)
    with pytest.raises(ValueError, match="unknown feature groups"):
        ObservationLayout(("nope",), top_k=3, hidden_dim=0, gen_length=4, vocab_size=50)
    with pytest.raises(ValueError, match="exceeds 2\\*\\*24"):
        ObservationLayout((), top_k=3, hidden_dim=0, gen_length=4, vocab_size=2**25)
