"""``benchmarks/gpu_check.py --cpu-smoke``: the GPU check's code path on a tiny CPU model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_cpu_smoke_runs_every_measure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--batch", "16", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("engine overhead", "throughput ratio", "vector env speed-up", "controller cost"):
        assert f"| {row} |" in proc.stdout
    assert "| KV-cache speed-up (prefix) |" in proc.stdout
    assert "| KV-cache speed-up (dual) |" in proc.stdout
    results = json.loads(out.read_text())
    assert results["shape"] == "smoke" and results["batch"] == 16
    assert 0 < results["forward_s"] <= results["engine_step_s"]
    assert results["engine_overhead_s"] >= 0 and results["controller_select_s"] > 0
    assert results["tokens_per_s_b16"] > 0 and results["tokens_per_s_b1"] > 0
    assert results["vector_env_steps_per_s"] > 0 and results["single_env_steps_per_s"] > 0
    for mode in ("prefix", "dual"):  # same NFE, fewer forward tokens, one refresh per block
        assert results[f"kv_{mode}_nfe"] == results["kv_none_nfe"]
        assert results[f"kv_{mode}_token_ratio"] < 1.0 and results[f"kv_{mode}_speedup"] > 0
        assert results[f"kv_{mode}_refreshes"] == 32 / results["kv_block"]
        assert 0.0 <= results[f"kv_{mode}_agreement"] <= 1.0
    assert results["kv_dual_forward_tokens"] < results["kv_prefix_forward_tokens"]
    assert results["total_s"] < 60


def test_refuses_gpu_mode_without_cuda():
    import torch

    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        return
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "--cpu-smoke" in proc.stderr
