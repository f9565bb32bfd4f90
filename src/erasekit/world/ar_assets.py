"""Where the shipped ShapesWorld-AR model lives (trained by :mod:`erasekit.world.ar_train`)."""

from __future__ import annotations

from pathlib import Path

SHIPPED_AR_DIR: Path = Path(__file__).resolve().parent / "assets" / "shapes-ar"
