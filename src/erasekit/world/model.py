"""The shipped ShapesWorld model: architecture (``tiny_config``) and loading of the packaged weights.

The model is a real Stable Diffusion pipeline in miniature: the real CLIP tokenizer (49,408 tokens,
prompts padded to 24), a 3-layer ``CLIPTextModel`` of width 128, an ``AutoencoderKL`` that maps
32×32 RGB to an 8×8×4 latent (channels 16/32/64), a 1.8 M-parameter ``UNet2DConditionModel``
(channels 32/64/64 at 8×8, 4×4, 2×2) with cross-attention at every level of that latent, and a DDIM
scheduler (trailing spacing) over a cosine v-prediction noise schedule. Everything is trained from
scratch by :mod:`erasekit.world.train`. Weights are stored in float16 (the 49,408-row token-embedding
table dominates the size) and load as float32.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from erasekit.errors import ErasekitError

SHIPPED_MODEL_DIR: Path = Path(__file__).resolve().parent / "assets" / "shapes-model"
MANIFEST_NAME = "erasekit_manifest.json"

# Defaults for sampling the shipped model; the judge scored guidance 1.5, 3 and 5 alike on a checkpoint.
DEFAULT_NUM_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 3.0
IMAGE_SIZE = 32

_TINY: dict[str, dict[str, Any]] = {
    "tokenizer": {"model_max_length": 24},
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 24,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "projection_dim": 128,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": 32,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3,
        "up_block_types": ["CrossAttnUpBlock2D"] * 3,
        "cross_attention_dim": 128,
        "attention_head_dim": 2,
        "norm_num_groups": 16,
    },
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "clip_sample": False,
    },
}


def tiny_config() -> dict[str, dict[str, Any]]:
    """Architecture of the shipped model: keyword arguments per component (a fresh deep copy).

    Keys: ``tokenizer`` (``model_max_length``), ``text_encoder`` (``CLIPTextConfig``), ``vae``
    (``AutoencoderKL``), ``unet`` (``UNet2DConditionModel``), ``scheduler`` (``DDPMScheduler`` /
    ``DDIMScheduler``).
    """
    return copy.deepcopy(_TINY)


def micro_config() -> dict[str, dict[str, Any]]:
    """A much smaller architecture of the same shape, for smoke tests (seconds on a CPU)."""
    cfg = tiny_config()
    cfg["text_encoder"].update(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32
    )
    cfg["vae"].update(block_out_channels=[8, 16, 16], norm_num_groups=8)
    cfg["unet"].update(
        block_out_channels=[16, 32, 32], cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8
    )
    return cfg


def build_components(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Freshly initialised components (tokenizer, text encoder, vae, unet, noise scheduler)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from erasekit.backends.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer(model_max_length=config["tokenizer"]["model_max_length"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    vae = AutoencoderKL(**config["vae"])
    unet = UNet2DConditionModel(**config["unet"])
    scheduler = DDPMScheduler(**config["scheduler"])
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def make_pipeline(components: dict[str, Any]):
    """A ``StableDiffusionPipeline`` from components, with a trailing-spacing DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sched = DDIMScheduler.from_config(
        components["scheduler"].config, timestep_spacing="trailing", set_alpha_to_one=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_shipped_pipeline(path: str | Path | None = None):
    """Load the shipped ShapesWorld pipeline (float32, CPU, offline) from ``path`` or the package.

    Raises:
        ErasekitError: the folder has no ``model_index.json`` (a broken install or wrong path).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    folder = Path(path) if path is not None else SHIPPED_MODEL_DIR
    if not (folder / "model_index.json").is_file():
        raise ErasekitError(
            f"{folder} is not a diffusers model folder (no model_index.json); reinstall erasekit "
            "or train one with `erasekit world train`."
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        torch_dtype=torch.float32,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_shipped_components(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped pipeline's components as a dict (tokenizer, text_encoder, vae, unet, scheduler)."""
    pipe = load_shipped_pipeline(path)
    return {k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")}


def read_manifest(path: str | Path | None = None) -> dict[str, Any]:
    """The training manifest stored next to the shipped weights (empty dict if absent)."""
    import json

    folder = Path(path) if path is not None else SHIPPED_MODEL_DIR
    file = folder / MANIFEST_NAME
    return json.loads(file.read_text()) if file.is_file() else {}
