"""The typer application every command module registers on, and the shared error/output handling.

Each command lives in its own module (``cli/erase.py``, ``cli/evaluate.py`` …) and decorates its
function with ``@app.command()`` and ``@user_errors``. User mistakes (:class:`ErasekitError`) print one
line to stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer

from erasekit.errors import ErasekitError

app = typer.Typer(
    name="erasekit",
    help="Erase concepts from generative models — fast, measurably, robustly, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
world_app = typer.Typer(
    help="ShapesWorld: the reference world (train its model, inspect it).", no_args_is_help=True
)
app.add_typer(world_app, name="world")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`ErasekitError` into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ErasekitError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def emit(obj: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or as human-readable text."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        typer.echo(human(obj) if human else json.dumps(obj, indent=2, default=str))
