"""Speed of UCE and ESD on the SDXL / SD3 / FLUX backends, random weights at (or near) real sizes.

    nice -n 5 python benchmarks/bench_families.py --task uce-sdxl      # SDXL-shaped UCE erase time
    nice -n 5 python benchmarks/bench_families.py --task esd-sdxl      # ESD s/iteration (reduced UNet)
    nice -n 5 python benchmarks/bench_families.py --task unet-sdxl-bf16  # real SDXL UNet, bf16 passes
    python benchmarks/bench_families.py --task tiny                    # every family, tiny (smoke)

What is built, and why (one process must stay under ~10 GB RAM on this 24 GB, 2-core machine):

* ``uce-sdxl``: both SDXL text encoders at their public sizes (CLIP ViT-L/14 text, 123 M; OpenCLIP
  ViT-bigG/14 text with projection, 695 M) and the real SDXL UNet *configuration* built on the
  ``meta`` device, of which only the layers UCE reads and edits are materialised with random values:
  the 140 ``attn2.to_k/to_v`` (2048 → 640/1280) and ``add_embedding.linear_1`` (2816 → 1280). The
  full UNet (2.6 B parameters, ~10 GB in float32) is never allocated; UCE never runs it. The timed
  call is ``UCE().erase`` itself (encoding every prompt through both encoders, the eq. 7 solves for
  the context and pooled streams, the 141 deltas), with the method's defaults.
* ``esd-sdxl``: the full SDXL UNet does not fit, so ESD runs on an SDXL-*shaped* UNet whose only
  change is fewer transformer layers per block ((1, 2, 10) -> (1, 1, 1)), with the real channel
  widths, heads, 2048-d cross-attention and pooled/time-id conditioning, the real-size text encoders
  and the real SDXL VAE configuration, at ``--resolution`` (default 512 px) and ``--ddim-steps``
  (default 10). Each iteration's cost is dominated by the k ≤ ddim_steps CFG denoising steps to x_t,
  so the JSON also records one UNet forward and one forward+backward, from which other settings can
  be extrapolated: s/it ≈ E[k]·2·t_fwd + 2·t_fwd + t_fwd_bwd (E[k] = (ddim_steps − 1)/2).
* ``tiny``: UCE and ESD (smoke settings) on tiny-sdxl, tiny-sd3 and tiny-flux.

Writes ``benchmarks/results/families_<task>.json`` (versions, machine, settings, seconds, peak RSS).
Timings are results, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from erasekit.backends.tiny import CLIP_SPECIAL_IDS, CLIP_VIT_L_TEXT, CLIP_VOCAB_SIZE, SD_VAE

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025}
CLIP_IDS = dict(vocab_size=CLIP_VOCAB_SIZE, **CLIP_SPECIAL_IDS)
CLIP_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)


def _rss() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def _machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _text_encoders(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te1 = CLIPTextModel(
        CLIPTextConfig(max_position_embeddings=77, vocab_size=CLIP_VOCAB_SIZE, **CLIP_VIT_L_TEXT)
    )
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(max_position_embeddings=77, **CLIP_G, **CLIP_IDS))
    return te1, te2


def _sdxl_pipeline(unet, vae, seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from erasekit.backends.tokenizer import load_clip_tokenizer

    te1, te2 = _text_encoders(seed)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=load_clip_tokenizer(77),
        tokenizer_2=load_clip_tokenizer(77),
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )


def bench_uce_sdxl(seed: int) -> dict:
    """UCE on SDXL-shaped weights: real text encoders; of the UNet only what UCE reads is allocated."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from erasekit.backends.sdxl import SDXLBackend
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods.uce import UCE, UCEConfig

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
    generator = torch.Generator().manual_seed(seed)
    materialised = 0
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")) or name == "add_embedding.linear_1":
            module.to_empty(device="cpu")
            for param in module.parameters():
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
                materialised += param.numel()
    pipe = _sdxl_pipeline(unet, vae, seed)
    backend = SDXLBackend(pipe, name="sdxl-shaped-uce")
    backend.device = torch.device("cpu")  # the UNet lives on meta; the encoders and edited layers on CPU
    spec = ConceptSpec.from_lists(["van gogh"], ["a painter"], ["claude monet", "a cat", "a dog"])
    config = build_config(UCEConfig, None, [])
    from erasekit.methods.base import PeakMemory
    from erasekit.methods.uce import _pairs

    # the encoding part alone: every prompt UCE encodes, through both encoders
    erase_pairs, preserve_prompts = _pairs(spec, config.use_templates)
    prompts = [s for s, _ in erase_pairs] + [a for _, a in erase_pairs] + preserve_prompts
    start = time.perf_counter()
    with torch.no_grad():
        backend.text_linear_inputs(prompts, backend.closed_form_target)
    encode_seconds = time.perf_counter() - start
    rss_before = _rss()
    with PeakMemory() as memory:
        start = time.perf_counter()
        artifact = UCE().erase(backend, spec, config)
        seconds = time.perf_counter() - start
    params = backend.parameters_for(backend.closed_form_target)
    return {
        "task": "uce-sdxl",
        "built": "CLIP-L text (123 M) + OpenCLIP-bigG text with projection (695 M) at real size; SDXL UNet config on meta with only attn2.to_k/to_v and add_embedding.linear_1 materialised",
        "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "text_encoder_2_parameters": sum(p.numel() for p in pipe.text_encoder_2.parameters()),
        "unet_parameters_full_config": sum(p.numel() for p in unet.parameters()),
        "unet_parameters_materialised": materialised,
        "edited_weights": len(artifact.weight_edits),
        "edited_weight_parameters": sum(p.numel() for p in params.values()),
        "concepts": {
            "erase": ["van gogh"],
            "anchor": ["a painter"],
            "preserve": ["claude monet", "a cat", "a dog"],
        },
        "uce_config": "defaults (tokens=all, lamb=0.5)",
        "manifest_edit": artifact.manifest["edit"],
        "erase_seconds": seconds,
        "encode_seconds_alone": encode_seconds,
        "prompts_encoded": len(prompts),
        "erase_peak_bytes_above_start": memory.peak_bytes,
        "rss_bytes_before_erase": rss_before,
        "rss_bytes_after": _rss(),
    }


def bench_esd_sdxl(seed: int, resolution: int, ddim_steps: int, iterations: int) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from erasekit.backends.sdxl import SDXLBackend
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods.esd import ESD, ESDConfig

    torch.manual_seed(seed)
    unet_config = {**SDXL_UNET, "transformer_layers_per_block": (1, 1, 1)}
    unet = UNet2DConditionModel(**unet_config)
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE)  # ESD never encodes or decodes images
    pipe = _sdxl_pipeline(unet, vae, seed)
    backend = SDXLBackend(pipe, name="sdxl-shaped-esd")
    backend.device = torch.device("cpu")
    # one UNet forward and one forward+backward through the trained (cross-attention) parameters
    latents = backend.initial_latents([0], size=resolution)
    with torch.no_grad():
        cond = backend.encode_prompts(["a painting by van gogh"])
        start = time.perf_counter()
        backend.predict_noise(latents, 500, cond)
        forward = time.perf_counter() - start
    trained = backend.parameters_for("cross_attn")
    for p in trained.values():
        p.requires_grad_(True)
    start = time.perf_counter()
    backend.predict_noise(latents, 500, cond).float().pow(2).mean().backward()
    forward_backward = time.perf_counter() - start
    for p in trained.values():
        p.requires_grad_(False)
        p.grad = None
    config = build_config(
        ESDConfig, None, [f"iterations={iterations}", f"ddim_steps={ddim_steps}", f"resolution={resolution}"]
    )
    spec = ConceptSpec.from_lists(["van gogh"])
    start = time.perf_counter()
    artifact = ESD().erase(backend, spec, config, generator=torch.Generator().manual_seed(seed))
    total = time.perf_counter() - start
    return {
        "task": "esd-sdxl",
        "built": "SDXL UNet with transformer_layers_per_block (1,1,1) instead of (1,2,10) (real widths, heads, 2048-d cross-attention, pooled + time ids), real-size CLIP-L and bigG text encoders",
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_parameters_real_sdxl": 2_567_463_684,
        "trained_parameters": artifact.manifest["training"]["trained_parameters"],
        "resolution": resolution,
        "ddim_steps": ddim_steps,
        "iterations": iterations,
        "esd_seconds_total": total,
        "esd_seconds_per_iteration": total / iterations,
        "unet_forward_seconds": forward,
        "unet_forward_backward_seconds": forward_backward,
        "rss_bytes_after": _rss(),
    }


def bench_unet_sdxl_bf16(seed: int, resolutions: list[int]) -> dict:
    """The real SDXL UNet (2.57 B parameters) in bfloat16: one forward per resolution and one
    forward+backward through the cross-attention parameters (ESD-x's) at the first resolution.

    float32 would need 10.3 GB for the weights alone; bfloat16 needs 5.1 GB, and this CPU has AMX
    bf16 matrix units (measured 421 vs 87 GFLOP/s on one thread for a 1024×2048×2048 matmul). ESD's
    own loop does not fit here even in bf16 (weights + the 0.55 B trained parameters' originals,
    gradients and two Adam moments ≈ 9.5 GB before activations), so its s/iteration at this size is
    the estimate (E[k]·2 + 2)·t_fwd + t_fwd_bwd from these measured components.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # allocate the weights in bf16 directly (no fp32 copy)
    try:
        unet = UNet2DConditionModel(**SDXL_UNET).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    trained = [p for n, p in unet.named_parameters() if ".attn2." in n]
    out = {
        "task": "unet-sdxl-bf16",
        "built": "the real SDXL UNet configuration in bfloat16, random weights; no text encoders (random context)",
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "cross_attention_parameters": sum(p.numel() for p in trained),
        "forward_seconds": {},
    }

    def call(side: int):
        latents = torch.randn(1, 4, side // 8, side // 8, dtype=torch.bfloat16)
        context = torch.randn(1, 77, 2048, dtype=torch.bfloat16)
        added = {
            "text_embeds": torch.randn(1, 1280, dtype=torch.bfloat16),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.bfloat16),
        }
        return unet(
            latents, torch.tensor([500]), encoder_hidden_states=context, added_cond_kwargs=added
        ).sample

    for side in resolutions:
        with torch.no_grad():
            start = time.perf_counter()
            call(side)
            out["forward_seconds"][str(side)] = time.perf_counter() - start
    for p in trained:
        p.requires_grad_(True)
    start = time.perf_counter()
    call(resolutions[0]).float().pow(2).mean().backward()
    out["forward_backward_seconds"] = {str(resolutions[0]): time.perf_counter() - start}
    out["rss_bytes_after"] = _rss()
    t_fwd = out["forward_seconds"][str(resolutions[0])]
    t_bwd = out["forward_backward_seconds"][str(resolutions[0])]
    out["esd_estimate_seconds_per_iteration"] = {
        f"{resolutions[0]}px_ddim_steps_{steps}": ((steps - 1) / 2 * 2 + 2) * t_fwd + t_bwd
        for steps in (2, 10, 50)
    }
    return out


def bench_tiny(seed: int) -> dict:
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods import get_method, run_method
    from erasekit.zoo import load_model

    out = {"task": "tiny", "runs": []}
    for model in ("tiny-sdxl", "tiny-sd3", "tiny-flux"):
        backend = load_model(model)
        for name, overrides in (("uce", []), ("esd", ["iterations=5", "ddim_steps=4"])):
            method = get_method(name)
            config = build_config(method.config_cls, None, overrides)
            spec = ConceptSpec.from_lists(["star"], ["square"] if name == "uce" else [])
            start = time.perf_counter()
            artifact = run_method(method, backend, spec, config, seed=seed)
            seconds = time.perf_counter() - start
            out["runs"].append(
                {
                    "model": model,
                    "method": name,
                    "overrides": overrides,
                    "seconds": seconds,
                    "method_seconds": artifact.manifest["cost"]["seconds"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("uce-sdxl", "esd-sdxl", "unet-sdxl-bf16", "tiny"), required=True)
    parser.add_argument("--resolutions", default="512,1024", help="unet-sdxl-bf16: image sides to time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from erasekit.artifacts import environment_versions, now_iso
    from erasekit.files import atomic_write_text

    if args.task == "uce-sdxl":
        result = bench_uce_sdxl(args.seed)
    elif args.task == "unet-sdxl-bf16":
        result = bench_unet_sdxl_bf16(args.seed, [int(r) for r in args.resolutions.split(",")])
    elif args.task == "esd-sdxl":
        result = bench_esd_sdxl(args.seed, args.resolution, args.ddim_steps, args.iterations)
    else:
        result = bench_tiny(args.seed)
    result.update(
        {
            "versions": environment_versions(),
            "machine": _machine(),
            "finished": now_iso(),
            "command": sys.argv,
        }
    )
    path = args.out or RESULTS_DIR / f"families_{args.task}.json"
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("versions", "machine")}, indent=2, default=str
        )
    )
    return result


if __name__ == "__main__":
    main()
