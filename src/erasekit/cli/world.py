"""``erasekit world …``: train the ShapesWorld model and judge, and show what the world contains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from erasekit.cli.app import emit, user_errors, world_app


@world_app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@user_errors
def train(ctx: typer.Context) -> None:
    """Train the ShapesWorld reference model from scratch (options: `erasekit world train --help`)."""
    from erasekit.world.train import main

    code = main(list(ctx.args))
    raise typer.Exit(code=code or 0)


@world_app.command("judge-train")
@user_errors
def judge_train(
    out: Annotated[
        Path | None, typer.Option("--out", help="Judge folder (default: the package's shipped judge).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds init, render pool and augmentations.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimiser steps.", show_default=False)] = None,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (results depend on it).")] = 1,
    pool: Annotated[
        int | None, typer.Option("--pool", help="Rendered training images.", show_default=False)
    ] = None,
    eval_images: Annotated[
        int | None,
        typer.Option("--eval-images", help="Fresh renders for the recorded accuracy.", show_default=False),
    ] = None,
) -> None:
    """Train the ShapesWorld judge on renders (a few CPU minutes) and write judge.safetensors + judge.json."""
    from erasekit.errors import ErasekitError
    from erasekit.world.judge import JUDGE_DIR, main

    argv = ["--out", str(out or JUDGE_DIR), "--seed", str(seed), "--threads", str(threads)]
    for flag, value in (("--steps", steps), ("--pool", pool), ("--eval-images", eval_images)):
        if value is not None:
            if value < 1:
                raise ErasekitError(f"{flag} must be at least 1; got {value}")
            argv += [flag, str(value)]
    raise typer.Exit(code=main(argv))


def world_info() -> dict[str, Any]:
    """The concept inventory, synonyms, caption templates, and what is known of the model and judge."""
    from erasekit.world import DOMAINS, SYNONYMS, TEMPLATES
    from erasekit.world.judge import JUDGE_DIR, WEIGHTS_NAME
    from erasekit.world.model import SHIPPED_MODEL_DIR, read_manifest

    model_manifest = read_manifest()
    judge_info: dict[str, Any] = {"path": str(JUDGE_DIR), "present": (JUDGE_DIR / WEIGHTS_NAME).is_file()}
    if judge_info["present"]:
        from erasekit.world.judge import load_judge

        judge = load_judge()
        judge_info.update(
            version=judge.version,
            accuracy_fresh_renders=judge.info.get("accuracy_fresh_renders"),
            parameters=judge.info.get("parameters"),
            command=judge.info.get("command"),
        )
    return {
        "domains": {d: list(c) for d, c in DOMAINS.items()},
        "synonyms": {c: list(s) for c, s in SYNONYMS.items()},
        "templates": list(TEMPLATES),
        "model": {
            "path": str(SHIPPED_MODEL_DIR),
            "present": (SHIPPED_MODEL_DIR / "model_index.json").is_file(),
            **{k: model_manifest.get(k) for k in ("command", "wall_seconds", "machine", "steps", "seed")},
        },
        "judge": judge_info,
    }


@world_app.command("info")
@user_errors
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
):
    """Show the concept inventory, synonyms and the shipped model's and judge's provenance."""
    emit(world_info(), as_json, _human)


def _human(data: dict[str, Any]) -> str:
    lines = [f"{d}: {', '.join(c)}" for d, c in data["domains"].items()]
    lines.append("synonyms: " + "; ".join(f"{c} = {', '.join(s)}" for c, s in data["synonyms"].items()))
    model = data["model"]
    lines.append(f"model: {model['path']} ({'present' if model['present'] else 'missing'})")
    if model.get("command"):
        lines.append(
            f"  trained by: {model['command']} ({model.get('wall_seconds')} s on {model.get('machine')})"
        )
    judge = data["judge"]
    lines.append(f"judge: {judge['path']} ({'present' if judge['present'] else 'missing'})")
    if judge.get("accuracy_fresh_renders"):
        acc = judge["accuracy_fresh_renders"]
        lines.append("  accuracy on fresh renders: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    return "\n".join(lines)
