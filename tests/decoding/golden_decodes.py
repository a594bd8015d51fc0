"""Golden decodes: the engine's outputs on a fixed grid, recorded before remasking existed.

``python tests/decoding/golden_decodes.py`` rewrites ``data/golden_decodes.json`` (only do that
when a behaviour change is intended); ``test_remask.py`` checks the engine still reproduces it bit
for bit with remasking off, and with remasking allowed but never requested.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from decoding_fakes import FakeBackbone, distinct_prompts  # noqa: E402

from commit_env.decoding import DecodeConfig, decode  # noqa: E402
from commit_env.policies import make_policy  # noqa: E402

PATH = Path(__file__).parent / "data" / "golden_decodes.json"

POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("topk", {}),
    ("topk", {"k": 3}),
    ("topk", {"score": "random", "k": 2}),
    ("threshold", {"threshold": 0.5}),
    ("eb", {"gamma": 0.5}),
    ("klass", {}),
    ("prophet", {"high": 2.0, "mid": 1.5, "low": 1.0}),
]
SETTINGS: list[dict[str, Any]] = [
    {"gen_length": 12, "window": "full"},
    {"gen_length": 12, "window": "block:4", "step_budget": 5},
    {"gen_length": 12, "window": "sliding:3"},
    {"gen_length": 12, "window": "full", "temperature": 1.0, "eos_stop": False},
]
FIELDS = (
    "tokens",
    "nfe",
    "steps",
    "commit_step",
    "forced_commits",
    "budget_fills",
    "early_fills",
    "filled_without_forward",
    "forward_tokens",
)


def run_grid(**engine_options: Any) -> list[dict[str, Any]]:
    """Decode every (policy, setting) of the grid; ``engine_options`` go into every config."""
    backbone = FakeBackbone(eos_bias=1.0)
    prompts = distinct_prompts(5, seed=3)
    out = []
    for name, params in POLICIES:
        for setting in SETTINGS:
            config = DecodeConfig(**setting, **engine_options)
            result = decode(backbone, prompts, make_policy(name, **params), config, batch_size=3)
            record = {"policy": name, "params": params, "setting": setting}
            record.update({f: getattr(result, f).tolist() for f in FIELDS})
            out.append(record)
    return out


if __name__ == "__main__":
    PATH.write_text(json.dumps(run_grid()))
    print(f"wrote {PATH}")
