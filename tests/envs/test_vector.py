"""The native vector env: slot equivalence with single envs, one forward per step, autoreset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, Decoder
from commit_env.decoding.batching import prompt_width, replace_rows, widen_prompt
from commit_env.envs import CommitEnv, CommitVectorEnv

SETTINGS = {"gen_length": [4, 6, 8], "window": ["full", "sliding:3"], "step_budget": [3, None]}


class CountingBackbone:
    """Delegates to a backbone and records the batch size of every forward."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def forward(self, canvas, attention_mask, hidden_layers=None):
        self.calls.append(int(canvas.shape[0]))
        return self._inner.forward(canvas, attention_mask, hidden_layers=hidden_layers)


def policy(obs, threshold=0.35):
    return (obs["eligible"] > 0.5) & (obs["conf"] >= threshold)


def assert_obs_close(a, b, where):
    assert a.keys() == b.keys()
    for key in a:
        if key == "proposal":
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} at {where}")
        else:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=f"{key} at {where}")


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_slots_match_single_envs_across_autoresets(env_kwargs, temperature):
    n, seed, steps = 4, 11, 30
    kwargs = {**env_kwargs, "settings": SETTINGS, "temperature": temperature}
    venv = CommitVectorEnv(num_envs=n, **kwargs)
    singles = [CommitEnv(**kwargs) for _ in range(n)]
    vobs, _ = venv.reset(seed=seed)
    sobs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    ended = np.zeros(n, dtype=bool)
    episodes = 0
    for t in range(steps):
        for i in range(n):
            assert_obs_close({k: v[i] for k, v in vobs.items()}, sobs[i], (t, i))
        actions = np.stack([policy({k: v[i] for k, v in vobs.items()}) for i in range(n)])
        vobs, rewards, terminated, truncated, infos = venv.step(actions)
        assert not truncated.any()
        for i, env in enumerate(singles):
            if ended[i]:  # NEXT_STEP autoreset: this step reset slot i
                sobs[i], _ = env.reset()
                assert rewards[i] == 0.0 and not terminated[i]
                continue
            sobs[i], r, term, _, info = env.step(actions[i])
            assert rewards[i] == pytest.approx(r)
            assert terminated[i] == term
            if term:
                episodes += 1
                assert infos["_task_score"][i]
                for key in ("task_score", "nfe", "steps", "forced_commits", "is_success"):
                    assert infos[key][i] == info[key], key
        ended = terminated.copy()
    assert episodes >= 2 * n  # several episodes per slot, so autoreset was exercised
    venv.close()
    for env in singles:
        env.close()


def test_one_batched_forward_per_step(backbone_spec):
    counting = CountingBackbone(load_backbone(backbone_spec, device="cpu"))
    n = 6
    venv = CommitVectorEnv(num_envs=n, task="qa", backbone=counting, gen_length=8)
    obs, _ = venv.reset(seed=0)
    assert counting.calls == [n]  # one start for every slot
    ended = np.zeros(n, dtype=bool)
    for _ in range(25):
        counting.calls.clear()
        active = int((~ended).sum())
        obs, _, terminated, _, _ = venv.step(policy(obs, 0.6))
        n_running = int((~ended).sum() - (terminated & ~ended).sum())
        # One forward per step: the unfinished slots plus the slots resetting in this step.
        n_forward = n_running + int(ended.sum())
        expected = [n_forward] if n_forward else []
        assert counting.calls == expected, (active, counting.calls, expected)
        ended = terminated.copy()
    venv.close()


def test_replace_rows_matches_a_joint_start(backbone_spec):
    backbone = load_backbone(backbone_spec, device="cpu")
    decoder = Decoder(backbone, DecodeConfig(gen_length=8, temperature=1.0))
    prompts = ["name a fruit:", "name two metals:", "name a cat:"]
    joint = decoder.start(prompts, seeds=[1, 2, 3])
    parts = decoder.start(prompts[:1], seeds=[1])  # narrower prompt width
    widen_prompt(parts, prompt_width(parts) + 2, backbone.pad_token_id)  # logits must not change
    rest = decoder.start(prompts[1:], seeds=[2, 3])
    base = decoder.start(["x", "y", "z"], seeds=[0, 0, 0])
    replace_rows(base, [0], parts, pad_token_id=backbone.pad_token_id)
    replace_rows(base, [1, 2], rest, pad_token_id=backbone.pad_token_id)
    for _ in range(3):
        mask = torch.zeros(3, 8, dtype=torch.bool)
        decoder.step(joint, mask)
        decoder.step(base, mask)
        torch.testing.assert_close(base.confidence, joint.confidence, atol=1e-5, rtol=0)
        torch.testing.assert_close(base.gen_tokens, joint.gen_tokens)
        torch.testing.assert_close(base.proposal, joint.proposal)
        torch.testing.assert_close(base.nfe, joint.nfe)
    with pytest.raises(ValueError, match="narrow"):
        widen_prompt(base, 1, backbone.pad_token_id)
    with pytest.raises(ValueError, match="rows"):
        replace_rows(base, [0, 1], parts, pad_token_id=backbone.pad_token_id)


def test_vector_render_and_masks(env_kwargs):
    venv = CommitVectorEnv(num_envs=2, render_mode="ansi", **env_kwargs)
    venv.reset(seed=0)
    frames = venv.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and "canvas:" in frames[0]
    masks = venv.action_masks()
    assert masks.shape == (2, 16) and masks[:, 0::2].all()
    venv.close()
