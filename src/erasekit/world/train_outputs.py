"""What a ShapesWorld training run writes: the pipeline folder (float16 weights that load as float32),
its manifest (recipe, machine, time, stats), sample grids and VAE reconstruction pairs.

Split from :mod:`erasekit.world.train`, which holds the recipe and the training loops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from erasekit.world.captions import prompt_for
from erasekit.world.concepts import COLORS, SHAPES, STYLES
from erasekit.world.model import MANIFEST_NAME, make_pipeline

if TYPE_CHECKING:
    from erasekit.world.train import TrainConfig


def export_pipeline(components: dict[str, Any], folder: Path, manifest: dict[str, Any]) -> None:
    """Save a StableDiffusionPipeline folder with float16 weights and the manifest."""
    import copy

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    half = {
        k: (copy.deepcopy(v).half() if isinstance(v, torch.nn.Module) else v) for k, v in components.items()
    }
    make_pipeline(half).save_pretrained(tmp, safe_serialization=True)
    declare_float32(tmp)
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def declare_float32(folder: Path) -> None:
    """Make a plain ``from_pretrained(folder)`` load every component in float32.

    Weights are stored in float16 to fit the size budget. diffusers models load as float32 by default,
    but transformers keeps the dtype written in the text encoder's config, and a float16 text encoder
    feeding a float32 UNet fails on CPU; so the config says float32 and the weights are upcast on load.
    """
    file = Path(folder) / "text_encoder" / "config.json"
    config = json.loads(file.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def sample_grid(pipe, path: Path, *, steps: int, guidance: float, seed: int = 0) -> torch.Tensor:
    """Generate one image per (shape, colour) with styles cycling, save an 8×8 grid PNG; returns images."""
    from PIL import Image

    prompts = [
        prompt_for(s, c, STYLES[(i + j) % len(STYLES)])
        for i, s in enumerate(SHAPES)
        for j, c in enumerate(COLORS)
    ]
    gen = torch.Generator().manual_seed(seed)
    imgs = pipe(
        prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt"
    ).images
    grid = imgs.view(8, 8, 3, imgs.shape[-2], imgs.shape[-1]).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(8 * imgs.shape[-2], 8 * imgs.shape[-1], 3)
    Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy()).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST
    ).save(path)
    return imgs


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__}; {torch.get_num_threads()} threads"
    )


def save_pair(a: torch.Tensor, b: torch.Tensor, path: Path) -> None:
    from PIL import Image

    n = min(len(a), 16)
    both = torch.cat([a[:n], b[:n]]).clamp(0, 1)
    h, w = both.shape[-2:]
    grid = both.view(2, n, 3, h, w).permute(0, 3, 1, 4, 2).reshape(2 * h, n * w, 3)
    Image.fromarray((grid * 255).round().byte().numpy()).resize((n * w * 3, 2 * h * 3), Image.NEAREST).save(
        path
    )


def run_manifest(
    cfg: TrainConfig,
    arch: dict,
    t_start: float,
    step: int,
    loss: float | None,
    stats: dict[str, float],
    scale: float,
) -> dict[str, Any]:
    return {
        "name": "erasekit ShapesWorld reference model",
        "command": cfg.command or "python -m erasekit.world.train " + " ".join(sys.argv[1:]),
        "seed": cfg.seed,
        "wall_seconds": round(time.time() - t_start, 1),
        "machine": machine_description(),
        "steps": step,
        "images_seen": step * cfg.batch,
        "final_loss_ema": None if loss is None else round(loss, 5),
        "dataset_images": cfg.jitters_per_combo * 384 + cfg.no_shape_per_style * len(STYLES),
        "vae_scaling_factor": scale,
        "stats": stats,
        "recipe": dataclasses.asdict(cfg),
        "vae_stage": vae_stage(cfg),
        "architecture": arch,
        "sampling": {
            "scheduler": "DDIM trailing",
            "num_inference_steps": cfg.sample_steps,
            "guidance_scale": cfg.guidance,
            "height": 32,
            "width": 32,
        },
        "storage": "float16 safetensors; load with torch_dtype=torch.float32 on CPU",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def vae_stage(cfg: TrainConfig) -> dict[str, Any]:
    """Where the VAE came from: this run, or the run named by ``vae_from`` (its command and log)."""
    if not cfg.vae_from:
        return {"trained_in": "this run"}
    info: dict[str, Any] = {"trained_in": str(cfg.vae_from)}
    log = Path(cfg.vae_from) / "train.log"
    if log.is_file():
        lines = log.read_text().splitlines()
        for line in lines:
            if "] config {" in line:
                info["config"] = json.loads(line.split("] config ", 1)[1])
                break
        vae_lines = [line for line in lines if "] vae step" in line]
        if vae_lines:
            info["first_log"], info["last_log"] = vae_lines[0], vae_lines[-1]
    return info
