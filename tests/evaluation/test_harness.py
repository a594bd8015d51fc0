"""The lm-evaluation-harness adapter on a tiny local task (YAML + JSONL in tmp_path; offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from commit_env.backbones import load_backbone  # noqa: E402
from commit_env.decoding import DecodeConfig, decode  # noqa: E402
from commit_env.policies import make_policy  # noqa: E402
from commit_env.tasks import get_task  # noqa: E402

TASK = "commit_env_tiny_sums"
MC_TASK = "commit_env_tiny_sums_mc"
N_DOCS = 6


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A generate_until task over examples of the embedded 'math' family."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    rng = np.random.default_rng(0)
    task = get_task("math")
    rows = []
    for _ in range(N_DOCS):
        example = task.sample(rng)
        rows.append({"question": example.prompt, "answer": example.reference})
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "sums.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "9"]
  max_gen_toks: 12
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )
    # The same prompts as a multiple-choice task: the reference against an invalid sum.
    choices = "\n".join(
        json.dumps({"question": r["question"], "choices": [r["answer"], "9+9"], "label": 0})
        for r in rows
    )
    (folder / "sums_mc.jsonl").write_text(choices + "\n")
    (folder / "sums_mc.yaml").write_text(
        f"""task: {MC_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "sums_mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
    )
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def test_registered_model_name():
    from commit_env.evaluation.harness import CommitEnvLM
    from lm_eval.api.registry import get_model

    assert get_model("commit-env") is CommitEnvLM


def test_run_harness_uses_the_engine_and_reports_accounting(task_dir):
    from commit_env.evaluation.harness import run_harness

    results = run_harness(
        [TASK, MC_TASK], include_path=str(task_dir), include_defaults=False, backbone="tiny",
        policy="eb", policy_args="gamma=0.5", window="block:4", batch_size=4, device="cpu",
        loglikelihood_samples=4,
    )  # fmt: skip
    # Multiple choice through the Monte-Carlo ELBO: the valid sums beat "9+9" on every doc.
    assert results["results"][MC_TASK]["acc,none"] == pytest.approx(1.0)
    metrics = results["results"][TASK]
    score = metrics["exact_match,none"]
    assert 0.0 <= score <= 1.0
    acct = results["commit_env"]
    assert results["config"]["commit_env"]["nfe"] == acct["nfe"]
    assert acct["requests"] == N_DOCS and acct["policy"] == "eb" and acct["window"] == "block:4"

    # Same prompts straight through the engine: the same NFE and the same (cut) completions.
    rows = [json.loads(line) for line in (task_dir / "sums.jsonl").read_text().splitlines()]
    backbone = load_backbone("tiny", device="cpu")
    direct = decode(
        backbone,
        [r["question"] for r in rows],
        make_policy("eb", gamma=0.5),
        DecodeConfig(gen_length=12, window="block:4"),
        batch_size=4,
    )
    assert acct["nfe"] == int(direct.nfe.sum())
    assert acct["tokens_per_forward"] == pytest.approx(12 * N_DOCS / int(direct.nfe.sum()))
    cut = [t.split("\n")[0].split("9")[0].strip() for t in direct.texts]
    expected = np.mean([c == r["answer"] for c, r in zip(cut, rows, strict=True)])
    assert score == pytest.approx(expected)


def test_generate_until_cuts_and_groups(task_dir):
    from commit_env.evaluation.harness import CommitEnvLM
    from lm_eval.api.instance import Instance

    lm = CommitEnvLM(backbone="tiny", policy="topk", policy_args="k=2", device="cpu")
    first = ("sum 2 digits to 9:", {"until": ["+"], "max_gen_toks": 8})
    second = ("sum 2 digits to 7:", {"until": [], "max_gen_toks": 6})
    requests = [
        Instance("generate_until", {}, first, 0),
        Instance("generate_until", {}, second, 1),
    ]
    out = lm.generate_until(requests, disable_tqdm=True)
    assert len(out) == 2 and "+" not in out[0]
    acct = lm.accounting()
    assert acct["requests"] == 2 and acct["generated_positions"] == 8 + 6
    assert acct["nfe"] == 4 + 3  # top-2 per step: ceil(8/2) + ceil(6/2) forwards


def test_loglikelihood_needs_opt_in_and_rolling_is_a_clear_error():
    from commit_env.evaluation.harness import CommitEnvLM

    lm = CommitEnvLM(backbone="tiny", device="cpu")
    with pytest.raises(NotImplementedError, match="loglikelihood_samples"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="perplexity"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="unknown policy"):
        CommitEnvLM(backbone="tiny", policy="nope", device="cpu")
    with pytest.raises(ValueError, match="policy_args"):
        CommitEnvLM(backbone="tiny", policy="eb", policy_args="gamma", device="cpu")
    with pytest.raises(ValueError, match="loglikelihood_samples"):
        CommitEnvLM(backbone="tiny", loglikelihood_samples=-1, device="cpu")


def test_loglikelihood_monte_carlo_elbo():
    import torch
    from commit_env.evaluation.harness import CommitEnvLM
    from lm_eval.api.instance import Instance

    lm = CommitEnvLM(backbone="tiny", device="cpu", loglikelihood_samples=8, batch_size=4)
    backbone = lm.backbone
    context, one = "sum 2 digits to 9:", "4"
    # One continuation token: l = 1 always, so the estimate is exactly log p(token | masked).
    ((ll, greedy),) = lm.loglikelihood([Instance("loglikelihood", {}, (context, one), 0)])
    prefix = backbone.encode([context])[0]
    target = lm.tokenizer(one, add_special_tokens=False)["input_ids"]
    canvas = torch.tensor([prefix + [backbone.mask_token_id]])
    logp = backbone.forward(canvas, torch.ones_like(canvas)).logits[0, -1].float().log_softmax(-1)
    assert ll == pytest.approx(float(logp[target[0]]), abs=1e-5)
    assert greedy == (int(logp.argmax()) == target[0])
    # Longer continuations: a finite non-positive estimate, reproducible from the seed.
    requests = [
        Instance("loglikelihood", {}, (context, c), i) for i, c in enumerate(["4+5", "9+9"])
    ]
    first = lm.loglikelihood(requests)
    again = CommitEnvLM(backbone="tiny", device="cpu", loglikelihood_samples=8).loglikelihood(
        requests
    )
    assert first == again
    assert all(v <= 0 and np.isfinite(v) for v, _ in first)
    assert first[0][0] > first[1][0]  # a valid sum scores higher than an invalid one


@pytest.mark.slow  # ~40 s: lm-eval's CLI indexes all built-in tasks; run_harness covers the rest
def test_command_line(task_dir, tmp_path):
    """``python -m commit_env.evaluation.harness`` = lm-eval's CLI with the model registered."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [
        sys.executable, "-m", "commit_env.evaluation.harness", "--model", "commit-env",
        "--model_args", "backbone=tiny,policy=threshold,window=full", "--device", "cpu",
        "--tasks", TASK, "--include_path", str(task_dir), "--limit", "3",
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exact_match" in proc.stdout
    assert "commit-env accounting" in proc.stdout and "tokens_per_forward" in proc.stdout
    written = list((tmp_path / "out").rglob("results*.json"))
    assert written, "lm-eval wrote no results file"
    saved = json.loads(written[0].read_text())
    assert saved["config"]["commit_env"]["requests"] == 3
