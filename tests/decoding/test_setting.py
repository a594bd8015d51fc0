"""The one setting type and its one validation function."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from commit_env.decoding import DecodeConfig, DecodeSetting, validate_setting
from commit_env.policies import make_policy


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0, "full"), "gen_length must be an int >= 1, got 0"),
        ((-4, "full"), "gen_length must be an int >= 1, got -4"),
        ((8.0, "full"), "gen_length must be an int >= 1, got 8.0"),
        ((True, "full"), "gen_length must be an int >= 1, got True"),
        ((16, "block:5"), "block width 5 must divide gen_length 16"),
        ((16, "blocks:4"), "bad window 'blocks:4'"),
        ((16, "sliding:0"), "bad window 'sliding:0'"),
        ((16, None), "window must be a string"),
        ((16, "full", 0), "step_budget must be an int >= 1 or None, got 0"),
        ((16, "full", 2.5), "step_budget must be an int >= 1 or None, got 2.5"),
    ],
)
def test_validate_setting_rejects_with_one_line_naming_value_and_range(args, needle):
    with pytest.raises(ValueError) as err:
        validate_setting(*args)
    message = str(err.value)
    assert needle in message and "\n" not in message
    with pytest.raises(ValueError, match=needle.split(",")[0].split(" ")[0]):
        DecodeSetting(*args)


def test_validate_setting_accepts_numpy_ints_and_clamps_width():
    assert validate_setting(np.int64(16), "block:4", np.int32(3)) == ("block", 4)
    assert validate_setting(8, "full") == ("full", 8)
    with pytest.warns(UserWarning, match="exceeds gen_length"):
        setting = DecodeSetting(8, "sliding:32")
    assert setting.window_width == 8 and setting.window_kind == "sliding"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", math.nan, "temperature must be a finite number >= 0, got nan"),
        ("temperature", math.inf, "temperature must be a finite number >= 0, got inf"),
        ("temperature", -0.5, "temperature must be a finite number >= 0, got -0.5"),
        ("top_k", 1, "top_k must be an int >= 2"),
        ("history", 0, "history must be an int >= 1, got 0"),
        ("hidden_features", -1, "hidden_features must be an int >= 0, got -1"),
    ],
)
def test_decode_config_rejects_bad_engine_options(field, value, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        DecodeConfig(**{field: value})


def test_decode_config_is_a_setting_and_round_trips():
    config = DecodeConfig(gen_length=12, window="block:4", step_budget=6, temperature=0.5)
    assert isinstance(config, DecodeSetting)
    assert config.setting == DecodeSetting(12, "block:4", 6)
    assert config.setting.config(temperature=0.5) == config
    assert config.label == "G=12 block:4 S=6" and config.budget == 6
    changed = dataclasses.replace(config, gen_length=8)  # derived fields are recomputed
    assert changed.window_width == 4 and changed.gen_length == 8
    with pytest.raises(ValueError, match="divide"):
        dataclasses.replace(config, gen_length=10)


def test_decode_config_protocol_default_is_documented_default():
    policy = make_policy("threshold", threshold=0.9)
    assert policy.decode_config() == DecodeConfig()
    base = DecodeConfig(gen_length=8, window="block:4")
    assert policy.decode_config(base) is base
    assert policy.decode_config(base, record_trace=True).record_trace
