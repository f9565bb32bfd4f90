"""Smoke test of the erase-cost benchmark: two ESD iterations on the tiny model, JSON as documented."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

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


def _load(name: str):
    path = BENCH.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_methods_records_the_protocol_and_attacks(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))
    argv = [
        "--model",
        "tiny",
        "--methods",
        "uce",
        "--concepts",
        "star",
        "--seeds-per-prompt",
        "1",
        "--spec",
        "benchmark",
    ]
    argv += ["--attacks", "synonym", "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    _load("bench_methods").main(argv)
    record = json.loads((tmp_path / "shapesworld_uce_star.json").read_text())
    assert record["method"] == "uce" and record["concept"] == "star"
    assert record["concepts"]["targets"] == [{"text": "star", "anchor": "circle"}]
    assert set(record["attacks"]) == {"synonym"}
    assert record["attacks"]["synonym"]["asr"] == record["evaluate"]["attacks"]["synonym"]["asr"]
    assert record["metrics"]["ua"] == record["evaluate"]["ua"] and record["erase_seconds"] > 0
    assert (tmp_path / "runs" / "uce-star" / "results.json").is_file()
    # The summary table reads the same file and judges it against the bar.
    summary = _load("summarize")
    line = summary.table(summary.load(None, tmp_path)).splitlines()[-1]
    assert line.startswith("| uce | star |") and line.endswith(
        f"| {record['machine']['load_average'][0]:.1f} |"
    )
    assert ("yes" in line) == summary.meets_bar(record)


def test_committed_shapesworld_results_have_what_the_table_reads():
    summary = _load("summarize")
    records = summary.load(None, summary.RESULTS_DIR)
    assert records, "benchmarks/results holds the ShapesWorld method results"
    for record in records:
        for key in ("ua", "synonym_ua", "ira", "cra"):
            assert 0 <= record["metrics"][key] <= 1
        assert record["command"] and record["versions"]["erasekit"]
    assert summary.table(records).count("\n") == len(records) + 1


# ---- parity with the reference implementations (benchmarks/parity/) -------------------------------------
def _load_parity(name: str):
    path = BENCH.parent / "parity" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"parity_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uce_parity_on_tiny_matches_the_released_script(tmp_path):
    out = tmp_path / "uce.json"
    result = _load_parity("uce").main(["--model", "tiny", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    for row in result["rows"]:
        assert row["paper_preset_vs_reference_dW"] < 1e-4  # the paper preset is the script's update
        assert row["default_vs_reference_dW"] > 1e-2  # and tokens=all is a different one
        assert row["uncond_drift_paper_preset"] == pytest.approx(row["uncond_drift_reference"], rel=1e-3)


def test_esd_parity_on_tiny_replays_the_same_losses_and_update(tmp_path):
    argv = ["--model", "tiny", "--iterations", "2", "--ddim-steps", "2", "--out", str(tmp_path / "esd.json")]
    result = _load_parity("esd").main(argv)
    for row in result["rows"]:
        assert row["same_trained_parameters"] and row["paper_eta"] == 1.0
        assert row["max_loss_rel_diff"] < 1e-4 and row["delta_rel_diff"] < 1e-3
    assert result["naive_copy_first_loss_ratio"] == pytest.approx(2.25, rel=1e-3)


def test_spm_parity_on_tiny_matches_the_public_gate_and_target(tmp_path):
    argv = ["--model", "tiny", "--iterations", "2", "--out", str(tmp_path / "spm.json")]
    result = _load_parity("spm").main(argv)
    assert result["max_gamma_difference"] < 1e-5
    assert result["first_loss_erasekit"] == pytest.approx(result["first_loss_reference"], rel=1e-4)
    for row in result["rows"]:
        assert row["reference_vs_erasekit_reference_gate"] < 1e-3


def test_fewshot_step_cost_parity_runs_on_tiny(tmp_path):
    out = tmp_path / "fewshot.json"
    assert _load_parity("fewshot").main(["--model", "tiny", "--steps", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    # erasekit's cost per step is a difference of two timed runs (it cancels the set-up): on a loaded
    # machine and 2 steps it can come out at or below 0, so only its being a number is checked here
    assert record["reference_seconds_per_step"] > 0 and math.isfinite(record["erasekit_seconds_per_step"])
    ratio = record["erasekit_seconds_per_step"] / record["reference_seconds_per_step"]
    assert record["ratio"] == pytest.approx(ratio, rel=0.02)  # both stored rounded
    assert record["config"]["penalty_prompts"] == 8 and record["config"]["check_every"] == 2
