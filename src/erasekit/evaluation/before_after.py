"""The before/after grid: a picture of what an erasure did, drawn from a protocol run's own images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from erasekit.errors import ErasekitError

GRID_NAME = "before_after.png"
# Columns of the before/after grid: this many target prompts, then this many retain prompts.
GRID_TARGET_COLUMNS = 6
GRID_RETAIN_COLUMNS = 6


def before_after_grid(run_dir: str | os.PathLike, path: str | os.PathLike, *, scale: int = 3) -> Path:
    """A PNG with the base model's images (top row) over the erased model's (bottom row).

    Columns: the first prompts of the ``target`` group (they name the erased concept), then of the
    ``retain`` group; same prompt and seed in each column (the protocol pairs them).
    """
    from PIL import Image, ImageDraw

    from erasekit.evaluation.generate import load_images, read_manifest

    run = Path(run_dir)
    erased = {r["id"]: r for r in read_manifest(run)}
    base = {r["id"]: r for r in read_manifest(run / "base")}
    ids = [rid for rid in base if rid in erased]
    columns = [rid for rid in ids if base[rid].get("group") == "target"][:GRID_TARGET_COLUMNS]
    columns += [rid for rid in ids if base[rid].get("group") == "retain"][:GRID_RETAIN_COLUMNS]
    if not columns:
        raise ErasekitError(f"{run} has no paired base/erased images to draw")
    top = load_images([base[c] for c in columns], run / "base")
    bottom = load_images([erased[c] for c in columns], run)
    images = torch.cat([top, bottom])
    side = images.shape[-1] * scale
    pad, label_width, header = 4, 64, 14
    width = label_width + len(columns) * (side + pad)
    height = header + 2 * (side + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, rid in enumerate(columns):
        row = base[rid]
        labels = row.get("labels") or {}
        # the concept this column is about: the erased one (target) or a kept one of its domain (retain)
        name = labels.get(_domain_of_run(run), row["group"])
        color = (192, 57, 43) if row["group"] == "target" else (39, 120, 60)
        draw.text((label_width + i * (side + pad), 1), str(name), fill=color)
    for row, label in enumerate(("base", "erased")):
        draw.text((4, header + row * (side + pad) + side // 2 - 5), label, fill=(0, 0, 0))
        for i in range(len(columns)):
            array = (images[row * len(columns) + i].permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(array).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (label_width + i * (side + pad), header + row * (side + pad)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _domain_of_run(run: Path) -> str:
    results = run / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("domain", "shape")
    return "shape"
