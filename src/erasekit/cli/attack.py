"""``erasekit attack``: run one robustness attack against an erased ShapesWorld model and report its ASR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors
from erasekit.errors import ErasekitError


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ErasekitError(
            f"--seeds {text!r} is not a comma-separated list of integers, e.g. 0,1,2,3."
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise ErasekitError(f"--seeds {text!r} needs at least one non-negative integer, e.g. 0,1,2,3.")
    return seeds


@app.command()
@user_errors
def attack(
    name: Annotated[
        str, typer.Argument(help="Attack: synonym, prompt_opt or concept_vector.", show_default=False)
    ],
    model: Annotated[str, typer.Option("--model", help="`shapes`, `tiny` or a diffusers folder.")],
    concept: Annotated[
        str, typer.Option("--concept", help="The erased ShapesWorld concept (star, red, striped …).")
    ],
    artifact: Annotated[
        list[Path] | None,
        typer.Option(
            "--artifact", help="Erasure artifact to apply (repeatable; stacked in order).", show_default=False
        ),
    ] = None,
    budget: Annotated[str, typer.Option("--budget", help="Budget preset: small or full.")] = "small",
    override: Annotated[
        list[str] | None,
        typer.Option("-o", "--override", help="Budget field key=value (repeatable), e.g. -o steps=50."),
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated generation seeds.")] = "0,1,2,3",
    judge_path: Annotated[
        Path | None, typer.Option("--judge", help="Judge folder (default: the shipped ShapesWorld judge).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the result to this JSON file.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Apply artifacts made from other base weights.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Attack an erased model: the share of attempts in which the judge still finds CONCEPT (ASR)."""
    from erasekit.applying import apply
    from erasekit.artifacts import Artifact
    from erasekit.evaluation.attacks import get_attack, run_attack
    from erasekit.evaluation.attacks.common import concept_domain

    attack_obj = get_attack(name)
    concept_domain(concept)
    seed_list = _parse_seeds(seeds)
    budget_spec: str | dict = budget
    if override:
        budget_spec = {"preset": budget}
        for item in override:
            if "=" not in item:
                raise ErasekitError(f"Override {item!r} is not key=value; write e.g. -o steps=50.")
            key, value = item.split("=", 1)
            budget_spec[key.strip()] = value.strip()
    from erasekit.evaluation.attacks.common import resolve_budget

    resolved = resolve_budget(attack_obj.budget_cls, attack_obj.budgets, budget_spec)  # fail before loading
    artifacts = [(path, Artifact.load(path)) for path in artifact or []]

    from erasekit.world.judge import load_judge
    from erasekit.zoo import load_model as load_backend

    judge = load_judge(judge_path)
    backend = load_backend(model, device=device)
    for path, loaded in artifacts:
        try:
            apply(loaded, backend, force=force)
        except ErasekitError as error:
            raise ErasekitError(f"{path}: {error}") from None
    record = run_attack(name, backend, concept, budget=resolved, seeds=seed_list, judge=judge)
    record["artifacts"] = [{"path": str(path), "method": loaded.method} for path, loaded in artifacts]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(out)
    emit(record, as_json, _human)


def _human(record: dict) -> str:
    line = (
        f"{record['attack']} on {record['concept']}: ASR {record['asr']:.3f} "
        f"({record['successes']}/{record['attempts']} attempts, {record['seconds']:.1f} s)"
    )
    if "asr_before" in record:
        line += f"; before the attack {record['asr_before']:.3f}"
    return line
