"""SDXL, SD3 and FLUX pipelines built in code: tiny ones for tests, real-shaped parts for benchmarks.

Every pipeline is a *stock* diffusers pipeline (``StableDiffusionXLPipeline``,
``StableDiffusion3Pipeline``, ``FluxPipeline``) with random, seeded weights: it saves and reloads with
``from_pretrained(local_files_only=True)`` like a downloaded one. The CLIP tokenizers are the real
CLIP BPE (:mod:`erasekit.backends.tokenizer`). No PyPI package ships a T5 SentencePiece model, so the
T5 tokenizer is a Unigram model built in-process from the packaged COCO captions' word frequencies,
laid out like T5's (pad 0, ``</s>`` 1, unk 2, ``"$A </s>"`` post-processing); real SD3/FLUX folders
bring their own.

Tiny sizes follow the configurations measured in the wave-2 prototype notes (§4.1), with two fixes:
SD3's T5 width is at least the two CLIP widths together (the pipeline pads CLIP features up to the T5
width; a narrower T5 would silently *truncate* them), and the tiny SD3 uses SD3.5's dual attention in
its first block, so the "``attn2`` is image self-attention there" trap is exercised by the tests.
"""

from __future__ import annotations

import collections
import functools
import math
import re
from importlib import resources

import torch

from erasekit.backends import _quiet  # noqa: F401

# isort: split
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from erasekit.backends.tokenizer import CLIP_VOCAB_SIZE, load_clip_tokenizer

T5_VOCAB_SIZE = 4096  # the in-process Unigram vocabulary (real T5: 32,128)
_CLIP_IDS = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


@functools.lru_cache(maxsize=2)
def _t5_tokenizer_cached(model_max_length: int) -> T5TokenizerFast:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    corpus = resources.files("erasekit").joinpath("data/coco_captions.txt").read_text(encoding="utf-8")
    lines = [line.strip().lower() for line in corpus.splitlines() if line.strip()]
    # the words prompts in tests and ShapesWorld use, so they are whole tokens
    lines += [
        "a photo of a red star, a painting in the style of van gogh",
        "square circle triangle heart star hexagon cross",
        "red blue green yellow purple cyan white orange black pink",
        "striped dotted checkered plain background",
    ]
    # A Unigram model written down rather than trained: the tokenizers trainer is not deterministic
    # across processes (two runs swap some pieces' scores), and every process must give the same ids.
    # Pieces: the most frequent words as "▁word" (log-frequency scores) and every character seen, as
    # "c" and "▁c" (scored far lower, so whole words win and unknown words split into characters).
    words = collections.Counter(w for line in lines for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", line))
    chars = collections.Counter(c for line in lines for c in line if not c.isspace())
    total = sum(words.values())
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[: T5_VOCAB_SIZE - 3 - 2 * len(chars)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in ranked]
    char_score = math.log(1 / total) - 10.0
    vocab += [(piece, char_score) for c in sorted(chars) for piece in (c, "\u2581" + c)]
    seen, unique = set(), []
    for piece, score in vocab:  # a one-character word is also a character piece
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    tokenizer = Tokenizer(models.Unigram(unique, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=model_max_length,
    )


def load_tiny_t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A T5-layout tokenizer (pad 0, ``</s>`` 1, unk 2) trained in-process on the packaged captions."""
    return _t5_tokenizer_cached(model_max_length)


def _clip(hidden: int, max_length: int, projection: int | None = None, layers: int = 2) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=max_length,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        projection_dim=projection or hidden,
        **_CLIP_IDS,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(d_model: int, layers: int = 2) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB_SIZE,
            d_model=d_model,
            d_kv=d_model // 4,
            d_ff=2 * d_model,
            num_layers=layers,
            num_heads=4,
            feed_forward_proj="gated-gelu",  # as T5 v1.1 / T5-XXL, which SD3 and FLUX use
            is_encoder_decoder=False,
            use_cache=False,
        )
    )


def _vae(latent_channels: int, flow: bool, sample_size: int) -> AutoencoderKL:
    kwargs = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
    )
    if flow:  # SD3/FLUX VAEs: no quant convs, a shift factor
        kwargs.update(
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
        )
    return AutoencoderKL(**kwargs)


def build_tiny_sdxl_pipeline(seed: int = 0, max_length: int = 16) -> StableDiffusionXLPipeline:
    """A ~4 M-parameter SDXL pipeline: two CLIP encoders (32 + 32 wide), pooled + time-id conditioning."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids × 8 + pooled width
        cross_attention_dim=32 + 32,  # the two encoders' hidden states, concatenated
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, flow=False, sample_size=32),
        text_encoder=_clip(32, max_length, layers=3),  # SDXL reads the penultimate layer
        text_encoder_2=_clip(32, max_length, projection=32),
        tokenizer=load_clip_tokenizer(max_length),
        tokenizer_2=load_clip_tokenizer(max_length),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )
    return _ready(pipe)


def build_tiny_sd3_pipeline(seed: int = 0, max_length: int = 16) -> StableDiffusion3Pipeline:
    """A tiny SD3.5-style pipeline: MMDiT (2 joint blocks, the first with dual attention), 2 CLIP + T5."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,  # T5 width ≥ 32 + 32 (the padded CLIP features)
        pooled_projection_dim=64,  # CLIP-L + CLIP-G pooled
        out_channels=4,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),  # SD3.5: block 0 has a second *image self-attention* attn2
        qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, flow=True, sample_size=32),
        text_encoder=_clip(32, max_length, projection=32),
        tokenizer=load_clip_tokenizer(max_length),
        text_encoder_2=_clip(32, max_length, projection=32),
        tokenizer_2=load_clip_tokenizer(max_length),
        text_encoder_3=_t5(64),
        tokenizer_3=load_tiny_t5_tokenizer(),
    )
    return _ready(pipe)


def build_tiny_flux_pipeline(
    seed: int = 0, max_length: int = 16, guidance_embeds: bool = True
) -> FluxPipeline:
    """A tiny FLUX.1-dev-style pipeline (``guidance_embeds=False``: schnell-style): 1 double- and 1
    single-stream block, CLIP (pooled) + T5."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # 4 latent channels packed 2×2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),  # sums to the head dim
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=_vae(4, flow=True, sample_size=32),
        text_encoder=_clip(32, max_length),
        tokenizer=load_clip_tokenizer(max_length),
        text_encoder_2=_t5(32),
        tokenizer_2=load_tiny_t5_tokenizer(),
        transformer=transformer,
    )
    return _ready(pipe)


def _ready(pipe):
    """Modules built in code start in training mode (T5's dropout would make every call random);
    ``from_pretrained`` returns them in eval mode, and so do the builders."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_BUILDERS = {
    "sdxl": build_tiny_sdxl_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "flux": build_tiny_flux_pipeline,
}
