"""``erasekit demo``: erase one concept from the shipped ShapesWorld model with UCE, show and measure it.

The whole loop on the embedded default, in about a minute on a laptop CPU: load the model, run UCE
(closed form) with only the concept (and an optional anchor) as a user would, save the artifact, run
the ShapesWorld protocol (erased and base model on the same seeded prompt grid), and draw a
before/after grid from the protocol's own images.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from erasekit.cli.app import app, emit, user_errors
from erasekit.errors import ErasekitError


@app.command()
@user_errors
def demo(
    concept: Annotated[
        str, typer.Option("--concept", help="ShapesWorld concept to erase (a shape, colour or style).")
    ] = "star",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the artifact, the run, before_after.png and demo.json.")
    ] = Path("erasekit-demo"),
    model: Annotated[
        str, typer.Option("--model", help="`shapes` (the shipped model) or a diffusers folder.")
    ] = "shapes",
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            help="Map the concept onto this concept of its domain (default: the next concept of its domain).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Sampling steps (default: the model's).", show_default=False)
    ] = None,
    seeds_per_prompt: Annotated[int, typer.Option("--seeds-per-prompt", help="Images per grid prompt.")] = 2,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch CPU threads (default: torch's choice; 1 is fastest on a busy CPU).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Erase CONCEPT from the shipped ShapesWorld model with UCE; write a before/after grid; print UA/IRA/CRA/FID."""
    from erasekit.world.concepts import domain_of

    concept_spec(concept, anchor)  # unknown names fail before the model loads
    domain_of(concept)
    if (steps is not None and steps < 1) or seeds_per_prompt < 1:
        raise ErasekitError("--steps and --seeds-per-prompt must be at least 1")
    if threads is not None:
        if threads < 1:
            raise ErasekitError(f"--threads must be at least 1; got {threads}")
        import torch

        torch.set_num_threads(threads)
    result = run_demo(
        concept, out, model=model, anchor=anchor, steps=steps, seeds_per_prompt=seeds_per_prompt
    )
    emit(result, as_json, _human)


def _human(result: dict) -> str:
    from erasekit.cli.evaluate import human_table

    return "\n".join(
        [
            human_table(result["evaluation"]),
            f"UCE erased {result['concept']} in {result['erase_seconds']:.2f} s; demo took {result['seconds']:.1f} s",
            f"before/after grid: {result['grid']}",
            f"artifact: {result['artifact']}",
        ]
    )


def concept_spec(concept: str, anchor: str | None) -> Any:
    """The UCE request a user writes: erase ``concept`` (onto ``anchor``, a concept of its domain).

    The rest (other concepts to preserve, caption-style templates, retain prompts) comes from the
    model's data source when the method runs.
    """
    from erasekit.concepts import ConceptSpec
    from erasekit.world.concepts import DOMAINS, domain_of

    domain = domain_of(concept)
    if anchor is not None and anchor not in DOMAINS[domain]:
        raise ErasekitError(
            f"anchor {anchor!r} is not a ShapesWorld {domain}; use one of {', '.join(DOMAINS[domain])}"
        )
    if anchor == concept:
        raise ErasekitError(f"the anchor must differ from the erased concept {concept!r}")
    return ConceptSpec.from_lists([concept], [anchor] if anchor else [])


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
        anchor: Map the concept onto this one of its domain (default: the model's data source's
            default anchor; ShapesWorld: the next concept of the domain).
        steps, guidance, seeds_per_prompt, judge, cache_dir, progress: As for
            :func:`erasekit.evaluation.shapesworld.evaluate_shapesworld`.

    Returns:
        ``{"concept", "method", "artifact", "grid", "erase_seconds", "seconds", "evaluation": {...}}``.
    """
    from erasekit.evaluation.before_after import GRID_NAME, before_after_grid
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
        "anchor": artifact.manifest["concepts"]["targets"][0]["anchor"],
        "artifact": str(artifact_path) + ".safetensors",
        "grid": str(grid),
        "erase_seconds": artifact.manifest["cost"]["seconds"],
        "seconds": round(time.perf_counter() - start, 3),
        "evaluation": evaluation,
    }
    from erasekit.files import atomic_write_json

    atomic_write_json(out / "demo.json", result)
    return result
