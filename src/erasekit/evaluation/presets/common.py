"""What every real-model preset shares: pinned inputs, prompt CSVs, seeded (resumable) generation, the record.

A preset's record carries ``pins``: everything a reader needs to reproduce the number — the prompt
file's sha256 and row count, the seeds (column and a hash of the list), sampler steps and guidance,
the scorer (name, version, weights hash) and its threshold — next to the model's fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from erasekit.errors import ErasekitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seeds_sha256(seeds: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(s) for s in seeds]).encode()).hexdigest()


def read_prompt_csv(
    path: str | os.PathLike,
    *,
    seed_column: str = "evaluation_seed",
    extra_columns: Sequence[str] = (),
    limit: int | None = None,
    where: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{"prompt", "seed", <extra columns>}`` of a prompt CSV (I2P / COCO / ImageNette format).

    Args:
        path: CSV with at least ``prompt`` and ``seed_column``.
        seed_column: Column holding each row's generation seed.
        extra_columns: Other columns to keep (must exist).
        limit: Keep only the first ``limit`` rows (after filtering).
        where: Keep rows whose column contains the given text (e.g. ``{"categories": "sexual"}``).

    Returns:
        The rows and the pins describing them (path, sha256, columns, filter, limit, row count).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ErasekitError(
            f"Prompt file {file} not found; pass a CSV with prompt and {seed_column} columns."
        )
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("prompt", seed_column, *extra_columns, *(where or {})) if c not in columns]
        if missing:
            raise ErasekitError(
                f"{file.name} lacks column(s) {', '.join(missing)}; it has: {', '.join(columns)}."
            )
        rows = []
        for line, record in enumerate(reader, start=2):
            if where and not all(text in (record.get(col) or "") for col, text in where.items()):
                continue
            try:
                seed = int(float(record[seed_column]))
            except (TypeError, ValueError):
                raise ErasekitError(
                    f"{file.name} line {line}: {seed_column} {record[seed_column]!r} is not an integer."
                ) from None
            if seed < 0:
                raise ErasekitError(f"{file.name} line {line}: seed {seed} is negative.")
            rows.append({"prompt": record["prompt"], "seed": seed, **{c: record[c] for c in extra_columns}})
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ErasekitError(
            f"{file.name} has no prompt rows (after the filter {where}); check the file and filter."
        )
    pins = {
        "path": str(file),
        "sha256": file_sha256(file),
        "rows": len(rows),
        "seed_column": seed_column,
        "seeds_sha256": seeds_sha256([r["seed"] for r in rows]),
        "filter": where or {},
        "limit": limit,
    }
    return rows, pins


def generate(
    backend: Any,
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    steps: int,
    guidance: float,
    batch_size: int = 4,
) -> tuple[torch.Tensor, list[Path], Path]:
    """Generate one image per row with :func:`erasekit.evaluation.generate.generate_rows` (resumable).

    Scores are always computed from the written PNGs (``out_dir/images``), so a rerun after a crash
    resumes and gives the same numbers.

    Returns:
        Images [N, 3, H, W] in [0, 1] read back from the PNGs, their paths, and the folder.
    """
    from erasekit.evaluation.generate import generate_rows, load_images

    folder = Path(out_dir)
    gen_rows = [
        {
            "id": f"row{i:06d}",
            "prompt": r["prompt"],
            "seed": int(r["seed"]),
            **{k: v for k, v in r.items() if k not in ("prompt", "seed")},
        }
        for i, r in enumerate(rows)
    ]
    done = generate_rows(backend, gen_rows, folder, steps=steps, guidance=guidance, batch_size=batch_size)
    return load_images(done, folder), [folder / r["file"] for r in done], folder


def record(
    name: str,
    version: str,
    backend: Any,
    *,
    pins: dict[str, Any],
    metrics: dict[str, Any],
    started: float,
    out_dir: str | os.PathLike,
    **extra: Any,
) -> dict[str, Any]:
    """The preset's JSON record, also written atomically to ``out_dir/preset-<name>.json``."""
    from erasekit.artifacts import environment_versions, now_iso

    result = {
        "preset": name,
        "preset_version": version,
        "metrics": metrics,
        "pins": pins,
        "model": getattr(backend, "name", "model"),
        "model_fingerprint": backend.fingerprint(),
        "versions": environment_versions(),
        "created": now_iso(),
        "seconds": round(time.perf_counter() - started, 3),
        **extra,
    }
    result = json.loads(json.dumps(result, default=str))  # what the file holds is what the caller gets
    path = Path(out_dir) / f"preset-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return result


def read_image_folder(
    folder: str | os.PathLike, size: int | None = None, limit: int | None = None
) -> tuple[torch.Tensor, dict]:
    """Images of a folder (sorted by name) as [N, 3, H, W] in [0, 1], resized to ``size`` if given.

    Returns the images and pins: folder, count, and a sha256 over (name, bytes) of every file used.
    """
    import numpy as np
    from PIL import Image

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ErasekitError(f"Reference folder {path} not found; pass a folder of PNG/JPEG images.")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if len(files) < 2:
        raise ErasekitError(f"{path} holds {len(files)} images; FID/KID need at least 2 reference images.")
    digest = hashlib.sha256()
    images = []
    for file in files:
        data = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(data).digest())
        with Image.open(file) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            images.append(
                torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
            )
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ErasekitError(
            f"Reference images in {path} differ in size ({sorted(shapes)[:2]}…); pass a size to resize them."
        )
    return torch.stack(images), {
        "folder": str(path),
        "images": len(files),
        "sha256": digest.hexdigest(),
        "resize": size,
    }
