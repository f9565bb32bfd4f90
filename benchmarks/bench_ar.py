"""ShapesWorld-AR benchmarks: the model's judge gate, EAR / ESD-AR under the ShapesWorld protocol, ablations.

    python benchmarks/bench_ar.py gate                       # judge accuracy of the base model on protocol grids
    python benchmarks/bench_ar.py protocol --concepts star,red,striped,triangle,purple,checkered
    python benchmarks/bench_ar.py ablation --concept star     # WGA windows, TLM τ, KV-cache fix, ESD-AR
    python benchmarks/bench_ar.py ablation --concept red --variants tlm --grid heldout   # the τ sweep

Every run loads ``shapes-ar`` once through the zoo (ShapesWorld data source attached), erases with
``run_method`` (erase wall time and peak memory come from the artifact manifest), and scores with
:func:`erasekit.evaluation.shapesworld.evaluate_shapesworld` — the protocol behind ``erasekit evaluate
--suite shapesworld``. Results go to ``benchmarks/results/ar_*.json`` (atomically). Timings are results,
not assertions; the machine's load average is recorded next to them.
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

from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config, config_to_dict
from erasekit.methods import get_method, run_method

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRICS = ("ua", "synonym_ua", "ira", "cra", "fid")
# The bars: UA ≥ 0.9, synonym UA ≥ 0.8, IRA ≥ 0.9 × base, CRA ≥ 0.95 × base.
BARS = {"ua": 0.9, "synonym_ua": 0.8, "ira_ratio": 0.9, "cra_ratio": 0.95}

# name -> (method, overrides); every variant on the same iteration budget as the default
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    "ear_default": ("ear", []),
    "ear_W4": ("ear", ["window=4"]),
    "ear_W32": ("ear", ["window=32"]),
    "ear_W64_all": ("ear", ["window=0"]),
    "ear_tlm_off": ("ear", ["tlm=off"]),
    "ear_tau0.5": ("ear", ["tau=0.5"]),
    "ear_tlm_absolute0.05": ("ear", ["tlm=absolute", "tau=0.05"]),
    "ear_no_context(public code)": ("ear", ["context=none"]),
    "ear_no_context_separate(public code)": ("ear", ["context=none", "history=separate"]),
    "ear_no_anchors": ("ear", ["anchors_per_iteration=0"]),
    "esd_ar": ("esd_ar", []),
    # TLM sweep (relative τ: a window is skipped when its loss ≤ τ × the first window's)
    "ear_tau0.3": ("ear", ["tau=0.3"]),
    "ear_tau0.7": ("ear", ["tau=0.7"]),
    # preservation knobs tried for the held-out IRA of star (see benchmarks/README.md)
    "ear_anchor_weight8": ("ear", ["anchor_weight=8"]),
    "ear_anchors16": ("ear", ["anchors_per_iteration=16"]),
    "ear_eta0.5": ("ear", ["negative_guidance=0.5"]),
}
TLM_SWEEP = ("ear_default", "ear_tlm_off", "ear_tau0.3", "ear_tau0.5", "ear_tau0.7")


def _machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _bars(result: dict) -> dict:
    ratios = result.get("ratios") or {}
    return {
        "ua": result.get("ua") is not None and result["ua"] >= BARS["ua"],
        "synonym_ua": result.get("synonym_ua") is not None and result["synonym_ua"] >= BARS["synonym_ua"],
        "ira": ratios.get("ira") is not None and ratios["ira"] >= BARS["ira_ratio"],
        "cra": ratios.get("cra") is not None and ratios["cra"] >= BARS["cra_ratio"],
    }


def erase_and_score(
    backend, method_name: str, concept: str, overrides: list[str], *, seed: int, grid: str
) -> dict:
    return erase_and_score_grids(backend, method_name, concept, overrides, seed=seed, grids=[grid])[grid]


def erase_and_score_grids(
    backend, method_name: str, concept: str, overrides: list[str], *, seed: int, grids: list[str]
) -> dict[str, dict]:
    """One erasure scored on each of ``grids`` (grid name -> record)."""
    method = get_method(method_name)
    config = build_config(method.config_cls, None, overrides)
    spec = ConceptSpec.from_lists(
        [concept]
    )  # what `erasekit erase ear --concept X` gets; the rest from the source
    artifact = run_method(method, backend, spec, config, seed=seed)
    from erasekit.evaluation.shapesworld import evaluate_shapesworld

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{method_name}-{concept}"
        artifact.save(path)
        results = {
            grid: evaluate_shapesworld(backend, [path], concept, grid=grid, progress=False) for grid in grids
        }
    return {
        grid: _record(method_name, concept, overrides, config, artifact, r) for grid, r in results.items()
    }


def _record(method_name, concept, overrides, config, artifact, result) -> dict:
    cost = artifact.manifest["cost"]
    training = artifact.manifest.get("training", {})
    return {
        "method": method_name,
        "concept": concept,
        "overrides": overrides,
        "config": config_to_dict(config),
        "erase_seconds": cost["seconds"],
        "erase_peak_memory_bytes": cost["peak_memory_bytes"],
        "artifact_bytes": cost["artifact_bytes"],
        "training": {
            k: training.get(k)
            for k in (
                "trained_parameters",
                "pairs",
                "pair_examples",
                "anchors",
                "optimizer_steps",
                "tlm_skipped_windows",
                "tlm_reference_loss",
                "iteration_loss",
            )
        },
        "concepts": artifact.manifest["concepts"],
        "metrics": {k: result.get(k) for k in METRICS},
        "counts": result.get("counts"),
        "intervals": result.get("intervals"),
        "base": {k: result["base"].get(k) for k in METRICS},
        "base_counts": result["base"].get("counts"),
        "ratios": result.get("ratios"),
        "cra_by_domain": result.get("cra_by_domain"),
        "bars_met": _bars(result),
        "n": result.get("n"),
        "settings": result.get("settings"),
    }


def _line(r: dict) -> str:
    m, q = r["metrics"], r["ratios"] or {}
    return (
        f"UA {m['ua']:.3f} synUA {m['synonym_ua']:.3f} IRA {m['ira']:.3f} ({q.get('ira') or 0:.2f}×) "
        f"CRA {m['cra']:.3f} ({q.get('cra') or 0:.2f}×)  erase {r['erase_seconds']:.0f} s, "
        f"peak {r['erase_peak_memory_bytes'] / 2**20:.0f} MiB  bars {r['bars_met']}"
    )


def cmd_gate(args, backend) -> int:
    from erasekit.evaluation.shapesworld import GRIDS, build_grid
    from erasekit.world.judge import load_judge

    judge = load_judge()
    out: dict = {"benchmark": "ar_gate", "created": now_iso(), "model": args.model, "grids": {}}
    for grid in ("default", "heldout"):
        rows = []
        for concept in ("star", "red", "striped"):
            rows += build_grid(concept, seeds_per_prompt=2, **GRIDS[grid])
        start = time.perf_counter()
        images = torch.cat(
            [
                backend.sample([r["prompt"] for r in rows[i : i + 64]], [r["seed"] for r in rows[i : i + 64]])
                for i in range(0, len(rows), 64)
            ]
        )
        seconds = time.perf_counter() - start
        accuracy = judge.accuracy(images, [r["labels"] for r in rows])
        out["grids"][grid] = {
            "images": len(rows),
            "accuracy": accuracy,
            "generate_seconds": round(seconds, 2),
        }
        print(f"{grid}: {len(rows)} images in {seconds:.1f} s, judge accuracy {accuracy}", flush=True)
    out["gate_met"] = all(v >= 0.95 for g in out["grids"].values() for v in g["accuracy"].values())
    out["settings"] = {"guidance": backend.default_guidance, "temperature": backend.default_temperature}
    out.update(machine=_machine(), versions=environment_versions(), command=" ".join(sys.argv))
    _write(args.out_dir / "ar_gate.json", out)
    return 0


def cmd_protocol(args, backend) -> int:
    grids = [g.strip() for g in args.grid.split(",") if g.strip()]
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        print(f"[{time.strftime('%H:%M:%S')}] {args.method} erases {concept}", flush=True)
        records = erase_and_score_grids(
            backend, args.method, concept, args.override, seed=args.seed, grids=grids
        )
        for grid, record in records.items():
            record.update(
                benchmark="ar_protocol",
                created=now_iso(),
                grid=grid,
                machine=_machine(),
                versions=environment_versions(),
                command=" ".join(sys.argv),
            )
            print(f"  {grid}: " + _line(record), flush=True)
            _write(args.out_dir / f"ar_{args.method}_{grid}_{concept}.json", record)
    return 0


def cmd_ablation(args, backend) -> int:
    if args.variants == "all":
        names = list(ABLATIONS)
    elif args.variants == "tlm":
        names = list(TLM_SWEEP)
    else:
        names = [v.strip() for v in args.variants.split(",")]
    suffix = "" if args.grid == "default" else f"_{args.grid}"
    path = args.out_dir / f"ar_ablation_{args.concept}{suffix}.json"
    record = (
        json.loads(path.read_text())
        if path.is_file()
        else {"benchmark": "ar_ablation", "concept": args.concept, "variants": {}}
    )
    for name in names:
        method_name, overrides = ABLATIONS[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        result = erase_and_score(
            backend, method_name, args.concept, overrides + args.override, seed=args.seed, grid=args.grid
        )
        result["machine"] = _machine()
        record["variants"][name] = result
        record.update(created=now_iso(), grid=args.grid, versions=environment_versions())
        print("  " + _line(result), flush=True)
        _write(path, record)
    return 0


def cmd_table(args) -> int:
    """Markdown tables of the saved results (what benchmarks/README.md shows)."""

    def counted(r: dict, key: str) -> str:
        """``k/n [low, high]`` (95 % Wilson) when the record has counts (older records do not)."""
        counts, intervals = r.get("counts") or {}, r.get("intervals") or {}
        if key not in counts or not intervals.get(key):
            return "–"
        (k, n), (low, high) = counts[key], intervals[key]
        return f"{k}/{n} [{low:.2f}, {high:.2f}]"

    def row(name: str, r: dict) -> str:
        m, b, q = r["metrics"], r["base"], r["ratios"] or {}
        ok = "".join("✓" if v else "✗" for v in r["bars_met"].values())
        return (
            f"| {name} | {m['ua']:.2f} ({b['ua']:.2f}) | {m['synonym_ua']:.2f} ({b['synonym_ua']:.2f}) | "
            f"{m['ira']:.2f} ({b['ira']:.2f}, {q.get('ira') or 0:.2f}×) | {m['cra']:.2f} ({b['cra']:.2f}, {q.get('cra') or 0:.2f}×) | "
            f"{counted(r, 'ua')} | {counted(r, 'ira')} | "
            f"{r['erase_seconds']:.0f} s | {r['erase_peak_memory_bytes'] / 2**20:.0f} MiB | {r['training']['optimizer_steps']} | {ok} |"
        )

    head = "| {} | UA (base) | synonym UA (base) | IRA (base, ratio) | CRA (base, ratio) | UA count [95 % CI] | IRA count [95 % CI] | erase | peak mem | steps | bars UA/syn/IRA/CRA |\n|---|---|---|---|---|---|---|---|---|---|---|"
    files = sorted(args.out_dir.glob(f"ar_{args.method}_{args.grid}_*.json"))
    print(head.format("concept"))
    for f in files:
        r = json.loads(f.read_text())
        print(row(r["concept"], r))
    suffix = "" if args.grid == "default" else f"_{args.grid}"
    path = args.out_dir / f"ar_ablation_{args.concept}{suffix}.json"
    if path.is_file():
        print()
        print(head.format(f"variant ({args.concept})"))
        for name, r in json.loads(path.read_text())["variants"].items():
            print(row(f"{name} `{' '.join(r['overrides']) or 'defaults'}`", r))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("gate", "protocol", "ablation", "table"))
    parser.add_argument("--model", default="shapes-ar")
    parser.add_argument("--method", default="ear", help="protocol: ear or esd_ar")
    parser.add_argument("--concepts", default="star,red,striped")
    parser.add_argument("--concept", default="star", help="ablation concept")
    parser.add_argument(
        "--variants",
        default="all",
        help="ablation variants: all, tlm (the τ sweep) or comma-separated names of ABLATIONS",
    )
    parser.add_argument(
        "-o", "--override", action="append", default=[], help="key=value for the method config"
    )
    parser.add_argument(
        "--grid",
        default="default",
        help="default, heldout or full; protocol takes a comma list (one erasure scored on each)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "table":
        return cmd_table(args)
    from erasekit.zoo import load_model

    backend = load_model(args.model)
    return {"gate": cmd_gate, "protocol": cmd_protocol, "ablation": cmd_ablation}[args.command](args, backend)


if __name__ == "__main__":
    raise SystemExit(main())
