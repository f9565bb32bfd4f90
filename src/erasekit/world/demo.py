"""``erasekit demo``: erase one concept from the shipped ShapesWorld model with UCE and measure it.

The whole loop on the embedded default, in about a minute on a laptop CPU: load the model, run UCE
(closed form), save the artifact, run the ShapesWorld protocol (erased and base model on the same
seeded prompt grid), and draw a before/after grid from the protocol's own images.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from erasekit.errors import ErasekitError
from erasekit.world.concepts import DOMAINS, domain_of

GRID_NAME = "before_after.png"
# Columns of the before/after grid: this many target prompts, then this many retain prompts.
GRID_TARGET_COLUMNS = 6
GRID_RETAIN_COLUMNS = 6


def concept_spec(concept: str, anchor: str | None) -> Any:
    """The UCE request: erase ``concept`` (onto ``anchor`` if given), preserve the rest of its domain."""
    from erasekit.concepts import ConceptSpec

    domain = domain_of(concept)
    if anchor is not None and anchor not in DOMAINS[domain]:
        raise ErasekitError(
            f"anchor {anchor!r} is not a ShapesWorld {domain}; use one of {', '.join(DOMAINS[domain])}"
        )
    if anchor == concept:
        raise ErasekitError(f"the anchor must differ from the erased concept {concept!r}")
    preserve = [c for c in DOMAINS[domain] if c not in (concept, anchor)]
    return ConceptSpec.from_lists([concept], [anchor] if anchor else [], preserve)


def before_after_grid(run_dir: str | os.PathLike, path: str | os.PathLike, *, scale: int = 3) -> Path:
    """A PNG with the base model's images (top row) over the erased model's (bottom row).

    Columns: the first prompts of the ``target`` group (they name the erased concept), then of the
    ``retain`` group; same prompt and seed in each column (the protocol pairs them).
    """
    from PIL import Image, ImageDraw

    from erasekit.evaluation.generate import load_images, read_manifest

    run = Path(run_dir)
    erased = {r["id"]: r for r in read_manifest(run)}
    base = {r["id"]: r for r in read_manifest(run / "base")}
    ids = [rid for rid in base if rid in erased]
    columns = [rid for rid in ids if base[rid].get("group") == "target"][:GRID_TARGET_COLUMNS]
    columns += [rid for rid in ids if base[rid].get("group") == "retain"][:GRID_RETAIN_COLUMNS]
    if not columns:
        raise ErasekitError(f"{run} has no paired base/erased images to draw")
    top = load_images([base[c] for c in columns], run / "base")
    bottom = load_images([erased[c] for c in columns], run)
    images = torch.cat([top, bottom])
    side = images.shape[-1] * scale
    pad, label_width, header = 4, 64, 14
    width = label_width + len(columns) * (side + pad)
    height = header + 2 * (side + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, rid in enumerate(columns):
        row = base[rid]
        labels = row.get("labels") or {}
        # the concept this column is about: the erased one (target) or a kept one of its domain (retain)
        name = labels.get(_domain_of_run(run), row["group"])
        color = (192, 57, 43) if row["group"] == "target" else (39, 120, 60)
        draw.text((label_width + i * (side + pad), 1), str(name), fill=color)
    for row, label in enumerate(("base", "erased")):
        draw.text((4, header + row * (side + pad) + side // 2 - 5), label, fill=(0, 0, 0))
        for i in range(len(columns)):
            array = (images[row * len(columns) + i].permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(array).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (label_width + i * (side + pad), header + row * (side + pad)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _domain_of_run(run: Path) -> str:
    results = run / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("domain", "shape")
    return "shape"


def run_demo(
    concept: str = "star",
    out_dir: str | os.PathLike = "erasekit-demo",
    *,
    model: Any = "shapes",
    anchor: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seeds_per_prompt: int = 2,
    judge: Any = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Erase ``concept`` with UCE, evaluate it on ShapesWorld, draw the before/after grid.

    Args:
        concept: A ShapesWorld concept (shape, colour or style).
        out_dir: Writes ``uce-<concept>.safetensors/.json`` (the artifact), ``run/`` (the protocol's
            run folder), ``before_after.png`` and ``demo.json``.
        model: ``"shapes"`` (the shipped model), another model name, or a backend.
        anchor: Map the concept onto this one of its domain (default: erase towards the empty prompt).
        steps, guidance, seeds_per_prompt, judge, cache_dir, progress: As for
            :func:`erasekit.evaluation.shapesworld.evaluate_shapesworld`.

    Returns:
        ``{"concept", "method", "artifact", "grid", "erase_seconds", "seconds", "evaluation": {...}}``.
    """
    from erasekit.evaluation.shapesworld import _load_backend, evaluate_shapesworld
    from erasekit.methods import get_method, run_method

    start = time.perf_counter()
    spec = concept_spec(concept, anchor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = _load_backend(model)
    method = get_method("uce")
    artifact = run_method(method, backend, spec, method.config_cls(), seed=0)
    artifact_path = out / f"uce-{concept}"
    artifact.save(artifact_path)
    evaluation = evaluate_shapesworld(
        backend,
        [artifact_path],
        concept,
        out_dir=out / "run",
        steps=steps,
        guidance=guidance,
        seeds_per_prompt=seeds_per_prompt,
        judge=judge,
        cache_dir=cache_dir,
        progress=progress,
    )
    grid = before_after_grid(out / "run", out / GRID_NAME)
    result = {
        "concept": concept,
        "method": "uce",
        "anchor": anchor,
        "artifact": str(artifact_path) + ".safetensors",
        "grid": str(grid),
        "erase_seconds": artifact.manifest["cost"]["seconds"],
        "seconds": round(time.perf_counter() - start, 3),
        "evaluation": evaluation,
    }
    from erasekit.files import atomic_write_bytes

    atomic_write_bytes(out / "demo.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
