"""The code-LM commands end to end on a tiny HF folder: forget-set, erase --forget, evaluate --suite
memorization, and the one-line errors (exit 2) for bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.cli.app import app
from erasekit.cli.main import _register

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, tiny_lm):
    """The tiny LM saved as a Hugging Face folder that says it was trained on CodeWorld (seed 0)."""
    from erasekit.codeworld.tiny import tiny_corpus_manifest
    from erasekit.codeworld.train import MANIFEST_NAME

    folder = tmp_path_factory.mktemp("tiny-code-lm")
    tiny_lm.model.save_pretrained(folder, safe_serialization=True)
    tiny_lm.tokenizer.save_pretrained(folder)
    manifest = {"kind": "erasekit-code-lm", "corpus": tiny_corpus_manifest(0)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def _ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def _fails(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="module")
def erased(tmp_path_factory, lm_folder):
    tmp = tmp_path_factory.mktemp("cli")
    forget = tmp / "secrets.jsonl"
    _ok(["codeworld", "forget-set", "--out", str(forget), "--per-kind", "1"])
    assert len(forget.read_text().splitlines()) == 8
    out = tmp / "erased"
    args = ["erase", "codeeraser", "--model", str(lm_folder), "--forget", str(forget), "--out", str(out)]
    summary = json.loads(
        _ok(
            [
                *args,
                "-o",
                "max_epochs=1",
                "-o",
                "retain_samples=4",
                "-o",
                "ma_threshold=0",
                "-o",
                "el_threshold=0",
                "--json",
            ]
        ).output
    )
    assert summary["method"] == "codeeraser" and summary["edited_parameters"] > 0
    return tmp, forget, out


def test_erase_then_evaluate_memorization(erased, lm_folder):
    tmp, forget, out = erased
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["backend"] == "causal_lm" and manifest["unlearning"]["forget_secrets"] == 8
    result = _ok(
        [
            "evaluate",
            "--suite",
            "memorization",
            "--model",
            str(lm_folder),
            "--artifact",
            str(out),
            "--forget",
            str(forget),
            "--out",
            str(tmp / "eval"),
            "--json",
        ]
    )
    data = json.loads(result.output)
    for label in ("base", "after"):
        report = data[label]
        assert report["forget"]["secrets"] == 8 and 0 <= report["forget"]["ma"] <= 1
        assert report["other_secrets"]["secrets"] > 0 and report["heldout_perplexity"] > 1
    assert (tmp / "eval" / "results.json").is_file()
    _ok(["report", str(tmp / "eval"), "--out", str(tmp / "report.html")])
    html = (tmp / "report.html").read_text()
    assert "Memorisation (code LMs)" in html and "forget greedy extraction" in html


def test_bad_inputs_exit_2(erased, lm_folder, tmp_path):
    tmp, forget, out = erased
    plain = tmp_path / "plain.py"
    plain.write_text("def add(a, b):\n    return a + b\n")
    _fails(
        [
            "erase",
            "codeeraser",
            "--model",
            str(lm_folder),
            "--forget",
            str(plain),
            "--out",
            str(tmp_path / "x"),
        ],
        "No secrets found",
    )
    _fails(
        [
            "erase",
            "uce",
            "--model",
            "tiny",
            "--concept",
            "star",
            "--forget",
            str(forget),
            "--out",
            str(tmp_path / "x"),
        ],
        "takes no forget file",
    )
    # a diffusion artifact on the LM
    sd = Artifact(method="uce", manifest={"backend": "sd"})
    sd.add_weight("unet.conv_in.weight", torch.zeros(1))
    sd.save(tmp_path / "sd")
    _fails(
        [
            "evaluate",
            "--suite",
            "memorization",
            "--model",
            str(lm_folder),
            "--artifact",
            str(tmp_path / "sd"),
            "--forget",
            str(forget),
        ],
        "not a causal LM",
    )
    # an LM artifact made with another tokenizer
    other = Artifact.load(out)
    other.manifest["unlearning"]["tokenizer_fingerprint"] = "sha256:0000"
    other.save(tmp_path / "other-tok")
    _fails(
        [
            "evaluate",
            "--suite",
            "memorization",
            "--model",
            str(lm_folder),
            "--artifact",
            str(tmp_path / "other-tok"),
            "--forget",
            str(forget),
        ],
        "Tokenizer mismatch",
    )
    # an LM method on a diffusion model
    _fails(
        ["erase", "codeeraser", "--model", "tiny", "--forget", str(forget), "--out", str(tmp_path / "x")],
        "causal language models",
    )


def test_bench_codeeraser_runs_and_writes_json(lm_folder, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_codeeraser.py"
    spec = importlib.util.spec_from_file_location("bench_codeeraser", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    sets = ["ga:max_epochs=1", "ga:ma_threshold=0", "ga:el_threshold=0"]
    bench.main(
        [
            "--model",
            str(lm_folder),
            "--methods",
            "ga",
            "--per-kind",
            "1",
            "--samples",
            "1",
            *sum((["--set", s] for s in sets), []),
            "--out",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    assert data["settings"]["forget_secrets"] == 8
    entry = data["methods"]["ga"]
    assert entry["epochs"] == 1 and set(entry["targets"]) == {
        "forget_greedy_extraction_le_1pct",
        "heldout_ppl_within_5pct",
    }
    assert {"forget", "other_secrets", "secrets_4x", "heldout_perplexity", "completion_accuracy"} <= set(
        entry["after"]
    )


def test_codeworld_train_smoke_writes_a_loadable_folder(tmp_path):
    """Two optimiser steps of the shipped recipe (tiny width): the export loads as an LM backend."""
    from erasekit.codeworld.train import MANIFEST_NAME
    from erasekit.zoo import load_model

    out = tmp_path / "lm"
    args = [
        "--out-dir",
        str(out),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--background-files",
        "50",
        "--hidden-size",
        "32",
        "--heads",
        "2",
        "--layers",
        "1",
        "--intermediate-size",
        "64",
        "--vocab-size",
        "300",
    ]
    _ok(["codeworld", "train", *args])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["recipe"]["steps"] == 2 and len(manifest["curve"]) == 2
    backend = load_model(str(out))
    assert backend.kind == "causal_lm" and backend.data_source.name == "codeworld"
