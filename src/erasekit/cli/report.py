"""``erasekit report``: one self-contained HTML page from evaluation run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors


@app.command()
@user_errors
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run folders written by `erasekit evaluate --out`.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write (images and plots embedded).")],
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "erasekit evaluation report",
    per_group: Annotated[int, typer.Option("--per-group", help="Images per prompt group in each grid.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Write a single HTML report: before/after grids, metric table, trade-off plot, costs, attacks."""
    from erasekit.errors import ErasekitError
    from erasekit.evaluation.report import write_report

    if per_group < 1:
        raise ErasekitError(f"--per-group must be at least 1, not {per_group}.")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ErasekitError(
            "erasekit report draws its plots with matplotlib; install the report extra: pip install 'erasekit[report]'."
        )
    path = write_report(run_dirs, out, title=title, per_group=per_group)
    summary = {"out": str(path), "runs": [str(d) for d in run_dirs], "bytes": path.stat().st_size}
    emit(
        summary, as_json, lambda s: f"wrote {s['out']} ({s['bytes'] / 1024:.0f} KiB, {len(s['runs'])} run(s))"
    )
