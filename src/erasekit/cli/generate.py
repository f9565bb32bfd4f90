"""``erasekit generate``: seeded images from a model with artifacts applied, plus a manifest.

Image ``i`` uses seed ``S + i`` and depends only on its prompt and seed (the backend seeds each image's
noise on its own), so any image can be regenerated alone from its manifest row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors
from erasekit.errors import ErasekitError

MANIFEST_NAME = "manifest.jsonl"


@app.command()
@user_errors
def generate(
    model: Annotated[
        str,
        typer.Option(
            "--model", help="`tiny`, `shapes`, a diffusers folder, a .safetensors file or a cached hub id."
        ),
    ],
    prompt: Annotated[str, typer.Option("--prompt", help="Text prompt for every image.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for PNGs and manifest.jsonl.")],
    artifact: Annotated[
        list[Path] | None,
        typer.Option(
            "--artifact",
            help="Artifact to apply (repeatable; stacked in the given order).",
            show_default=False,
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed+i.")] = 0,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="DDIM denoising steps [default: the model's recommendation, else 25].",
            show_default=False,
        ),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance",
            help="Classifier-free guidance scale [default: the model's recommendation].",
            show_default=False,
        ),
    ] = None,
    negative_prompt: Annotated[
        str, typer.Option("--negative-prompt", help="Prompt for the unconditional branch.")
    ] = "",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per denoising batch.")] = 4,
    force: Annotated[
        bool, typer.Option("--force", help="Apply artifacts even if made from other base weights.")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Allow loading a pickled .ckpt/.bin model (runs its code!)."),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Generate N seeded images of PROMPT, optionally with erasure artifacts applied."""
    for name, value in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ErasekitError(f"{name} must be at least 1, not {value}.")
    if seed < 0:
        raise ErasekitError(f"--seed must be non-negative, not {seed}.")
    if out.exists() and not out.is_dir():
        raise ErasekitError(f"--out {out} is a file; pass a folder for the images.")

    from erasekit.applying import apply
    from erasekit.artifacts import Artifact

    # Load every artifact before the model: a missing or corrupt file fails in milliseconds.
    artifacts = [(path, Artifact.load(path)) for path in artifact or []]

    import time

    from PIL import Image
    from tqdm import tqdm

    from erasekit.zoo import load_model as load_backend

    backend = load_backend(model, allow_pickle=allow_pickle, device=device)
    if steps is None or guidance is None:
        from erasekit.evaluation.shapesworld import default_sampling

        recommended_steps, recommended_guidance = default_sampling(backend)
        steps = recommended_steps if steps is None else steps
        guidance = recommended_guidance if guidance is None else guidance
    for path, loaded in artifacts:
        try:
            apply(loaded, backend, force=force)
        except ErasekitError as error:
            raise ErasekitError(f"{path}: {error}") from None

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ErasekitError(f"Cannot create {out} ({error.strerror}); pick a writable folder.") from None
    artifact_rows = [{"path": str(path), "method": loaded.method} for path, loaded in artifacts]
    seeds = list(range(seed, seed + n))
    rows = []
    start = time.perf_counter()
    with tqdm(total=n, desc="generate", unit="img", disable=not sys.stderr.isatty()) as bar:
        for first in range(0, n, batch_size):
            batch = seeds[first : first + batch_size]
            images = backend.sample(
                [prompt] * len(batch), batch, steps=steps, guidance=guidance, negative_prompt=negative_prompt
            )
            for offset, (image_seed, image) in enumerate(zip(batch, images)):
                index = first + offset
                file_name = f"{index:05d}-seed{image_seed}.png"
                pixels = (image.permute(1, 2, 0).mul(255).round().to("cpu").numpy()).astype("uint8")
                tmp = out / f".{file_name}.tmp"
                Image.fromarray(pixels).save(tmp, format="PNG")
                tmp.replace(out / file_name)
                rows.append(
                    {
                        "file": file_name,
                        "prompt": prompt,
                        "negative_prompt": negative_prompt,
                        "seed": image_seed,
                        "steps": steps,
                        "guidance": guidance,
                        "model": model,
                        "artifacts": artifact_rows,
                        "width": int(image.shape[-1]),
                        "height": int(image.shape[-2]),
                    }
                )
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    _write_manifest(out / MANIFEST_NAME, rows)
    summary = {
        "out": str(out),
        "manifest": str(out / MANIFEST_NAME),
        "images": [row["file"] for row in rows],
        "model": model,
        "artifacts": artifact_rows,
        "steps": steps,
        "guidance": guidance,
        "seconds": round(seconds, 4),
    }
    emit(summary, as_json, _human)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    # Atomic: a crash leaves the previous manifest or the complete new one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    tmp.replace(path)


def _human(s: dict) -> str:
    applied = ", ".join(f"{a['method']} ({a['path']})" for a in s["artifacts"]) or "none"
    return (
        f"wrote {len(s['images'])} images to {s['out']} in {s['seconds']:.2f} s (artifacts: {applied})\n"
        f"manifest: {s['manifest']}"
    )
