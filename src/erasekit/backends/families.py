"""What the SDXL, SD3 and FLUX backends share: packed conditioning, folder detection, loading.

**Packed conditioning.** These families condition the denoiser on a token stream *and* a pooled text
vector (SDXL: ``text_embeds`` of the second CLIP; SD3: CLIP-L ⊕ CLIP-G pooled; FLUX: CLIP-L pooled).
Methods must stay backend-agnostic and treat a conditioning as one tensor they can ``torch.cat``,
index, ``repeat`` and subtract, so the backend packs both into one tensor [B, L + r, D]: the context
[B, L, D] first, then the pooled vector [B, P] zero-padded to r·D and folded into r = ⌈P / D⌉ rows.
Everything a method does row-wise (batching, CFG's [uncond; cond], SPM's anchors) keeps the parts
aligned; ``predict_noise`` unpacks. Gradients flow through the packing (few-shot trains the encoders).

**Folders.** A diffusers folder's ``model_index.json`` names its pipeline class; that decides the
family (:func:`folder_family`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from erasekit.errors import ErasekitError

FAMILY_PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
TINY_NAMES = {"tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}


# ---- packed conditioning --------------------------------------------------------------------------
def pack(context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """[B, L, D] context and [B, P] pooled -> [B, L + ⌈P / D⌉, D] (pooled zero-padded, folded)."""
    batch, _length, dim = context.shape
    rows = math.ceil(pooled.shape[-1] / dim)
    padded = torch.nn.functional.pad(pooled.to(context.dtype), (0, rows * dim - pooled.shape[-1]))
    return torch.cat([context, padded.reshape(batch, rows, dim)], dim=1)


def unpack(cond: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack`: (context [B, L, D], pooled [B, P])."""
    rows = math.ceil(pooled_dim / cond.shape[-1])
    if cond.ndim != 3 or cond.shape[1] <= rows:
        raise ErasekitError(
            f"Conditioning of shape {tuple(cond.shape)} is not this model's; pass what its encode_prompts returns."
        )
    return cond[:, :-rows], cond[:, -rows:].reshape(cond.shape[0], -1)[:, :pooled_dim]


# ---- folders and loading ----------------------------------------------------------------------------
def folder_family(path: str | Path) -> str | None:
    """``"sdxl"``, ``"sd3"`` or ``"flux"`` for a diffusers folder of that pipeline class, else None."""
    index = Path(path).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except (json.JSONDecodeError, AttributeError):
        return None
    for family, pipeline in FAMILY_PIPELINES.items():
        if class_name == pipeline:
            return family
    return None


def load_family_pipeline(model: str, family: str) -> Any:
    """A stock diffusers pipeline of ``family`` from a tiny name (built in code) or a local folder."""
    if model in TINY_NAMES:
        from erasekit.backends.tiny_families import TINY_BUILDERS

        return TINY_BUILDERS[TINY_NAMES[model]]()
    path = Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise ErasekitError(
            f"{path} is not a diffusers folder (no model_index.json); pass a pipeline folder."
        )
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if not sys.stderr.isatty():
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    pipeline_cls = getattr(diffusers, FAMILY_PIPELINES[family])
    try:
        return pipeline_cls.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ErasekitError(
            f"Could not load the {family} folder {path} ({type(error).__name__}: {reason}); pass a complete {FAMILY_PIPELINES[family]} folder."
        ) from error


def load_family_backend(
    model: str,
    family: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    allow_pickle: bool = False,  # folders hold safetensors; accepted for the loaders' common signature
) -> Any:
    """Load ``model`` (a ``tiny-*`` name or a folder) as the erasekit backend of ``family``."""
    from erasekit.backends.sd import check_device

    check_device(device)
    pipe = load_family_pipeline(model, family)
    if any(
        p.dtype != dtype or str(p.device) != device
        for p in pipe.components.values()
        if isinstance(p, torch.nn.Module)
    ):
        pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if family == "sdxl":
        from erasekit.backends.sdxl import SDXLBackend

        return SDXLBackend(pipe, name=name or model)
    from erasekit.backends.flow import FlowBackend

    return FlowBackend(pipe, family, name=name or model)
