"""``erasekit demo``: erase a concept from the shipped ShapesWorld model with UCE, show and measure it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors


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
            help="Map the concept onto this concept of its domain (default: erase).",
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
    from erasekit.errors import ErasekitError
    from erasekit.world.concepts import domain_of
    from erasekit.world.demo import concept_spec, run_demo

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
