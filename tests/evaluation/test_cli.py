import json

from commit_env.evaluation.cli import main, parse_params


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "qa" in out and "threshold" in out and "tiny" in out


def test_eval_json(capsys):
    code = main(
        [
            "eval",
            "--task",
            "math",
            "--policy",
            "threshold",
            "--param",
            "threshold=0.9",
            "--n",
            "6",
            "--window",
            "block:4",
            "--json",
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["params"] == {"threshold": 0.9}
    assert 0.0 <= record["score_ci_low"] <= record["score"] <= record["score_ci_high"] <= 1.0
    assert record["nfe"] >= 1 and record["n"] == 6


def test_eval_oracle_text(capsys):
    assert main(["eval", "--task", "qa", "--policy", "oracle", "--n", "4", "--no-progress"]) == 0
    assert "NFE" in capsys.readouterr().out


def test_unknown_names_list_valid_ones(capsys):
    assert main(["eval", "--task", "nope", "--n", "2"]) == 2
    assert "expected one of" in capsys.readouterr().err
    assert main(["eval", "--policy", "nope", "--n", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["eval", "--backbone", "nope", "--n", "2"]) == 2
    assert "hf:" in capsys.readouterr().err


def test_bad_window_and_param(capsys):
    assert main(["eval", "--window", "block:5", "--n", "2"]) == 2
    assert "divide" in capsys.readouterr().err
    assert main(["eval", "--param", "oops", "--n", "2"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_parse_params():
    assert parse_params(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}


def test_train_ppo_rejects_bad_init(capsys, tmp_path):
    code = main(
        [
            "train-ppo",
            "--task",
            "qa",
            "--timesteps",
            "64",
            "--out",
            str(tmp_path),
            "--init",
            "nonsense",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "controller:DIR" in capsys.readouterr().err


def test_every_subcommand_is_wired_in_one_parser():
    from commit_env.evaluation.cli import _COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(_COMMANDS)
    args = parser.parse_args(
        ["ppo-sweep", "--lambdas", "0.01", "0.05", "--kind", "masked-lm", "--window", "full"]
    )
    assert args.lambdas == [0.01, 0.05] and args.kind == "masked-lm" and args.window == "full"
