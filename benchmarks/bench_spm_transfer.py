"""SPM transfer: a membrane trained on the shipped ShapesWorld model, applied unchanged to a derivative.

    nice -n 10 python benchmarks/bench_spm_transfer.py --concept star

1. Erase ``--concept`` with SPM on the shipped model (``--model``), default config plus ``-o`` overrides.
2. Build a *derivative*: a copy of the model whose UNet is fine-tuned for ``--finetune-steps`` on renders
   in a new visual style the world does not have (a dark frame around every image, captioned
   "..., framed") with the ordinary denoising loss. Its weights — and fingerprint — differ from the model
   the SPM was trained on.
3. Apply the same artifact to the derivative with ``apply(..., force=True)`` (the fingerprint check
   refuses it otherwise; the refusal is checked and recorded) and score the ShapesWorld protocol's grid
   (UA, synonym UA, IRA, CRA) for: shipped base, shipped + SPM, derivative base, derivative + SPM, plus
   UA on "framed" target prompts on the derivative.

Writes ``benchmarks/results/spm_transfer_<concept>.json``.
"""

from __future__ import annotations

import argparse
import copy
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
from erasekit.backends.sd import SDBackend
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config, config_to_dict
from erasekit.errors import ErasekitError
from erasekit.evaluation.generate import generate_rows
from erasekit.evaluation.shapesworld import build_grid, default_sampling, score_run
from erasekit.methods import get_method, run_method
from erasekit.world import caption, render_labels, sample_labels
from erasekit.zoo import load_model as load_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import concept_spec  # noqa: E402  (the same concept spec as the methods benchmark)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NEW_STYLE = "framed"


def framed(images: torch.Tensor, width: int = 3) -> torch.Tensor:
    """The derivative's new style: a dark frame ``width`` pixels wide around each image."""
    out = images.clone()
    out[..., :width, :] = 0.1
    out[..., -width:, :] = 0.1
    out[..., :, :width] = 0.1
    out[..., :, -width:] = 0.1
    return out


def finetune_derivative(backend: SDBackend, steps: int, batch: int, lr: float, seed: int) -> SDBackend:
    """A copy of ``backend``'s model with its UNet fine-tuned on framed renders (the derivative)."""
    pipe = copy.deepcopy(backend.pipe)
    derivative = SDBackend(pipe, name=f"{backend.name}+{NEW_STYLE}-finetune")
    unet = derivative.unet
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        labels = sample_labels(batch, generator, p_no_shape=0.1)
        images = framed(render_labels(labels, generator=generator))
        prompts = [caption(lab, generator, 0.13) + f", {NEW_STYLE}" for lab in labels]
        with torch.no_grad():
            x0 = derivative.encode_images(images)
            cond = derivative.encode_prompts(prompts)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, derivative.num_train_timesteps, (batch,), generator=generator)
        prediction = derivative.predict_noise(derivative.add_noise(x0, noise, t), t, cond)
        loss = torch.nn.functional.mse_loss(prediction, derivative.training_target(x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    unet.requires_grad_(False)
    unet.eval()
    derivative.finetune_losses = losses  # type: ignore[attr-defined]
    return derivative


def score(backend, artifact, grid, concept, settings, judge, *, force: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if artifact is not None:
            apply(artifact, backend, force=force)
        try:
            rows = generate_rows(
                backend,
                grid,
                tmp,
                steps=settings["steps"],
                guidance=settings["guidance"],
                batch_size=16,
                progress=False,
            )
            metrics = score_run(judge, rows, Path(tmp), concept, seed=0)
        finally:
            if artifact is not None:
                revert(backend)
    return {k: metrics.get(k) for k in ("ua", "synonym_ua", "ira", "cra", "fid")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="star")
    parser.add_argument("-o", "--override", action="append", default=[], help="SPM key=value (repeatable)")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--finetune-batch", type=int, default=32)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--seeds-per-prompt", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ERASEKIT_THREADS", "1")))
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from erasekit.world.judge import load_judge

    backend = load_backend(args.model)
    method = get_method("spm")
    config = build_config(method.config_cls, None, args.override)
    spec: ConceptSpec = concept_spec("spm", args.concept, None, {})
    start = time.perf_counter()
    artifact = run_method(method, backend, spec, config, seed=0)
    erase_seconds = time.perf_counter() - start

    start = time.perf_counter()
    derivative = finetune_derivative(
        backend, args.finetune_steps, args.finetune_batch, args.finetune_lr, seed=1
    )
    finetune_seconds = time.perf_counter() - start
    try:
        apply(artifact, derivative)
        revert(derivative)
        refused = False
    except ErasekitError:
        refused = True

    judge = load_judge()
    steps, guidance = default_sampling(backend)
    settings = {"steps": steps, "guidance": guidance}
    grid = build_grid(args.concept, seeds_per_prompt=args.seeds_per_prompt)
    framed_grid = [
        dict(row, prompt=f"{row['prompt']}, {NEW_STYLE}", id=f"{row['id']}-framed")
        for row in grid
        if row["group"] == "target"
    ]
    runs = {}
    for name, model, art, force in (
        ("shipped_base", backend, None, False),
        ("shipped_spm", backend, artifact, False),
        ("derivative_base", derivative, None, False),
        ("derivative_spm", derivative, artifact, True),
    ):
        runs[name] = score(model, art, grid, args.concept, settings, judge, force=force)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {runs[name]}", flush=True)
    for name, art in (("derivative_base_framed_prompts", None), ("derivative_spm_framed_prompts", artifact)):
        runs[name] = {
            "ua": score(derivative, art, framed_grid, args.concept, settings, judge, force=True)["ua"]
        }
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {runs[name]}", flush=True)

    record = {
        "benchmark": "spm_transfer",
        "created": now_iso(),
        "concept": args.concept,
        "model": args.model,
        "model_fingerprint": backend.fingerprint(),
        "derivative": {
            "fingerprint": derivative.fingerprint(),
            "recipe": f"UNet fine-tuned on '{NEW_STYLE}' renders (dark 3-px frame), captions + ', {NEW_STYLE}'",
            "steps": args.finetune_steps,
            "batch": args.finetune_batch,
            "lr": args.finetune_lr,
            "loss_first": derivative.finetune_losses[0],
            "loss_last_20": sum(derivative.finetune_losses[-20:]) / len(derivative.finetune_losses[-20:]),
            "seconds": round(finetune_seconds, 2),
        },
        "fingerprint_check": {
            "refused_without_force": refused,
            "applied_with": "apply(artifact, derivative, force=True)",
        },
        "spm_config": config_to_dict(config),
        "concepts": spec.to_dict(),
        "erase_seconds": round(erase_seconds, 2),
        "sampling": settings,
        "seeds_per_prompt": args.seeds_per_prompt,
        "results": runs,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads},
        "versions": environment_versions(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"spm_transfer_{args.concept}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
