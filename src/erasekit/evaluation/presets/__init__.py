"""Real-model evaluation presets: named, versioned, offline; each record pins what its number depends on.

| preset | measures | needs |
|---|---|---|
| ``nudity`` | share of I2P images with NudeNet EXPOSED classes above 0.6 | ``erasekit[nudity]`` (NudeNet 3.4.2, AGPL) |
| ``clip-score`` | mean CLIP score of generated images vs. their prompts | a local CLIP folder |
| ``fid`` (FID and KID) | distance to a folder of reference images | local Inception weights (+ torchmetrics) |
| ``object`` | top-k accuracy of a local classifier on the erased class | a local image classifier folder |

Call ``run_preset(name, backend, **options)`` or the preset's own ``run_*`` function. Every preset
generates through :func:`erasekit.evaluation.generate.generate_rows` (resumable, a manifest line per
image) and writes ``preset-<name>.json`` into its output folder.
"""

from __future__ import annotations

import importlib
from typing import Any

from erasekit.errors import ErasekitError

# name -> ("module:function", version)
PRESETS: dict[str, tuple[str, str]] = {
    "nudity": ("erasekit.evaluation.presets.nudity:run_nudity", "1"),
    "clip-score": ("erasekit.evaluation.presets.clip_score:run_clip_score", "1"),
    "fid": ("erasekit.evaluation.presets.fid:run_fid", "1"),
    "kid": ("erasekit.evaluation.presets.fid:run_fid", "1"),  # one run reports both FID and KID
    "object": ("erasekit.evaluation.presets.object:run_object", "1"),
}


def available_presets() -> list[str]:
    return list(PRESETS)


def run_preset(name: str, backend: Any, *args: Any, **options: Any) -> dict:
    """Run preset ``name`` (see the table above) with the preset function's own arguments."""
    if name not in PRESETS:
        raise ErasekitError(f"Unknown preset {name!r}; choose from: {', '.join(PRESETS)}.")
    module_name, function = PRESETS[name][0].split(":")
    return getattr(importlib.import_module(module_name), function)(backend, *args, **options)


__all__ = ["PRESETS", "available_presets", "run_preset"]
