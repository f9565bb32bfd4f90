"""The synonym-paraphrase attack on EAR erasures of the shipped ShapesWorld-AR model.

    python benchmarks/bench_ar_attacks.py --concepts star,red,striped,triangle,purple,checkered

For each concept: the attack's success rate on the base model, then EAR with its defaults and only the
concept (``run_method``, seed 0), then the attack with the erasure applied. The attack rewrites
prompts only (the concept's synonyms in world captions), so it samples through the AR backend's own
loop; the embedding attacks (prompt optimisation, concept vectors) need a text encoder feeding a
denoiser and do not apply to this model. Guidance 2, as the AR protocol samples. Writes
``results/ar_ear_synonym_attack.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from erasekit.applying import applied
from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.evaluation.attacks import get_attack
from erasekit.files import atomic_write_json
from erasekit.methods import get_method, run_method
from erasekit.world.judge import load_judge
from erasekit.zoo import load_model

OUT = Path(__file__).resolve().parent / "results" / "ar_ear_synonym_attack.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concepts", default="star,red,striped,triangle,purple,checkered")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backend, judge, method = load_model("shapes-ar"), load_judge(), get_method("ear")
    budget, seeds = {"preset": "small", "guidance": 2.0}, [int(s) for s in args.seeds.split(",")]
    rows = []
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        base = get_attack("synonym").run(backend, concept, budget=budget, seeds=seeds, judge=judge)
        artifact = run_method(
            method, backend, ConceptSpec.from_lists([concept]), build_config(method.config_cls)
        )
        with applied(artifact, backend):
            erased = get_attack("synonym").run(backend, concept, budget=budget, seeds=seeds, judge=judge)
        rows.append(
            {
                "concept": concept,
                "asr_base": base["asr"],
                "asr_erased": erased["asr"],
                "attempts": erased["attempts"],
                "asr_by_synonym": erased["asr_by_synonym"],
                "erase_seconds": artifact.manifest["cost"]["seconds"],
            }
        )
        print(rows[-1], flush=True)
    record = {
        "benchmark": "ar_ear_synonym_attack",
        "model": "shapes-ar",
        "method": "ear (defaults, only the concept)",
        "budget": budget,
        "seeds": seeds,
        "rows": rows,
        "created": now_iso(),
        "versions": environment_versions(),
        "command": "python benchmarks/bench_ar_attacks.py --concepts " + args.concepts,
    }
    atomic_write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
