"""`erasekit evaluate`, `erasekit world …` and `erasekit demo` on the tiny model; user mistakes exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.cli.app import app
from erasekit.cli.main import _register
from erasekit.zoo import load_model as load_backend

_register()
runner = CliRunner()
FAST = ["--steps", "2", "--seeds-per-prompt", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    """A small weight edit of the tiny model's cross-attention, saved as an artifact."""
    backend = load_backend("tiny")
    name = next(n for n in backend.parameters_for("cross_attn_kv") if n.endswith("to_k.weight"))
    artifact = Artifact("test-edit")
    artifact.add_weight(name, 0.5 * torch.ones_like(backend.named_parameters()[name]))
    artifact.manifest["base_fingerprint"] = backend.fingerprint()
    path = tmp_path_factory.mktemp("artifact") / "edit"
    artifact.save(path)
    return path


def test_evaluate_json_and_run_folder(tmp_path, artifact_path):
    out = tmp_path / "run"
    result = invoke(
        "evaluate",
        "--model",
        "tiny",
        "--artifact",
        artifact_path,
        "--suite",
        "shapesworld",
        "--erased",
        "star",
        "--out",
        out,
        "--json",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("ua", "synonym_ua", "ira", "cra"):
        assert 0 <= data[key] <= 1 and 0 <= data["base"][key] <= 1
    assert data["fid"] >= 0 and data["seconds"] > 0 and "fid" in data["base"]
    assert data["artifacts"][0]["method"] == "test-edit"
    assert data["artifacts"][0]["path"] == str(artifact_path)
    assert (out / "results.json").is_file() and (out / "manifest.jsonl").is_file()
    assert len(list((out / "images").glob("*.png"))) == len(data["grid"])
    assert (out / "base" / "manifest.jsonl").read_text().count("\n") == len(data["grid"])
    # the edit changed the images: the erased run is not a copy of the base
    assert (out / "manifest.jsonl").read_text() != (out / "base" / "manifest.jsonl").read_text()

    text = invoke("evaluate", "--model", "tiny", "--erased", "star", *FAST)  # human table, base cached
    assert text.exit_code == 0, text.output
    assert "UA" in text.stdout and "IRA" in text.stdout and "base" in text.stdout


def test_evaluate_runs_attacks_and_reports_their_asr(tmp_path, artifact_path):
    budget = tmp_path / "budget.json"
    budget.write_text(
        json.dumps(
            {
                "synonym": {"steps": 2, "prompts_per_synonym": 1},
                "concept_vector": {"steps": 2, "pairs": 1, "prompts": 2, "scales": [2.0]},
            }
        )
    )
    args = ["evaluate", "--model", "tiny", "--artifact", artifact_path, "--erased", "star", *FAST]
    attack_args = ["--attacks", "synonym,concept_vector", "--attack-budget", budget]
    result = invoke(*args, *attack_args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["attacks"]) == {"synonym", "concept_vector"}
    synonym, vector = data["attacks"]["synonym"], data["attacks"]["concept_vector"]
    # the budget file reached each attack, and the ASR is the share of judged hits
    assert synonym["budget"]["prompts_per_synonym"] == 1 and vector["budget"]["pairs"] == 1
    for record in (synonym, vector):
        assert record["asr"] == record["successes"] / record["attempts"] and record["attempts"] > 0
        assert record["model_fingerprint"] != data["model_fingerprint"]  # attacked: the erased model
    assert "ua" in data and "base" in data  # beside the protocol's own numbers

    text = invoke(*args, *attack_args)
    assert text.exit_code == 0, text.output
    assert "attack synonym: ASR" in text.stdout and "attack concept_vector: ASR" in text.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"synonym": {"no_such_field": 1}}))
    wrong = invoke(*args, "--attacks", "synonym", "--attack-budget", bad)
    assert wrong.exit_code == 2 and "synonym" in wrong.output and "Traceback" not in wrong.output


def test_evaluate_prompt_file_with_rows(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "a red star", "seed": 0, "labels": {"shape": "star", "color": "red"}})
        + "\n"
        + json.dumps({"prompt": "a blue ring", "seed": 1, "labels": {"color": "blue"}})
        + "\n"
    )
    rows = tmp_path / "rows.jsonl"
    result = invoke(
        "evaluate", "--model", "tiny", "--prompts", prompts, "--rows", rows, "--json", "--steps", "2"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n"] == 2 and set(data["accuracy"]) == {"shape", "color"} and data["seconds"] > 0
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["prompt"] for r in lines] == ["a red star", "a blue ring"]
    assert set(lines[0]["prediction"]) == {"shape", "color", "style"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "coco", "--erased", "star"], "unknown suite"),
        (["--erased", "hexagon"], "hexagon"),
        ([], "--erased"),
        (["--erased", "star", "--artifact", "/nonexistent/edit"], "not found"),
        (["--erased", "star", "--rows", "x.jsonl"], "--prompts"),
        (["--erased", "star", "--steps", "0"], "--steps"),
        (["--erased", "star", "--threads", "0"], "--threads"),
        (["--prompts", "/nonexistent.jsonl"], "not found"),
        (["--erased", "star", "--attacks", "synonym"], "--artifact"),
        (["--prompts", "p.jsonl", "--processes", "2"], "--processes"),
        (["--erased", "star", "--attacks", "nope"], "Unknown attack"),
        (["--erased", "star", "--attacks", "all", "--attack-budget", "huge"], "huge"),
        (["--erased", "star", "--attacks", "all", "--attack-budget", "/nonexistent.json"], "not found"),
    ],
)
def test_evaluate_user_mistakes_exit_2(args, message):
    result = invoke("evaluate", "--model", "tiny", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_evaluate_bad_prompt_row_names_the_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a red star", "seed": 0}\n{"prompt": "x", "seed": 0, "labels": {"color": "mauve"}}\n'
    )
    result = invoke("evaluate", "--model", "tiny", "--prompts", prompts)
    assert result.exit_code == 2
    assert "p.jsonl line 2" in result.output and "mauve" in result.output


def test_world_info_and_train_passthrough():
    result = invoke("world", "info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["domains"]["shape"][3] == "star" and data["judge"]["present"]
    assert data["judge"]["accuracy_fresh_renders"]["shape"] >= 0.99
    assert "judge" in invoke("world", "info").stdout
    usage = invoke("world", "train", "--help")
    assert usage.exit_code == 0 and "--out-dir" in usage.stdout
    assert invoke("world", "train", "--no-such-option").exit_code == 2


def test_world_judge_train_writes_a_loadable_judge(tmp_path):
    result = invoke(
        "world", "judge-train", "--out", tmp_path, "--steps", "2", "--pool", "32", "--eval-images", "16"
    )
    assert result.exit_code == 0, result.output
    from erasekit.world.judge import load_judge

    judge = load_judge(tmp_path)
    assert judge.config.steps == 2 and "accuracy_fresh_renders" in judge.info
    assert invoke("world", "judge-train", "--out", tmp_path, "--steps", "0").exit_code == 2


def test_demo_on_the_tiny_model(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--model", "tiny", "--concept", "star", "--out", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "uce" and data["concept"] == "star"
    assert (out / "before_after.png").is_file() and (out / "uce-star.safetensors").is_file()
    assert (out / "run" / "results.json").is_file() and (out / "demo.json").is_file()
    evaluation = data["evaluation"]
    assert evaluation["artifacts"][0]["method"] == "uce" and "base" in evaluation
    human = invoke("demo", "--model", "tiny", "--concept", "star", "--out", out, *FAST)
    assert human.exit_code == 0 and "before/after grid" in human.stdout


@pytest.mark.parametrize(
    "args", [["--concept", "hexagon"], ["--concept", "star", "--anchor", "red"], ["--threads", "0"]]
)
def test_demo_user_mistakes_exit_2(args, tmp_path):
    result = invoke("demo", "--model", "tiny", "--out", tmp_path, *args)
    assert result.exit_code == 2, result.output


def test_evaluate_refuses_an_unknown_grid_before_loading_the_model():
    result = invoke("evaluate", "--model", "no-such-model", "--erased", "star", "--grid", "huge")
    assert result.exit_code == 2 and "--grid" in result.output and "heldout" in result.output
