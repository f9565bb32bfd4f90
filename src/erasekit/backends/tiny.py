"""Stable Diffusion pipelines built in code: a tiny one for tests, an SD-1.4-shaped one for benchmarks.

Both use the real CLIP tokenizer (49,408 tokens) and random, seeded weights — nothing is downloaded.
"""

from __future__ import annotations

import torch

from erasekit.backends import _quiet  # noqa: F401

# isort: split
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from erasekit.backends.tokenizer import CLIP_VOCAB_SIZE, load_clip_tokenizer


def _assemble(
    unet_kwargs: dict, text_kwargs: dict, vae_kwargs: dict, max_length: int, seed: int
) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=max_length, **text_kwargs)
    )
    vae = AutoencoderKL(**vae_kwargs)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(max_length),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(seed: int = 0, max_length: int = 16) -> StableDiffusionPipeline:
    """A ~1 M-parameter SD pipeline (UNet channels (32, 64), 2-layer text encoder, 16×16 images)."""
    return _assemble(
        unet_kwargs=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        text_kwargs=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vae_kwargs=dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=16,
        ),
        max_length=max_length,
        seed=seed,
    )


# Public-size configs (random weights; benchmarks/bench_families.py builds SDXL from them too).
CLIP_SPECIAL_IDS = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
CLIP_VIT_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    **CLIP_SPECIAL_IDS,
)
"""CLIP ViT-L/14's text tower (SD 1.x; SDXL's first encoder), without vocabulary and length."""
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)
"""The SD 1.x VAE (84 M); SDXL's has the same shape at sample size 1024."""


def build_sd14_shaped_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Random weights at the public SD-1.4 sizes (UNet 860 M, CLIP ViT-L/14 text 123 M, VAE 84 M)."""
    return _assemble(
        unet_kwargs=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
        text_kwargs=CLIP_VIT_L_TEXT,
        vae_kwargs=SD_VAE,
        max_length=77,
        seed=seed,
    )
