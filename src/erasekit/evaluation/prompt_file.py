"""Score an arbitrary JSONL prompt file with the ShapesWorld judge (``erasekit evaluate --prompts``).

Rows ``{"prompt", "seed", "labels"?, "id"?}``; each is generated (artifacts applied, then reverted)
through the resumable :func:`~erasekit.evaluation.generate.generate_rows`, judged from the written
PNGs, and scored as accuracy per labelled domain. The grid protocol itself is
:mod:`erasekit.evaluation.shapesworld`, whose model, artifact and judge glue this module shares.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasekit.errors import ErasekitError
from erasekit.evaluation.generate import generate_rows
from erasekit.evaluation.shapesworld import (
    _apply_all,
    _artifact_record,
    _load_artifacts,
    _load_backend,
    default_sampling,
    judge_rows,
)
from erasekit.files import atomic_write_bytes
from erasekit.world.concepts import DOMAINS, check_concept


def read_prompt_file(path: str | os.PathLike) -> list[dict]:
    """Rows ``{"prompt", "seed", "labels"?, "id"?}`` of a JSONL prompt file, validated.

    Raises:
        ErasekitError: the file is missing, or a row is malformed (the message names the line).
    """
    file = Path(path)
    if not file.is_file():
        raise ErasekitError(
            f"prompt file {file} not found; pass a JSONL file with prompt, seed and labels rows"
        )
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            raise ErasekitError(f"{where}: not valid JSON") from None
        if not isinstance(raw, dict):
            raise ErasekitError(f"{where}: expected an object with prompt, seed and labels")
        unknown = set(raw) - {"prompt", "seed", "labels", "id"}
        if unknown:
            raise ErasekitError(f"{where}: unknown keys {sorted(unknown)}; allowed: prompt, seed, labels, id")
        prompt, seed, labels = raw.get("prompt"), raw.get("seed"), raw.get("labels", {})
        if not isinstance(prompt, str):
            raise ErasekitError(f"{where}: 'prompt' must be a string")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ErasekitError(f"{where}: 'seed' must be a non-negative integer; got {seed!r}")
        if not isinstance(labels, dict):
            raise ErasekitError(f'{where}: \'labels\' must be an object like {{"shape": "star"}}')
        for domain, value in labels.items():
            if domain not in DOMAINS:
                raise ErasekitError(f"{where}: unknown label domain {domain!r}; use shape, color or style")
            if value is None and domain == "style":
                raise ErasekitError(f"{where}: style cannot be null (every image has a background)")
            if value is not None:
                try:
                    check_concept(value, domain)
                except ErasekitError as error:
                    raise ErasekitError(f"{where}: {error}") from None
        row_id = raw.get("id", f"row-{number:06d}")
        if not isinstance(row_id, str) or not row_id:
            raise ErasekitError(f"{where}: 'id' must be a non-empty string")
        rows.append({"id": row_id, "prompt": prompt, "seed": seed, "labels": labels, "line": number})
    if not rows:
        raise ErasekitError(f"prompt file {file} has no rows")
    return rows


def _domain_accuracy(judged: Sequence[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Fraction of labelled rows the judge got right, and how many rows are labelled, per domain."""
    accuracy, counts = {}, {}
    for domain in DOMAINS:
        labelled = [r for r in judged if domain in r["labels"]]
        if labelled:
            counts[domain] = len(labelled)
            right = sum(r["prediction"][domain] == r["labels"][domain] for r in labelled)
            accuracy[domain] = round(right / len(labelled), 6)
    return accuracy, counts


def _write_judged_rows(judged: Sequence[dict], path: Path) -> None:
    """Write one JSON line per judged row: its prompt, labels, prediction and which labels it got right."""
    keys = ("id", "line", "prompt", "seed", "labels", "prediction")
    lines = []
    for r in judged:
        record = {k: r[k] for k in keys}
        record["correct"] = {d: r["prediction"][d] == r["labels"][d] for d in r["labels"]}
        lines.append(json.dumps(record) + "\n")
    atomic_write_bytes(path, "".join(lines).encode())


def score_prompt_file(
    model: Any,
    artifacts: Sequence[Any],
    prompts_jsonl: str | os.PathLike,
    rows_out: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    judge: Any = None,
    force: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate and judge an arbitrary prompt file; accuracy per labelled domain.

    Args:
        model, artifacts: As for :func:`evaluate_shapesworld` (artifacts applied, then reverted).
        prompts_jsonl: Rows ``{"prompt", "seed", "labels": {"shape", "color", "style"}}``; labels optional
            (``null`` shape/colour = expect no shape).
        rows_out: Write per-row predictions (JSONL) here.
        out_dir: Keep images and manifest here (resumable); None → a temp dir.

    Returns:
        ``{"accuracy": {domain: fraction}, "n", "seconds", "counts": {domain: labelled rows}, "settings"}``
        (a domain no row labels is omitted).
    """
    from erasekit.applying import applied_artifacts, revert
    from erasekit.evaluation.generate import validate_rows

    start = time.perf_counter()
    rows = read_prompt_file(prompts_jsonl)
    validate_rows(rows)
    loaded = _load_artifacts(artifacts or ())
    backend = _load_backend(model, device)
    if applied_artifacts(backend):
        raise ErasekitError("the model already has artifacts applied; pass them as artifacts instead")
    if judge is None:
        from erasekit.world.judge import load_judge

        judge = load_judge()
    default_steps, default_guidance = default_sampling(backend)
    steps = int(steps if steps is not None else default_steps)
    guidance = float(guidance if guidance is not None else default_guidance)
    temp = tempfile.mkdtemp(prefix="erasekit-prompts-") if out_dir is None else None
    folder = Path(out_dir) if out_dir is not None else Path(temp)
    try:
        try:
            _apply_all(loaded, backend, force)
            manifest = generate_rows(
                backend,
                rows,
                folder,
                steps=steps,
                guidance=guidance,
                batch_size=batch_size,
                progress=progress,
            )
        finally:
            if loaded:
                revert(backend)
        judged, _ = judge_rows(judge, manifest, folder)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    accuracy, counts = _domain_accuracy(judged)
    if rows_out is not None:
        _write_judged_rows(judged, Path(rows_out))
    return {
        "accuracy": accuracy,
        "counts": counts,
        "n": len(judged),
        "seconds": round(time.perf_counter() - start, 3),
        "settings": {"steps": steps, "guidance": guidance, "batch_size": batch_size},
        "judge": {"version": getattr(judge, "version", type(judge).__name__)},
        "artifacts": [_artifact_record(path, a) for path, a in loaded],
    }
