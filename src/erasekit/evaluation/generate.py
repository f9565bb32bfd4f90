"""Seeded, resumable generation with a manifest: one PNG and one manifest line per prompt row.

A *row* is ``{"id", "prompt", "seed"}`` plus any extra JSON fields (``labels``, ``group`` …), which
are copied into the manifest. :func:`generate_rows` writes ``images/<id>.png`` atomically and then
appends the row's manifest line (flush + fsync), so a crash at any point leaves at most the last line
torn, which the next run ignores and overwrites.

Identical numbers after a resume, and across shards: every image depends only on its prompt and seed
(the backend draws one seeded noise tensor per image), and images are always generated in the same
*batch layout* — batch ``k`` holds rows ``k·B … k·B + B − 1`` of the full row list, whatever has already
been done — so even the ~1e-6 differences a different batch composition can cause never arise. A
batch with some rows missing is regenerated whole and only its missing rows are written. Scores are
always computed from the written PNGs (:func:`load_images`), never from in-memory floats, so a
resumed run and an uninterrupted one read the same bytes.

Sharding: ``shard=(i, n)`` takes batches ``i, i + n, i + 2n …`` and writes its own manifest file
(``manifest.shard-<i>-of-<n>.jsonl``; a single process writes ``manifest.jsonl``), so processes never
append to the same file. :func:`merge_manifests` then writes ``manifest.jsonl`` in row order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from erasekit.errors import ErasekitError
from erasekit.files import atomic_write_bytes

MANIFEST = "manifest.jsonl"
IMAGE_DIR = "images"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Settings every manifest line records; a resume must use the same ones.
_SETTINGS = ("steps", "guidance", "batch_size", "negative_prompt", "size", "model_fingerprint")


def shard_manifest_name(index: int, count: int) -> str:
    return MANIFEST if count == 1 else f"manifest.shard-{index}-of-{count}.jsonl"


def validate_rows(rows: Sequence[dict]) -> list[dict]:
    """Check ids (unique, file-name safe), prompts (str) and seeds (non-negative int); return copies."""
    seen: set[str] = set()
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ErasekitError(
                f"row {i}: expected an object with id, prompt and seed; got {type(row).__name__}"
            )
        rid, prompt, seed = row.get("id"), row.get("prompt"), row.get("seed")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise ErasekitError(
                f"row {i}: id {rid!r} must be a string of letters, digits, '.', '_' or '-' (max 128)"
            )
        if rid in seen:
            raise ErasekitError(f"row {i}: id {rid!r} appears twice; give every row its own id")
        seen.add(rid)
        if not isinstance(prompt, str):
            raise ErasekitError(f"row {i} ({rid}): prompt must be a string; got {prompt!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ErasekitError(f"row {i} ({rid}): seed must be a non-negative integer; got {seed!r}")
        out.append(dict(row))
    return out


# ---- manifest I/O ------------------------------------------------------------------------------------------
def read_manifest_file(path: Path, *, repair: bool = False) -> list[dict]:
    """Rows of one manifest file. A torn last line (no newline / bad JSON) is ignored, and cut off
    the file when ``repair`` (so that the next append starts on a fresh line).

    Raises:
        ErasekitError: a line other than the last is not valid JSON (the file was edited or corrupted).
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows, good_bytes = [], 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if not line.strip():
            good_bytes += len(line) + (0 if last else 1)
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or last and not data.endswith(b"\n"):
                raise ValueError("torn")
        except ValueError:
            if last:
                break
            raise ErasekitError(
                f"{path} line {i + 1} is not valid JSON; remove that line (or the file) and rerun"
            ) from None
        rows.append(row)
        good_bytes += len(line) + 1
    if repair and good_bytes < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return rows


def read_manifest(out_dir: str | os.PathLike) -> list[dict]:
    """All manifest rows in ``out_dir`` (``manifest.jsonl`` and shard manifests), first occurrence per id."""
    folder = Path(out_dir)
    files = [folder / MANIFEST] + sorted(folder.glob("manifest.shard-*-of-*.jsonl"))
    rows: dict[str, dict] = {}
    for file in files:
        for row in read_manifest_file(file):
            rows.setdefault(row["id"], row)
    return list(rows.values())


def _append_line(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def merge_manifests(out_dir: str | os.PathLike, rows: Sequence[dict] | None = None) -> Path:
    """Write ``manifest.jsonl`` with every generated row (in ``rows`` order if given, else by id),
    atomically, and delete the shard manifests it absorbed. Deterministic whatever the shard count.

    Raises:
        ErasekitError: ``rows`` is given and some of them have not been generated yet.
    """
    folder = Path(out_dir)
    done = {r["id"]: r for r in read_manifest(folder)}
    order = [r["id"] for r in rows] if rows is not None else sorted(done)
    missing = [rid for rid in order if rid not in done]
    if missing:
        raise ErasekitError(
            f"{len(missing)} rows are not generated yet (first: {missing[0]}); run the remaining shards first"
        )
    text = "".join(json.dumps(done[rid], sort_keys=True) + "\n" for rid in order)
    atomic_write_bytes(folder / MANIFEST, text.encode())
    for shard in folder.glob("manifest.shard-*-of-*.jsonl"):
        shard.unlink()
    return folder / MANIFEST


# ---- images ------------------------------------------------------------------------------------------------
def to_png_bytes(image: torch.Tensor) -> bytes:
    """One image [3, H, W] in [0, 1] as PNG bytes (rounded to 8 bits)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def load_images(rows: Iterable[dict], out_dir: str | os.PathLike) -> torch.Tensor:
    """The PNGs of manifest rows as float32 [N, 3, H, W] in [0, 1] (what every score is computed on)."""
    folder = Path(out_dir)
    images = []
    for row in rows:
        with Image.open(folder / row["file"]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255)
    if not images:
        return torch.zeros(0, 3, 1, 1)
    return torch.stack(images)


# ---- generation --------------------------------------------------------------------------------------------
def _check_resume(folder: Path, done: dict[str, dict], rows: Sequence[dict], settings: dict) -> None:
    """Refuse to resume into ``folder`` when a row it holds has another prompt, seed or setting."""
    by_id = {r["id"]: r for r in rows}
    for rid, old in done.items():
        if rid not in by_id:
            continue
        new = by_id[rid]
        if (old.get("prompt"), old.get("seed")) != (new["prompt"], new["seed"]):
            raise ErasekitError(
                f"{folder} already holds row {rid} with another prompt or seed; use a fresh output folder"
            )
        for key in _SETTINGS:
            if old.get(key) != settings[key]:
                raise ErasekitError(
                    f"{folder} holds images made with {key}={old.get(key)!r}, not {settings[key]!r}; "
                    "use a fresh output folder or the same settings"
                )


def generate_rows(
    backend: Any,
    rows: Sequence[dict],
    out_dir: str | os.PathLike,
    *,
    steps: int,
    guidance: float,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    negative_prompt: str = "",
    size: int | None = None,
) -> list[dict]:
    """Generate one PNG per row into ``out_dir/images`` with a manifest line each; resume if rerun.

    Args:
        backend: Anything with ``sample(prompts, seeds, steps=, guidance=, negative_prompt=, size=)``
            and ``fingerprint()`` (an :class:`~erasekit.backends.sd.SDBackend`, artifacts applied or not).
        rows: The full row list (the same list, in the same order, for every shard and every resume).
        out_dir: Run folder; created if missing.
        steps, guidance: Sampler settings (recorded per row).
        batch_size: Rows per batch. Part of the layout: a resume must use the same value.
        shard: ``(index, count)``: this process generates batches ``index, index + count, …``.
        progress: Show a progress bar (only on a TTY).
        negative_prompt, size: Passed to ``backend.sample``.

    Returns:
        The manifest rows of this shard's rows, in row order (each with ``file`` and ``sha256``).

    Raises:
        ErasekitError: bad rows or shard, or ``out_dir`` holds rows generated with other settings or
            another prompt/seed under the same id (use a fresh folder).
    """
    rows = validate_rows(rows)
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ErasekitError(f"shard {shard!r} is invalid; use (index, count) with 0 <= index < count")
    if batch_size < 1:
        raise ErasekitError(f"batch size must be at least 1; got {batch_size}")
    folder = Path(out_dir)
    (folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    manifest_path = folder / shard_manifest_name(index, count)
    read_manifest_file(manifest_path, repair=True)  # cut a torn last line before appending
    settings = {
        "steps": int(steps),
        "guidance": float(guidance),
        "batch_size": int(batch_size),
        "negative_prompt": negative_prompt,
        "size": size,
        "model_fingerprint": backend.fingerprint(),
    }
    done = {r["id"]: r for r in read_manifest(folder)}
    _check_resume(folder, done, rows, settings)
    batches = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
    mine = [(k, b) for k, b in enumerate(batches) if k % count == index]
    todo = [(k, b) for k, b in mine if any(rows[i]["id"] not in done for i in b)]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(b) for _, b in mine),
        initial=sum(len(b) for _, b in mine) - sum(len(b) for _, b in todo),
        desc="generate",
        unit="img",
        disable=not progress or not sys.stderr.isatty(),
    )
    for k, batch in todo:
        prompts = [rows[i]["prompt"] for i in batch]
        seeds = [rows[i]["seed"] for i in batch]
        images = backend.sample(
            prompts, seeds, steps=steps, guidance=guidance, negative_prompt=negative_prompt, size=size
        )
        for i, image in zip(batch, images):
            row = rows[i]
            if row["id"] in done:
                continue
            data = to_png_bytes(image)
            relative = f"{IMAGE_DIR}/{row['id']}.png"
            atomic_write_bytes(folder / relative, data)
            entry = {
                **row,
                **settings,
                "file": relative,
                "sha256": hashlib.sha256(data).hexdigest(),
                "batch_index": k,
            }
            _append_line(manifest_path, entry)
            done[row["id"]] = entry
            bar.update(1)
    bar.close()
    return [done[rows[i]["id"]] for _, b in mine for i in b]
