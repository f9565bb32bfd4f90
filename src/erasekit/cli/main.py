"""Entry point: import every command module (each registers on ``app``), then run."""

from __future__ import annotations

import importlib
import importlib.util
import os

from erasekit.cli.app import app

# One line per command module. A module that is not there yet is skipped only if it does not exist;
# an import error inside an existing module is a bug and propagates.
COMMAND_MODULES = ("erase", "generate", "info", "evaluate", "attack", "report", "world", "demo", "codeworld")


def _register() -> None:
    for name in COMMAND_MODULES:
        spec = importlib.util.find_spec(f"erasekit.cli.{name}")
        if spec is not None:
            importlib.import_module(f"erasekit.cli.{name}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _register()
    app()


if __name__ == "__main__":
    main()
