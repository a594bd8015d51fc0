"""Every user error of the CLI: exit status 2, one line on stderr naming the value, no traceback.

The fuzz test runs the CLI in-process (``main(argv)``): a few hundred deterministic malformed
argument combinations, each of which must fail before any model is loaded.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from commit_env.evaluation.cli import build_parser, main

TINY = Path(__file__).resolve().parents[2] / "commit_env" / "backbones" / "data" / "tiny"


def _fails_in_one_line(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (argv, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- the listed probes


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_a_gpu(capsys):
    _fails_in_one_line(capsys, ["eval", "--device", "cuda", "--n", "2"], "'cuda'", "--device cpu")


def test_unknown_device(capsys):
    _fails_in_one_line(capsys, ["eval", "--device", "gpu0"], "'gpu0'", "cpu, cuda")


def test_gsm8k_offline_without_a_local_file(capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    argv = ["eval", "--task", "gsm8k", "--n", "2", "--no-progress"]
    _fails_in_one_line(capsys, argv, "'openai/gsm8k'", "local")


def test_missing_traces(capsys, tmp_path):
    argv = ["train-controller", "--traces", "/nonexistent", "--out", str(tmp_path / "c")]
    _fails_in_one_line(capsys, argv, "/nonexistent")


def test_out_pointing_at_a_file(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails_in_one_line(capsys, ["collect", "--out", str(afile), "--n", "2"], str(afile), "file")
    _fails_in_one_line(capsys, ["bench", "--out", str(afile)], str(afile), "file")
    _fails_in_one_line(capsys, ["bench", "--out", str(afile / "sub")], "file")
    traces = _tiny_traces(tmp_path)
    argv = ["train-controller", "--traces", str(traces), "--out", str(afile)]
    _fails_in_one_line(capsys, argv, str(afile), "file")
    _fails_in_one_line(capsys, ["train-backbone", "--out", str(afile)], str(afile), "file")
    argv = ["train-backbone", "--out", str(tmp_path / "tb"), "--log-dir", str(afile)]
    _fails_in_one_line(capsys, argv, "--log-dir", str(afile))
    argv = ["train-ppo", "--out", str(afile), "--timesteps", "8"]
    _fails_in_one_line(capsys, argv, str(afile), "file")
    argv = ["sweep", "--json-out", str(tmp_path), "--n", "2"]
    _fails_in_one_line(capsys, argv, "--json-out", "directory")


def _tiny_traces(tmp_path: Path) -> Path:
    """A manifest-only trace directory (enough for the checks that run before reading shards)."""
    traces = tmp_path / "traces"
    traces.mkdir(exist_ok=True)
    manifest = {"meta": {}, "shards": [], "steps": 0, "examples_done": 0}
    (traces / "manifest.json").write_text(json.dumps(manifest))
    return traces


def test_unwritable_out(capsys, tmp_path):
    import os

    if os.geteuid() == 0:  # root writes into read-only directories; sysfs refuses even root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs a non-root user or Linux sysfs")
        target = Path("/sys/commit_env_test_out")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro / "x"
    _fails_in_one_line(capsys, ["collect", "--out", str(target), "--n", "2"], str(target))
    _fails_in_one_line(capsys, ["bench", "--out", str(target)], str(target))


def test_train_ppo_init_from_a_missing_controller(capsys, tmp_path):
    argv = ["train-ppo", "--init", "controller:/nonexistent", "--out", str(tmp_path / "p")]
    _fails_in_one_line(capsys, argv, "/nonexistent")


def test_corrupt_backbone_files_are_named(capsys, tmp_path):
    bad_weights = tmp_path / "w"
    shutil.copytree(TINY, bad_weights)
    data = (bad_weights / "model.safetensors").read_bytes()
    (bad_weights / "model.safetensors").write_bytes(data[: len(data) // 3])
    argv = ["eval", "--backbone", f"hf:{bad_weights}", "--n", "2", "--no-progress"]
    _fails_in_one_line(capsys, argv, str(bad_weights / "model.safetensors"))
    bad_config = tmp_path / "c"
    shutil.copytree(TINY, bad_config)
    (bad_config / "config.json").write_text('{"model_type": ')
    argv = ["eval", "--backbone", f"hf:{bad_config}", "--n", "2", "--no-progress"]
    _fails_in_one_line(capsys, argv, str(bad_config / "config.json"))


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["eval", "--gen-length", "0"], ["--gen-length", "'0'", ">= 1"]),
        (["eval", "--temperature", "nan"], ["--temperature", "'nan'", "finite"]),
        (["eval", "--temperature", "-1"], ["--temperature", "'-1'"]),
        (["eval", "--sandbox", "tight"], ["--sandbox", "'tight'", "strict"]),
        (["train-controller", "--traces", "t", "--drop-group", "nosuch"], ["nosuch", "hidden"]),
        (["train-controller", "--traces", "t", "--threshold", "1.5"], ["--threshold", "< 1"]),
        (["train-ppo", "--algo", "dqn"], ["--algo", "'dqn'"]),
        (["ppo-sweep", "--lambdas", "inf"], ["--lambdas", "'inf'"]),
        (["ppo-sweep", "--warm-start", "high"], ["--warm-start", "'high'"]),
        (["eval", "--policy", "nosuch"], ["'nosuch'", "topk"]),
        (["eval", "--window", "block:5", "--gen-length", "16"], ["block", "16"]),
        (["eval", "--param", "k"], ["key=value", "'k'"]),
        (["bench", "--quick", "--full"], ["--full", "--quick"]),
        (["nosuch"], ["'nosuch'"]),
        ([], ["command"]),
    ],
)
def test_bad_values_are_named(capsys, argv, needles):
    _fails_in_one_line(capsys, argv, *needles)


def test_sandbox_option_reaches_the_scorers_and_is_restored(capsys, monkeypatch):
    import os

    from commit_env.evaluation import cli

    from commit_env.tasks.sandbox import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    seen = {}
    monkeypatch.setitem(
        cli._COMMANDS, "eval", lambda args: seen.setdefault("mode", os.environ.get(ENV_VAR)) and 0
    )
    assert main(["eval", "--sandbox", "guards"]) == 0
    assert seen["mode"] == "guards" and ENV_VAR not in os.environ


def test_strict_sandbox_runs_or_fails_early_in_one_line(capsys, monkeypatch):
    from commit_env.evaluation import cli

    from commit_env.tasks import sandbox

    monkeypatch.setitem(cli._COMMANDS, "sweep", lambda args: 0)
    backend = None
    try:
        backend = sandbox.sandbox_backend("strict")
    except sandbox.SandboxUnavailable:
        pass
    if backend == "bwrap":
        assert main(["sweep", "--sandbox", "strict"]) == 0
    else:
        _fails_in_one_line(capsys, ["sweep", "--sandbox", "strict"])


# ------------------------------------------------------------------------------------- the fuzz

_SUBCOMMANDS = {
    "eval": ["--n", "--seed", "--gen-length", "--budget", "--batch-size", "--temperature"],
    "sweep": ["--n", "--seed", "--gen-length", "--budget", "--batch-size", "--temperature"],
    "bench": ["--n", "--seed", "--gen-length", "--collect-n", "--ppo-timesteps", "--batch-size"],
    "collect": ["--n", "--seed", "--gen-length", "--budget", "--hidden-features", "--batch-size"],
    "train-controller": ["--epochs", "--batch-size", "--lr", "--threshold", "--rollout-n"],
    "train-ppo": [
        "--step-cost",
        "--timesteps",
        "--n-steps",
        "--batch-size",
        "--n-epochs",
        "--lr",
        "--ent-coef",
        "--eval-n",
        "--max-minutes",
        "--num-envs",
        "--threads",
    ],
    "ppo-sweep": ["--minutes", "--timesteps", "--eval-n", "--num-envs", "--lambdas"],
    "train-backbone": ["--steps", "--batch-size", "--seed"],
}
_BAD_NUMBERS = ["-1", "-7", "abc", "", "nan", "inf", "-inf", "1e999", "0x10", "1.5.2", "--"]
_BAD_ZERO_OK = {"--seed", "--ppo-timesteps", "--hidden-features", "--rollout-n", "--temperature"}
_BAD_ZERO_OK |= {"--step-cost", "--ent-coef", "--lambdas"}
_VALID = {
    "eval": ["--task", "qa", "--policy", "topk", "--window", "full"],
    "sweep": ["--tasks", "qa"],
    "bench": ["--quick", "--task", "qa"],
    "collect": ["--task", "qa"],
    "train-controller": ["--traces", "t"],
    "train-ppo": ["--task", "qa", "--algo", "ppo"],
    "ppo-sweep": ["--task", "qa"],
    "train-backbone": [],
}


def _malformed_argvs(count: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    no_gpu = not torch.cuda.is_available()
    out = []
    names = sorted(_SUBCOMMANDS)
    while len(out) < count:
        sub = names[rng.randrange(len(names))]
        argv = [sub] + (["--traces", "t"] if sub == "train-controller" else [])
        valid = _VALID[sub]
        if valid and rng.random() < 0.5:
            i = rng.randrange(0, len(valid) - 1, 2) if len(valid) > 1 else 0
            argv += valid[i : i + 2]
        kind = rng.randrange(6)
        if kind <= 2:  # a numeric option with a bad value
            flag = rng.choice(_SUBCOMMANDS[sub])
            bad = list(_BAD_NUMBERS) + ([] if flag in _BAD_ZERO_OK else ["0"])
            argv += [flag, rng.choice(bad)] if rng.random() < 0.9 else [flag]  # or no value
        elif kind == 3:  # an option that does not exist, or a stray positional
            argv += [rng.choice(["--nosuch", "--n-examples", "-x", "stray", "--gen_length"])]
        elif kind == 4 and sub in ("eval", "sweep", "bench", "collect"):
            argv += ["--sandbox", rng.choice(["", "STRICT", "bwrap", "none", "1"])]
        elif kind == 4 or kind == 5:
            device = rng.choice(
                ["bogus", "cuda:99", "tpu", "cuda:x"] + (["cuda"] if no_gpu else [])
            )
            if sub in ("train-backbone", "train-controller"):
                argv += (
                    ["--nosuch-flag", device] if sub == "train-backbone" else ["--device", device]
                )
            else:
                argv += ["--device", device]
        out.append(argv)
    return out


def test_cli_fuzz_malformed_arguments_fail_in_one_line(capsys):
    argvs = _malformed_argvs(300)
    assert len({tuple(a) for a in argvs}) > 150  # genuinely varied
    failures = []
    for argv in argvs:
        try:
            code = main(argv)
        except BaseException as err:  # noqa: BLE001 - report every escape, not only the first
            failures.append((argv, f"raised {type(err).__name__}: {err}"))
            capsys.readouterr()
            continue
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if code != 2 or len(lines) != 1 or "Traceback" in err:
            failures.append((argv, f"exit {code}, stderr {err!r}"))
    assert not failures, failures[:5]


def test_train_backbone_offers_every_named_mixture(capsys):
    from commit_env.backbones.tiny import MIXES

    sub = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["train-backbone"]._actions
        if "--mix" in a.option_strings
    )
    assert set(sub.choices) == set(MIXES)
    _fails_in_one_line(capsys, ["train-backbone", "--mix", "nosuch"], "'nosuch'", "repair")
