"""Few-shot unlearning: erasekit's training step against the reference's, on the same data.

The reference (fmp453/few-shot-erasing, ``train.py``; re-derived from the paper's eq. 2 and the
repository's documented defaults, not copied): each step takes a batch of the concept's images with
their caption, draws t and ε, encodes the captions with the trained text encoder, runs the frozen
UNet, and takes an Adam step (β = 0.9, 0.98, eps 1e-6, weight decay 1e-8) on the *negative* denoising
MSE. Nothing else happens in a step.

erasekit's step adds, by default, the drift penalty (``penalty_prompts`` neutral/preserve prompts
encoded with gradients) and a probe of the stopping rule every ``check_every`` steps (``probes``
UNet passes without gradients). This script times both on the same latents and captions and prints
the per-step ratio (the ascent term is the same function in both).

    python benchmarks/parity/fewshot.py --model shapes --steps 24 --out benchmarks/results/parity_fewshot_shapes.json
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
import torch.nn.functional as F

from erasekit.artifacts import environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.methods import get_method
from erasekit.methods.training import TrainedParameters
from erasekit.sources import complete_spec, source_of
from erasekit.zoo import load_model


def reference_steps(backend, params, data, steps: int, config, generator) -> tuple[float, float]:
    """Seconds per step and the first step's denoising MSE of the reference's plain ascent loop."""
    optimizer = torch.optim.Adam(
        list(params.values()), lr=config.lr, betas=(0.9, config.adam_beta2), eps=1e-6, weight_decay=1e-8
    )
    latents, captions = data["latents"][:, 0], [c[0] for c in data["captions"]]
    first = None
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(latents.shape[0], (config.batch_size,), generator=generator)
        x0 = latents[idx]
        t = torch.randint(backend.num_train_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        cond = backend.encode_prompts([captions[int(i)] for i in idx])
        pred = backend.predict_noise(backend.add_noise(x0, noise, t), t, cond)
        mse = F.mse_loss(pred.float(), backend.training_target(x0, noise, t).float())
        optimizer.zero_grad(set_to_none=True)
        (-mse).backward()
        optimizer.step()
        first = mse.item() if first is None else first
    return (time.perf_counter() - start) / steps, float(first)


def erasekit_steps(method, backend, concepts, config, params, data, steps: int, generator, rng) -> float:
    """Seconds per step of erasekit's loop (setup — reference losses of the stopping rule — excluded)."""

    def run(n: int) -> float:
        cfg = build_config(type(config), None, None, **{**vars(config), "epochs": n, "stop_rule": "none"})
        start = time.perf_counter()
        # no verification: step cost only, with the first attempt's loss (plain by default, as the reference's)
        method._train(backend, concepts, cfg, params, [data], generator, rng, None, cfg.concept_mask[0])
        return time.perf_counter() - start

    # The stopping rule's reference losses are set-up work; timing 1 and steps + 1 steps cancels them.
    one = run(1)
    many = run(steps + 1)
    return (many - one) / steps


def main(argv: list[str] | None = None) -> int:
    import random

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="star")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("-o", "--override", action="append", default=[], help="fewshot config key=value")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backend = load_model(args.model)
    method = get_method("fewshot")
    config = build_config(method.config_cls, None, args.override)
    concepts = complete_spec(ConceptSpec.from_lists([args.concept]), source_of(backend))
    generator = torch.Generator().manual_seed(0)
    data = method._concept_latents(backend, concepts, args.concept, config, generator)
    if not data.get("captions"):
        data["captions"] = [[concepts.prompts(args.concept)[0]]] * data["latents"].shape[0]
    params = backend.parameters_for(config.target)

    with TrainedParameters(params):
        ref_step, ref_first = reference_steps(
            backend, params, data, args.steps, config, torch.Generator().manual_seed(1)
        )
    with TrainedParameters(params):
        ours = erasekit_steps(
            method,
            backend,
            concepts,
            config,
            params,
            data,
            args.steps,
            torch.Generator().manual_seed(1),
            random.Random(1),
        )
    record = {
        "benchmark": "parity_fewshot_step",
        "model": args.model,
        "concept": args.concept,
        "steps_timed": args.steps,
        "config": {
            k: getattr(config, k)
            for k in ("batch_size", "penalty_prompts", "check_every", "probes", "preserve_weight")
        },
        "reference_seconds_per_step": round(ref_step, 4),
        "erasekit_seconds_per_step": round(ours, 4),
        "ratio": round(ours / ref_step, 3),
        "reference_first_step_mse": ref_first,
        "created": now_iso(),
        "torch_threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "load_average": os.getloadavg()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": environment_versions(),
    }
    print(
        json.dumps(
            {
                k: record[k]
                for k in ("config", "reference_seconds_per_step", "erasekit_seconds_per_step", "ratio")
            }
        )
    )
    if args.out:
        from erasekit.files import atomic_write_json

        atomic_write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
