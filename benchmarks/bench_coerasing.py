"""Text-only ESD vs Co-Erasing on ShapesWorld: the protocol's UA/IRA/CRA and the image-prompt attack's ASR.

    nice -n 5 python benchmarks/bench_coerasing.py --concepts star,red,striped

Per concept: the image-prompt ASR of the base model; ESD (``preset=shapesworld``) erased and scored
with :func:`erasekit.evaluation.shapesworld.evaluate_shapesworld` (attacks: image_prompt); then
Co-Erasing (``preset=shapesworld``) with that very ESD artifact as its stage 1 (``text_artifact``), so
the two rows differ only by Co-Erasing's image stage, scored the same way. Writes
``benchmarks/results/coerasing_shapesworld.json`` (one record per concept and method, the exact
configs, timings, versions). Timings are results, not assertions.
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

RESULTS = Path(__file__).resolve().parent / "results" / "coerasing_shapesworld.json"
KEYS = ("ua", "synonym_ua", "ira", "cra", "fid")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _split(items: str) -> list[str]:
    return [kv.strip() for kv in items.split(",") if kv.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concepts", default="star,red,striped")
    parser.add_argument("--model", default="shapes")
    parser.add_argument(
        "-o", "--override", action="append", default=[], help="method:key=value (esd or coerasing)"
    )
    parser.add_argument(
        "--coerasing",
        action="append",
        default=None,
        help="one Co-Erasing row per use: comma-separated key=value overrides over preset=shapesworld (default: one row, no overrides)",
    )
    parser.add_argument(
        "--esd-control",
        action="append",
        default=[],
        help="extra text-only ESD rows (comma-separated overrides over preset=shapesworld), e.g. iterations=300 for ESD with Co-Erasing's total step count",
    )
    parser.add_argument(
        "--attack-budget", default="small", help="image_prompt budget preset (small: 8 images x 4 seeds)"
    )
    parser.add_argument("--seeds-per-prompt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from erasekit.evaluation.attacks import run_attack
    from erasekit.evaluation.shapesworld import evaluate_shapesworld
    from erasekit.world.judge import load_judge
    from erasekit.zoo import load_model

    overrides: dict[str, list[str]] = {"esd": ["preset=shapesworld"], "coerasing": ["preset=shapesworld"]}
    for item in args.override:
        method, _, kv = item.partition(":")
        overrides.setdefault(method, []).append(kv)
    backend = load_model(args.model)
    judge = load_judge()
    records = []
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        spec = ConceptSpec.from_lists([concept])
        base_attack = run_attack("image_prompt", backend, concept, budget=args.attack_budget, judge=judge)
        _log(
            f"{concept}: base image-prompt ASR {base_attack['asr']:.3f} (text-only floor {base_attack['asr_text_only']:.3f})"
        )
        with tempfile.TemporaryDirectory() as tmp:
            esd_path = Path(tmp) / f"esd-{concept}"
            rows = [("esd", [], "")]
            rows += [
                ("coerasing", [f"text_artifact={esd_path}", *_split(c)], c) for c in args.coerasing or [""]
            ]
            rows += [("esd", _split(c), c) for c in args.esd_control]
            for index, (method_name, extra, label) in enumerate(rows):
                method = get_method(method_name)
                config = build_config(method.config_cls, None, [*overrides.get(method_name, []), *extra])
                _log(f"{method_name} ({label or 'preset'}) erases {concept} ...")
                artifact = run_method(method, backend, spec, config, seed=args.seed)
                path = artifact.save(
                    esd_path if index == 0 else Path(tmp) / f"{method_name}-{concept}-{index}"
                )
                result = evaluate_shapesworld(
                    backend,
                    [path],
                    concept,
                    seeds_per_prompt=args.seeds_per_prompt,
                    progress=False,
                    attacks=["image_prompt"],
                    attack_budget=args.attack_budget,
                )
                attack = result["attacks"]["image_prompt"]
                cost = artifact.manifest["cost"]
                training = artifact.manifest.get("training", {})
                record = {
                    "concept": concept,
                    "method": method_name,
                    "row": label or "preset",
                    "config": config_to_dict(config),
                    "erase_seconds": cost["seconds"],
                    "metrics": {k: result.get(k) for k in KEYS},
                    "base": {k: result["base"].get(k) for k in KEYS},
                    "image_prompt_asr": attack["asr"],
                    "image_prompt_successes": attack["successes"],
                    "image_prompt_attempts": attack["attempts"],
                    "image_prompt_text_only_asr": attack["asr_text_only"],
                    "base_image_prompt_asr": base_attack["asr"],
                    "loss_first_last": [training.get("loss", [None])[0], training.get("loss", [None])[-1]],
                    "attack_budget": attack["budget"],
                }
                records.append(record)
                m = record["metrics"]
                _log(
                    f"  {method_name} {concept}: UA {m['ua']} IRA {m['ira']} CRA {m['cra']} "
                    f"image-prompt ASR {attack['asr']:.3f} ({attack['successes']}/{attack['attempts']}), "
                    f"erase {cost['seconds']:.0f}s"
                )
                output = {
                    "benchmark": "coerasing_shapesworld",
                    "created": now_iso(),
                    "records": records,
                    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                    "versions": environment_versions(),
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp_out = args.out.with_suffix(".json.tmp")
                tmp_out.write_text(json.dumps(output, indent=2, default=str) + "\n")
                os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
