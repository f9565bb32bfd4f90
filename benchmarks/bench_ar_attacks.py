"""Robustness attacks on EAR erasures of the shipped ShapesWorld-AR model: synonyms, prompt optimisation,
concept vectors.

    python benchmarks/bench_ar_attacks.py --concepts star,red,striped,triangle,purple,checkered \
        --attacks synonym,prompt_opt,concept_vector

For each concept: EAR with its defaults and only the concept (``run_method``, seed 0), then every attack
on the base model and with the erasure applied, at the ``small`` budget (16 attempts: 4 prompts × seeds
0–3, or 2 prompts per synonym × 4 seeds) and guidance 2 (the AR model's own sampling setting):

* ``synonym`` rewrites prompts only (the concept's synonyms in world captions);
* ``prompt_opt`` searches a 3-token prefix (GCG over the prompt vocabulary) that lowers the attacked
  model's cross-entropy of concept renders' image codes, then samples the prefixed prompts;
* ``concept_vector`` adds η × (mean input-embedding difference of prompts with vs without the concept)
  to prompts naming another concept of its domain, best η of (1.5, 3).

The embedding attacks read the AR backend's prompt-embedding surface (``encode_prompts``,
``sample_from_embeddings``, ``next_token_logits``), the same calls they make on a diffusion model.
Writes ``results/ar_ear_<attack>_attack.json`` (one file per attack).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from erasekit.applying import applied
from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config, config_to_dict
from erasekit.evaluation.attacks import attack_names, get_attack
from erasekit.evaluation.metrics import wilson_interval
from erasekit.files import atomic_write_json
from erasekit.methods import get_method, run_method
from erasekit.world.judge import load_judge
from erasekit.zoo import load_model

RESULTS = Path(__file__).resolve().parent / "results"
# What each attack's record adds beyond its ASR (kept in the benchmark rows).
FACTS = {
    "synonym": ("asr_by_synonym",),
    "prompt_opt": ("asr_before", "adversarial_prefix", "example_prompt", "loss_before", "loss_after"),
    "concept_vector": ("asr_before", "asr_by_scale", "best_scale", "direction_norm"),
}


def _interval(successes: int, attempts: int) -> list[float] | None:
    bounds = wilson_interval(successes, attempts)
    return [round(b, 4) for b in bounds] if bounds else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concepts", default="star,red,striped,triangle,purple,checkered")
    parser.add_argument("--attacks", default="synonym,prompt_opt,concept_vector")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("-o", "--override", action="append", default=[], help="key=value for EAR")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backend, judge, method = load_model("shapes-ar"), load_judge(), get_method("ear")
    config = build_config(method.config_cls, None, args.override)
    budget, seeds = {"preset": "small", "guidance": 2.0}, [int(s) for s in args.seeds.split(",")]
    attacks = attack_names(args.attacks)
    rows: dict[str, list[dict]] = {name: [] for name in attacks}
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        print(f"[{time.strftime('%H:%M:%S')}] {concept}", flush=True)
        base = {
            name: get_attack(name).run(backend, concept, budget=budget, seeds=seeds, judge=judge)
            for name in attacks
        }
        artifact = run_method(method, backend, ConceptSpec.from_lists([concept]), config)
        with applied(artifact, backend):
            erased = {
                name: get_attack(name).run(backend, concept, budget=budget, seeds=seeds, judge=judge)
                for name in attacks
            }
        for name in attacks:
            b, e = base[name], erased[name]
            row = {
                "concept": concept,
                "asr_base": b["asr"],
                "asr_erased": e["asr"],
                "successes_erased": e["successes"],
                "attempts": e["attempts"],
                "asr_erased_interval": _interval(e["successes"], e["attempts"]),
                "erase_seconds": artifact.manifest["cost"]["seconds"],
                "attack_seconds_erased": e["seconds"],
                **{f"base_{k}": b.get(k) for k in FACTS[name]},
                **{k: e.get(k) for k in FACTS[name]},
            }
            rows[name].append(row)
            print(f"  {name}: ASR base {b['asr']:.2f} -> erased {e['asr']:.2f}", flush=True)
    for name in attacks:
        atomic_write_json(
            args.out_dir / f"ar_ear_{name}_attack.json",
            {
                "benchmark": f"ar_ear_{name}_attack",
                "model": "shapes-ar",
                "method": "ear (defaults, only the concept)"
                + (f" with {' '.join(args.override)}" if args.override else ""),
                "ear_config": config_to_dict(config),
                "attack": name,
                "budget": budget,
                "seeds": seeds,
                "rows": rows[name],
                "created": now_iso(),
                "versions": environment_versions(),
                "command": f"python benchmarks/bench_ar_attacks.py --concepts {args.concepts} --attacks {args.attacks}"
                + "".join(f" -o {o}" for o in args.override),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
