"""``erasekit codeworld …``: the shipped code LM's world (forget sets for it, its training recipe)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors

codeworld_app = typer.Typer(
    help="CodeWorld: the synthetic code corpus with planted secrets behind the shipped code-lm.",
    no_args_is_help=True,
)
app.add_typer(codeworld_app, name="codeworld")

SPLITS = ("forget", "other", "unseen")


@codeworld_app.command("forget-set")
@user_errors
def forget_set(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write (one {id, kind, text} per file).")],
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="forget: 2 secrets per kind that code-lm memorised (16x); other: every other planted secret; unseen: secrets it never saw.",
        ),
    ] = "forget",
    per_kind: Annotated[
        int, typer.Option("--per-kind", help="Forget secrets per kind (with --split forget).")
    ] = 2,
    spans: Annotated[
        bool,
        typer.Option("--spans", help="Also write the true character spans (else detect-secrets finds them)."),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Corpus seed (the shipped code-lm: 0).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Write a forget set for the shipped code-lm, drawn from its corpus at run time (no secret is stored in the package)."""
    from erasekit.codeworld.source import CodeWorldSource
    from erasekit.errors import ErasekitError

    if split not in SPLITS:
        raise ErasekitError(f"Unknown --split {split!r}; choose from: {', '.join(SPLITS)}.")
    if per_kind < 1:
        raise ErasekitError(f"--per-kind must be at least 1; got {per_kind}.")
    source = CodeWorldSource(seed=seed)
    forget, other = source.forget_split(per_kind)
    samples = {"forget": forget, "other": other, "unseen": source.unseen_samples()}[split]
    lines = []
    for s in samples:
        record = {"id": s.sample_id, "kind": s.kinds[0] if s.kinds else "", "text": s.text}
        if spans:
            record["spans"] = [list(span) for span in s.spans]
        lines.append(json.dumps(record))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    emit(
        {"out": str(out), "split": split, "samples": len(lines), "seed": seed},
        as_json,
        lambda s: f"wrote {s['samples']} {s['split']} samples to {s['out']}",
    )


@codeworld_app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@user_errors
def train(ctx: typer.Context) -> None:
    """Train the CodeWorld code LM from scratch (options: `erasekit codeworld train --help`)."""
    from erasekit.codeworld.train import main

    main(list(ctx.args))
