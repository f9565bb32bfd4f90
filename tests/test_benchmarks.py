"""Smoke test of the erase-cost benchmark: two ESD iterations on the tiny model, JSON as documented."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_erase.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_erase", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_erase_runs_on_tiny_and_writes_json(tmp_path):
    out = tmp_path / "erase_tiny.json"
    argv = ["--model", "tiny", "--esd-iterations", "2", "--esd-ddim-steps", "3", "--sample-steps", "2"]
    _load_bench().main([*argv, "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["model"] == "tiny"
    assert {"erasekit", "torch", "diffusers"} <= set(result["versions"])
    assert {"platform", "cpu_count", "torch_threads"} <= set(result["machine"])
    runs = {(r["task"], r.get("method")): r for r in result["runs"]}
    assert set(runs) == {("erase", "uce"), ("erase", "esd"), ("sample", None)}
    assert runs[("erase", "esd")]["iterations"] == 2
    for run in runs.values():
        assert run["seconds"] > 0 and run["peak_memory_bytes"] >= 0
    assert runs[("erase", "uce")]["artifact_bytes"] > 0
    assert runs[("sample", None)]["steps"] == 2
