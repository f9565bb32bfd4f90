"""Sharded evaluation: 2 CPU processes (accelerate over torch.distributed) give exactly the 1-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.evaluation import distributed
from erasekit.evaluation.generate import read_manifest

METRICS = ("ua", "synonym_ua", "ira", "cra", "fid")


def _inputs(tiny_backend, tmp_path):
    from erasekit.world.judge import Judge, JudgeConfig, JudgeNet, save_judge

    torch.manual_seed(0)
    save_judge(Judge(JudgeNet(JudgeConfig()), JudgeConfig()), tmp_path / "judge")
    name, param = next(iter(tiny_backend.parameters_for("cross_attn_kv").items()))
    artifact = Artifact("uce")
    artifact.add_weight(name, 0.5 * torch.randn_like(param))
    artifact.save(tmp_path / "erase-star")
    budget = tmp_path / "attack-budget.json"
    budget.write_text(json.dumps({"synonym": {"steps": 2, "prompts_per_synonym": 1}}))
    return [
        "evaluate",
        "--model",
        "tiny",
        "--artifact",
        str(tmp_path / "erase-star"),
        "--erased",
        "star",
        "--steps",
        "2",
        "--seeds-per-prompt",
        "1",
        "--batch-size",
        "4",
        "--judge",
        str(tmp_path / "judge"),
        "--no-cache",
        "--attacks",
        "synonym",
        "--attack-budget",
        str(budget),
        "--json",
    ]


def test_two_processes_match_one(tiny_backend, tmp_path):
    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    args = _inputs(tiny_backend, tmp_path)
    _register()
    start = time.perf_counter()
    single = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one")])
    single_seconds = time.perf_counter() - start
    assert single.exit_code == 0, single.output
    one = json.loads(single.stdout.strip().splitlines()[-1])

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "ERASEKIT_CACHE": str(tmp_path / "cache"),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "erasekit", *args, "--out", str(tmp_path / "two"), "--processes", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    sharded_seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(outputs) == 1  # only the main process reports
    two = json.loads(outputs[0])
    print(f"1 process {single_seconds:.1f} s (in-process), 2 processes {sharded_seconds:.1f} s (with launch)")

    for key in METRICS:
        assert two[key] == one[key], key
        assert two["base"][key] == one["base"][key], key
    assert two["n"] == one["n"] and two["grid"] == one["grid"]
    # attacks run once, on the main process, against the same erased model
    assert two["attacks"]["synonym"]["asr"] == one["attacks"]["synonym"]["asr"]
    assert two["attacks"]["synonym"]["model_fingerprint"] == one["attacks"]["synonym"]["model_fingerprint"]
    for run in ("", "base"):
        rows_one = read_manifest(tmp_path / "one" / run)
        rows_two = read_manifest(tmp_path / "two" / run)
        assert [r["id"] for r in rows_two] == [r["id"] for r in rows_one]  # merged in row order
        assert [r["sha256"] for r in rows_two] == [r["sha256"] for r in rows_one]  # bit-identical PNGs
        assert {r["batch_index"] % 2 for r in rows_two} == {0, 1}  # both processes drew batches
        assert not list((tmp_path / "two" / run).glob("manifest.shard-*"))
    assert (tmp_path / "two" / "results.json").is_file()


def test_relaunch_drops_the_processes_option(monkeypatch):
    calls = []
    monkeypatch.setattr(
        distributed.subprocess, "call", lambda command, env: calls.append((command, env)) or 0
    )
    assert (
        distributed.relaunch(
            3, ["evaluate", "--processes", "3", "--model", "tiny", "--processes=3", "--json"]
        )
        == 0
    )
    command, env = calls[0]
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert command[5:] == ["-m", "erasekit", "evaluate", "--model", "tiny", "--json"]
    assert env["OMP_NUM_THREADS"]


def test_world_size_from_the_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.launched_world_size() == 4
