"""GA vs constraint-based GA vs CodeEraser on the shipped code-lm: what is forgotten, what stays, at what cost.

    python benchmarks/bench_codeeraser.py                       # code-lm, paper hyper-parameters
    python benchmarks/bench_codeeraser.py --methods codeeraser --set codeeraser:alpha=10 --tag alpha10

The forget set is ``--per-kind`` secrets of every kind that code-lm memorised (16× duplicated),
written to a JSONL file without spans, so the methods find the secrets with detect-secrets like a
user's run does. Measured before and after each method (in file context, see
:mod:`erasekit.evaluation.memorization`): MA, EL_10, greedy and sampled (8 × top-k 40) verbatim
extraction on the forget set, on the other 16× secrets (same formats: collateral), on the 4×
secrets, and on unseen secrets; held-out perplexity (200 files); completion accuracy of 64 held-out
functions; time, peak memory, epochs and the stop rule that fired. Writes
``benchmarks/results/codeeraser_<model>[_<tag>].json``. Targets (issue 11): forget-set greedy
extraction ≤ 1 %, held-out perplexity within 5 % of the base model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from erasekit.applying import apply, revert
from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.evaluation.memorization import memorization_report, secret_examples, secret_scores
from erasekit.methods import get_method, run_method
from erasekit.zoo import load_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha


def measure(backend, inputs: dict, four: list, samples: int, seed: int) -> dict:
    started = time.perf_counter()
    report = memorization_report(backend, **inputs, samples=samples, seed=seed)
    report["secrets_4x"] = secret_scores(backend, secret_examples(backend, four), samples=samples, seed=seed)
    report["eval_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="code-lm")
    parser.add_argument("--methods", default="ga,ga_kl,codeeraser")
    parser.add_argument("--per-kind", type=int, default=2, help="Forget secrets per kind (8 kinds).")
    parser.add_argument("--samples", type=int, default=8, help="Samples per secret for sampled extraction.")
    parser.add_argument(
        "--set", action="append", default=[], help="METHOD:key=value config override (repeatable)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backend = load_model(args.model)
    source = backend.data_source
    forget, other = source.forget_split(args.per_kind)
    other16 = [s for s in other if "-16x-" in s.sample_id]
    four = [s for s in other if "-4x-" in s.sample_id]
    inputs = {
        "forget": forget,
        "other": other16,
        "unseen": source.unseen_samples(),
        "heldout_texts": source.heldout_texts(200),
        "functions": source.heldout_functions(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-codeeraser-"))
    forget_file = tmp / "forget.jsonl"
    forget_file.write_text("".join(json.dumps({"id": s.sample_id, "text": s.text}) + "\n" for s in forget))

    result = {
        "benchmark": "codeeraser",
        "created": now_iso(),
        "model": args.model,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "versions": environment_versions(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": {
            "per_kind": args.per_kind,
            "forget_secrets": len(forget),
            "samples": args.samples,
            "seed": args.seed,
            "overrides": args.set,
        },
        "base": measure(backend, inputs, four, args.samples, args.seed),
        "methods": {},
    }
    print(json.dumps({"base": result["base"]}), flush=True)
    base_ppl = result["base"]["heldout_perplexity"]
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method = get_method(name)
        overrides = [f"forget_file={forget_file}"] + [
            s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == name
        ]
        config = build_config(method.config_cls, None, overrides)
        artifact = run_method(method, backend, ConceptSpec.from_lists(["secrets"]), config, seed=args.seed)
        try:
            apply(artifact, backend)
            after = measure(backend, inputs, four, args.samples, args.seed)
        finally:
            revert(backend)
        info = artifact.manifest["unlearning"]
        entry = {
            "config": artifact.manifest["config"],
            "cost": artifact.manifest["cost"],
            "epochs": info["epochs"],
            "stop_reason": info["stop_reason"],
            "ma_threshold": info["ma_threshold"],
            "el10_threshold": info.get("el10_threshold"),
            "retain_source": info["retain_source"],
            "curve": info["curve"],
            "after": after,
            "targets": {
                "forget_greedy_extraction_le_1pct": after["forget"]["greedy_extraction"] <= 0.01,
                "heldout_ppl_within_5pct": after["heldout_perplexity"] <= 1.05 * base_ppl,
            },
        }
        result["methods"][name] = entry
        print(
            json.dumps({name: {k: entry[k] for k in ("epochs", "stop_reason", "targets")}, "after": after}),
            flush=True,
        )

    out = (
        args.out
        or RESULTS_DIR / f"codeeraser_{Path(args.model).name}{'_' + args.tag if args.tag else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_out = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp_out, out)
    print(out)


if __name__ == "__main__":
    main()
