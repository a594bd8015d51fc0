"""Controller and trace run directories: resume keys, whole checkpoints, load-time validation,
locked collections and strict JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from commit_env.evaluation.cli import main
from commit_env.supervised import train as train_module
from commit_env.supervised.policy import ControllerPolicy, load_controller
from commit_env.supervised.train import TrainConfig, train

from commit_env.errors import CorruptCheckpointError, ResumeMismatch, RunDirError, RunDirLocked
from commit_env.traces import TraceWriter


def _config(traces, out, **kw):
    base = dict(
        traces=(str(traces),),
        out=str(out),
        epochs=1,
        batch_size=64,
        rollout_n=0,
        progress=False,
        val_every_n_traces=4,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def one_epoch(small_collection, tmp_path_factory):
    cfg, _ = small_collection
    out = tmp_path_factory.mktemp("ctrl1") / "run"
    train(_config(cfg.out, out))
    return cfg.out, out


class _Reached(Exception):
    pass


def test_resume_with_other_hyperparameters_or_traces_is_refused(
    one_epoch, tmp_path, monkeypatch, capsys
):
    traces, out = one_epoch
    with pytest.raises(ResumeMismatch, match=r"lr: 0\.002 -> 0\.01"):
        train(_config(traces, out, epochs=2, resume=True, lr=0.01))
    other = tmp_path / "other-traces"
    shutil.copytree(traces, other)
    with pytest.raises(ResumeMismatch, match="traces"):
        train(_config(other, out, epochs=2, resume=True))
    # the same through the CLI: one line, exit status 2
    argv = ["train-controller", "--traces", str(traces), "--out", str(out), "--resume"]
    assert main([*argv, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lr: 0.002 -> 0.01" in err and "--force" in err
    # --force gets past the check (stop right after it)
    monkeypatch.setattr(train_module, "_load_data", lambda cfg: (_ for _ in ()).throw(_Reached()))
    with pytest.raises(_Reached):
        train(_config(traces, out, epochs=2, resume=True, lr=0.01, force=True))


def test_checkpoint_killed_mid_write_keeps_the_previous_whole_and_resume_continues(
    small_collection, tmp_path, monkeypatch
):
    traces = small_collection[0].out
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"optimizer": 0}

    def dying_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            calls["optimizer"] += 1
            if calls["optimizer"] == 2:  # epoch 2: killed before the optimizer state lands
                raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(_config(traces, out, epochs=2))
    monkeypatch.setattr(torch, "save", real_save)
    last = out / "last"
    assert sorted(p.name for p in last.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.pt",
    ]
    state = torch.load(last / "optimizer.pt", weights_only=True)
    assert state["epoch"] == 1
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    more = train(_config(traces, out, epochs=2, resume=True))
    assert [h["epoch"] for h in more["history"]] == [1, 2]


def test_resume_from_an_incomplete_last_says_why(one_epoch, tmp_path):
    traces, out = one_epoch
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "last" / "optimizer.pt").unlink()
    with pytest.raises(ResumeMismatch, match="lacks optimizer.pt"):
        train(_config(traces, copy, epochs=2, resume=True))


def test_edited_shape_metadata_fails_at_load_naming_the_file(one_epoch, tmp_path, capsys):
    _, out = one_epoch
    bad = tmp_path / "bad"
    shutil.copytree(out / "best", bad)
    config = json.loads((bad / "config.json").read_text())
    config["hidden_features"] = config["hidden_features"] + 5
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="config.json.*hidden_features"):
        ControllerPolicy.from_pretrained(bad)
    config["hidden_features"] -= 5
    config["controller"]["d_model"] = 2 * config["controller"]["d_model"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors does not match"):
        load_controller(bad)
    shutil.copy(out / "best" / "config.json", bad / "config.json")
    weights = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[:100])
    argv = ["train-ppo", "--init", f"controller:{bad}", "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad / "model.safetensors") in err


HOLDER = textwrap.dedent(
    """
    import sys, time
    from commit_env.rundir import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_collect_into_a_running_collection_leaves_its_manifest(
    small_collection, tmp_path, capsys
):
    traces = tmp_path / "traces"
    shutil.copytree(small_collection[0].out, traces)
    manifest = (traces / "manifest.json").read_text()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(traces)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main(["collect", "--out", str(traces), "--n", "96", "--seed", "3"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"process {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()
    assert (traces / "manifest.json").read_text() == manifest


def test_no_op_resumed_collect_prints_strict_json(small_collection, tmp_path, capsys):
    cfg, _ = small_collection
    traces = tmp_path / "traces"
    shutil.copytree(cfg.out, traces)
    argv = ["collect", "--out", str(traces), "--n", str(cfg.n), "--seed", str(cfg.seed)]
    assert main([*argv, "--batch-size", "24"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in {out}"))
    assert summary["traces"] == cfg.n and summary["mean_score_this_run"] is None


def test_manifest_changed_by_another_writer_is_not_overwritten(tmp_path):
    meta = {"feature_names": [], "gen_length": 4}
    first = TraceWriter(tmp_path, meta, shard_traces=100)
    second = TraceWriter(tmp_path, meta, shard_traces=100)
    step = {"trace_id": 0, "nfe": 0}
    first.add_trace({"trace_id": 0, "example_index": 0}, [step])
    first.flush()
    second.add_trace({"trace_id": 0, "example_index": 0}, [step])
    with pytest.raises(RunDirError, match="another writer"):
        second.flush()
    assert len(json.loads((tmp_path / "manifest.json").read_text())["shards"]) == 1


def test_two_trainers_into_one_out(one_epoch, tmp_path):
    traces, _ = one_epoch
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"process {proc.pid}"):
            train(_config(traces, out))
    finally:
        proc.kill()
        proc.wait()
