"""Erase cost: wall time and peak memory of UCE, ESD (at a given iteration count) and sampling.

    python benchmarks/bench_erase.py --model tiny
    nice -n 10 python benchmarks/bench_erase.py --model sd14-shaped --threads 2 --resolution 256

``--model`` is ``tiny`` (the test pipeline), ``sd14-shaped`` (random weights at the public SD-1.4
sizes, nothing downloaded), ``shapes`` (the shipped ShapesWorld model) or a diffusers folder. Writes
one JSON file (versions, machine, per-task seconds, peak memory, artifact size, the exact settings) to
``benchmarks/results/erase_<model>.json`` unless ``--out`` says otherwise. Timings are results, not
assertions: the smoke test only checks that the script runs and writes what it promises.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.methods import get_method, run_method
from erasekit.methods.base import PeakMemory

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:
        return 0


def load_model(model: str):
    """An erasekit backend for ``model`` (tiny, sd14-shaped, shapes or a diffusers folder)."""
    from erasekit.backends.sd import SDBackend
    from erasekit.zoo import load_model as load_backend

    if model == "sd14-shaped":
        from erasekit.backends.tiny import build_sd14_shaped_pipeline

        return SDBackend(build_sd14_shaped_pipeline(), name="sd14-shaped")
    return load_backend(model)


def git_commit() -> str | None:
    """The checked-out commit (``+dirty`` when tracked files differ), or None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # the machine may be shared: load average at the end of the run says how contended it was
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def bench_erase(backend, method_name: str, concepts: ConceptSpec, overrides: list[str], seed: int) -> dict:
    method = get_method(method_name)
    config = build_config(method.config_cls, None, overrides)
    start = time.perf_counter()
    artifact = run_method(method, backend, concepts, config, seed=seed)
    wall = time.perf_counter() - start  # includes the runner's two fingerprints
    cost = artifact.manifest["cost"]
    result = {
        "task": "erase",
        "method": method_name,
        "overrides": overrides,
        "config": artifact.manifest["config"],
        "concepts": concepts.to_dict(),
        "seconds": cost["seconds"],
        "wall_seconds": round(wall, 4),
        "peak_memory_bytes": cost["peak_memory_bytes"],
        "artifact_bytes": cost["artifact_bytes"],
        "edited_tensors": len(artifact.tensors),
    }
    training = artifact.manifest.get("training")
    if training:
        result["iterations"] = len(training["loss"])
        result["seconds_per_iteration"] = round(cost["seconds"] / max(1, len(training["loss"])), 4)
        result["trained_parameters"] = training["trained_parameters"]
    return result


def bench_sample(backend, prompt: str, steps: int, guidance: float, resolution: int | None) -> dict:
    with PeakMemory() as memory:
        start = time.perf_counter()
        images = backend.sample([prompt], [0], steps=steps, guidance=guidance, size=resolution)
        seconds = time.perf_counter() - start
    return {
        "task": "sample",
        "prompt": prompt,
        "steps": steps,
        "guidance": guidance,
        "images": int(images.shape[0]),
        "resolution": int(images.shape[-1]),
        "seconds": round(seconds, 4),
        "seconds_per_step": round(seconds / steps, 4),
        "peak_memory_bytes": int(memory.peak_bytes),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | sd14-shaped | shapes | a diffusers folder")
    parser.add_argument("--concept", default="star", help="concept to erase")
    parser.add_argument("--anchor", default=None, help="UCE anchor (ESD takes none)")
    parser.add_argument("--methods", default="uce,esd", help="comma-separated methods to time")
    parser.add_argument("--esd-iterations", type=int, default=2, help="ESD optimiser steps")
    parser.add_argument("--esd-variant", default="x", choices=["x", "u"], help="ESD-x or ESD-u")
    parser.add_argument(
        "--esd-ddim-steps", type=int, default=50, help="ESD's DDIM schedule (x_t needs up to this many steps)"
    )
    parser.add_argument(
        "--resolution", type=int, default=0, help="image side for ESD and sampling (0 = model's)"
    )
    parser.add_argument(
        "--sample-steps", type=int, default=25, help="DDIM steps of the timed sample (0 = skip)"
    )
    parser.add_argument("--guidance", type=float, default=7.5, help="CFG scale of the timed sample")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/erase_<model>.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rss_start = _rss_bytes()
    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    backend = load_model(args.model)
    load_seconds = time.perf_counter() - start
    n_params = {name: sum(p.numel() for p in c.parameters()) for name, c in backend.components.items()}
    runs = []
    for method_name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method_name == "esd":
            overrides = [
                f"iterations={args.esd_iterations}",
                f"variant={args.esd_variant}",
                f"ddim_steps={args.esd_ddim_steps}",
                f"resolution={args.resolution}",
            ]
            concepts = ConceptSpec.from_lists([args.concept])
        else:
            overrides = []
            concepts = ConceptSpec.from_lists([args.concept], [args.anchor] if args.anchor else [])
        runs.append(bench_erase(backend, method_name, concepts, overrides, args.seed))
        print(json.dumps({k: runs[-1][k] for k in ("method", "seconds", "peak_memory_bytes")}), flush=True)
    if args.sample_steps:
        runs.append(
            bench_sample(
                backend,
                f"a photo of a {args.concept}",
                args.sample_steps,
                args.guidance,
                args.resolution or None,
            )
        )
        print(json.dumps({k: runs[-1][k] for k in ("task", "seconds", "peak_memory_bytes")}), flush=True)
    result = {
        "benchmark": "erase",
        "model": args.model,
        "created": now_iso(),
        "command": "python benchmarks/bench_erase.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": environment_versions(),
        "git_commit": git_commit(),
        "machine": dict(machine(), load_average_at_start=load_at_start),
        "model_parameters": n_params,
        "load": {"seconds": round(load_seconds, 3), "rss_after_load_bytes": _rss_bytes() - rss_start},
        "runs": runs,
    }
    out = Path(args.out) if args.out else RESULTS_DIR / f"erase_{args.model.replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)  # atomic: a crash leaves the old result or the new one
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
