"""Image prompts for the shipped ShapesWorld model: an IP-Adapter trained on CPU (Ye et al., arXiv 2308.06721).

IP-Adapter adds *decoupled cross-attention* to a frozen text-to-image UNet (eq. 5 of the paper)::

    Z = Attention(Q, K_text, V_text) + λ · Attention(Q, K_ip, V_ip),   K_ip = c_i W'_k,  V_ip = c_i W'_v

where c_i are a few *image tokens* made from an image encoder's embedding by a linear projection and
a LayerNorm, and λ is the image scale. Only W'_k, W'_v (``to_k_ip`` / ``to_v_ip``, one pair per
cross-attention layer, initialised from ``to_k`` / ``to_v``) and the projection are trained, with the
ordinary denoising loss; text and image are each dropped for a share of the batch so that classifier-
free guidance works for both.

What is ShapesWorld-specific, and why:

* **The image encoder** is a tiny ``CLIPVisionModelWithProjection`` (32 px, patch 4, width 64, two
  layers) trained here as a classifier of shape / colour / style on renders (the heads are dropped;
  its ``image_embeds`` are what the adapter reads). A real IP-Adapter uses OpenCLIP ViT-H; the format
  and the loading path are the same, so ``pipe.load_ip_adapter(folder, subfolder="",
  weight_name=WEIGHTS_NAME, image_encoder_folder="image_encoder", local_files_only=True)`` serves this
  adapter and a real SD1.5 one alike. The encoder sees pixels exactly as diffusers'
  ``CLIPImageProcessor`` prepares them (:func:`pixel_values`; checked against the processor in a test).
* **A warm start, inside the encoder's training**: besides classifying, the encoder learns (through
  the adapter's bias-free projection) to reproduce the frozen text encoder's hidden states of the
  image's caption at the colour, shape and style words and at EOS. With W'_k, W'_v = W_k, W_v the
  image branch then begins as "attend to the caption's content words" (judged 0.79/1.00/0.71 before
  any denoising step), which the denoising loss refines.
* **The projection's biases stay 0**, so the zero embedding the pipeline feeds the CFG negative branch
  makes zero tokens (zero keys and values: the image branch adds exactly nothing there).
* **Training runs through diffusers' own IP-Adapter modules** (loaded with ``load_ip_adapter`` from a
  state dict), called as the UNet is called in the pipeline: ``image_embeds`` as a list of [B, 1, E]
  tensors. Evaluation makes one pipeline call per prompt image: diffusers applies
  ``ip_adapter_image_embeds`` to the whole batch of a call (see :func:`generate_with_image_embeds`),
  which kept our own first evaluations at chance even with oracle tokens (``benchmarks/README.md``).

The gate is generation, not loss: with an image prompt (a render) and the empty text prompt, the judge
must name the prompt image's shape and colour (:func:`evaluate_image_prompts`). Train it with::

    python -m erasekit.world.ip_adapter --out src/erasekit/world/assets/shapes-ip-adapter
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from erasekit.backends import ip_adapter as backend_ip
from erasekit.backends.ip_adapter import (
    adapter_parameters,
    adapter_state_dict,
    initial_state_dict,
)
from erasekit.errors import ErasekitError
from erasekit.files import atomic_write
from erasekit.world.captions import caption, prompt_for
from erasekit.world.concepts import COLORS, SHAPES, STYLES
from erasekit.world.render import render_labels, sample_labels

IP_ADAPTER_DIR: Path = Path(__file__).resolve().parent / "assets" / "shapes-ip-adapter"
WEIGHTS_NAME = "ip-adapter_shapes.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
INFO_NAME = "ip_adapter.json"

# What diffusers' CLIPImageProcessor normalises with (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_HEADS: dict[str, tuple[str | None, ...]] = {
    "shape": (*SHAPES, None),
    "color": (*COLORS, None),
    "style": STYLES,
}


@dataclass(frozen=True)
class IPAdapterConfig:
    """Recipe of :func:`train_ip_adapter`; each field's docstring is its ``--help`` text."""

    seed: int = 0
    """Seeds renders, initialisation, batches, captions, dropout and noise."""
    pool: int = 8000
    """Rendered training images (fixed pool; latents and embeddings are computed once)."""
    p_no_shape: float = 0.05
    """Share of background-only renders in the pool."""
    encoder_width: int = 64
    """Hidden width of the tiny CLIP vision transformer."""
    encoder_layers: int = 2
    """Transformer layers of the image encoder."""
    embed_dim: int = 128
    """Width of the encoder's image_embeds (its visual projection)."""
    encoder_steps: int = 2000
    """Classifier steps that train the image encoder."""
    encoder_lr: float = 2e-3
    """Peak AdamW learning rate of the image encoder."""
    token_weight: float = 1.0
    """Weight of the warm start in the encoder's loss: MSE (over variance) of the projected tokens to the caption's content-word hidden states (0 = classification only)."""
    steps: int = 1500
    """Denoising-loss steps of the adapter."""
    batch: int = 64
    """Images per step (encoder and adapter)."""
    lr: float = 1e-3
    """Peak AdamW learning rate of the adapter (warm-up 5 %, cosine decay)."""
    p_empty_text: float = 0.7
    """Share of the batch trained with the empty text prompt (image-only conditioning)."""
    p_drop_image: float = 0.1
    """Share of the batch whose image embedding is zeroed (the pipeline's negative branch)."""
    min_snr_gamma: float = 5.0
    """Min-SNR-γ loss weighting, as in the base model's training (0 = plain MSE)."""
    max_minutes: float = 12.0
    """Stop the denoising stage after this many minutes (whatever ``steps`` says)."""
    eval_every: int = 500
    """Judge image-prompted generations every N steps (logged; 0 = only at the end)."""
    eval_images: int = 48
    """Images per evaluation (random render prompts, empty text)."""


# ---- the image encoder ------------------------------------------------------------------------------
def build_image_encoder(config: IPAdapterConfig, image_size: int = 32):
    """A freshly initialised tiny ``CLIPVisionModelWithProjection`` (the folder load_ip_adapter reads)."""
    return backend_ip.build_image_encoder(
        config.encoder_width, config.encoder_layers, config.embed_dim, image_size
    )


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] → what ``CLIPImageProcessor`` gives the encoder (same size assumed).

    The processor works on 8-bit images (PIL), so values are rounded to 1/255 first, then normalised
    with the OpenAI CLIP mean and std.
    """
    x = (images.clamp(0, 1) * 255).round() / 255
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_embeds(encoder, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The encoder's ``image_embeds`` [N, E] for images in [0, 1] (the adapter's input)."""
    out = [encoder(pixel_values(images[i : i + batch])).image_embeds for i in range(0, len(images), batch)]
    return torch.cat(out)


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_image_encoder(
    encoder, images, labels, token_targets, config: IPAdapterConfig, generator, log
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train ``encoder`` on renders: classify shape/colour/style and, through a bias-free projection
    (the adapter's ``ImageProjection`` with both biases at 0), reproduce the caption's content-word
    hidden states ``token_targets`` [N, 4, D] (the warm start). Returns (record, projection weights).

    The classification heads are discarded; the projection becomes the adapter's initial projection.
    """
    from erasekit.world.judge import augment

    tokens, dim = token_targets.shape[1], token_targets.shape[2]
    heads = nn.ModuleDict({d: nn.Linear(config.embed_dim, len(c)) for d, c in _HEADS.items()})
    proj = nn.Linear(config.embed_dim, tokens * dim, bias=False)
    norm_weight = nn.Parameter(torch.ones(dim))
    targets = {d: torch.tensor([c.index(lab[d]) for lab in labels]) for d, c in _HEADS.items()}
    scale = token_targets.var(0).mean()

    def project(e: torch.Tensor) -> torch.Tensor:  # = diffusers' ImageProjection with zero biases
        return F.layer_norm(proj(e).view(len(e), tokens, dim), (dim,), weight=norm_weight)

    params = [*encoder.parameters(), *heads.parameters(), *proj.parameters(), norm_weight]
    optimiser = torch.optim.AdamW(params, lr=config.encoder_lr, weight_decay=1e-4)
    encoder.train()
    for step in range(config.encoder_steps):
        for group in optimiser.param_groups:
            group["lr"] = config.encoder_lr * _lr_factor(step, config.encoder_steps)
        idx = torch.randint(len(images), (config.batch,), generator=generator)
        x = images[idx]
        if float(torch.rand((), generator=generator)) < 0.5:
            x = augment(x, generator)
        e = encoder(pixel_values(x)).image_embeds
        ce = sum(F.cross_entropy(heads[d](e), targets[d][idx]) for d in _HEADS)
        mse = F.mse_loss(project(e), token_targets[idx]) / scale
        loss = ce + config.token_weight * mse
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 200 == 0 or step == config.encoder_steps - 1:
            log(f"encoder step {step} ce {ce.item():.4f} token mse/var {mse.item():.4f}")
    encoder.eval()
    encoder.requires_grad_(False)
    fresh_labels = sample_labels(1000, torch.Generator().manual_seed(config.seed + 77))
    fresh = render_labels(fresh_labels, generator=torch.Generator().manual_seed(config.seed + 78))
    with torch.no_grad():
        e = image_embeds(encoder, fresh)
        acc = {
            d: round(
                float(
                    (heads[d](e).argmax(-1) == torch.tensor([c.index(lab[d]) for lab in fresh_labels]))
                    .float()
                    .mean()
                ),
                4,
            )
            for d, c in _HEADS.items()
        }
    record = {
        "final_ce": round(ce.item(), 5),
        "final_token_mse_over_variance": round(mse.item(), 5),
        "accuracy_fresh_renders": acc,
    }
    return record, {"proj.weight": proj.weight.detach().clone(), "norm.weight": norm_weight.detach().clone()}


# ---- the adapter in diffusers' format -----------------------------------------------------------------
def save_adapter(folder: str | os.PathLike, unet, encoder, info: dict[str, Any]) -> Path:
    """Write the adapter file, the image encoder folder and the recipe JSON into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(unet)
    flat = {f"{group}.{k}": v for group, tensors in state.items() for k, v in tensors.items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))
    encoder.save_pretrained(folder / IMAGE_ENCODER_FOLDER)
    atomic_write(folder / INFO_NAME, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return folder


def load_into_pipeline(pipe, folder: str | os.PathLike | None = None, *, with_encoder: bool = True):
    """``pipe.load_ip_adapter`` on a local adapter folder (default: the shipped one), offline.

    Raises:
        ErasekitError: the folder lacks the adapter file (train one with ``python -m erasekit.world.ip_adapter``).
    """
    folder = Path(folder) if folder is not None else IP_ADAPTER_DIR
    if not (folder / WEIGHTS_NAME).is_file():
        raise ErasekitError(
            f"no IP-Adapter in {folder} (needs {WEIGHTS_NAME}); train one with `python -m erasekit.world.ip_adapter --out {folder}`."
        )
    pipe.load_ip_adapter(
        str(folder),
        subfolder="",
        weight_name=WEIGHTS_NAME,
        image_encoder_folder=IMAGE_ENCODER_FOLDER if with_encoder else None,
        local_files_only=True,
    )
    return pipe


# ---- caption-token targets for the warm start ---------------------------------------------------------
def _content_positions(tokenizer, text: str, words: Sequence[str]) -> list[int]:
    """Token index of the last sub-token of each word (in order) in ``text``, plus the EOS index.

    CLIP's BPE splits on whitespace first, so a prefix tokenises to a prefix of the full tokenisation.
    """
    positions, prefix_words, cursor = [], text.split(" "), 0
    for word in words:
        while cursor < len(prefix_words) and prefix_words[cursor].strip(",") != word:
            cursor += 1
        prefix = " ".join(prefix_words[: cursor + 1])
        positions.append(len(tokenizer(prefix).input_ids) - 2)  # minus EOS, minus 0-indexing
        cursor += 1
    positions.append(len(tokenizer(text).input_ids) - 1)  # EOS
    return positions


@torch.no_grad()
def caption_token_targets(tokenizer, text_encoder, labels: Sequence[dict]) -> torch.Tensor:
    """[N, 4, D]: the canonical caption's hidden states at colour, shape, style and EOS per label set."""
    cache: dict[tuple, torch.Tensor] = {}
    out = []
    for lab in labels:
        key = (lab["shape"], lab["color"], lab["style"])
        if key not in cache:
            if lab["shape"] is None:
                text, words = prompt_for(style=lab["style"]), [lab["style"], lab["style"], lab["style"]]
            else:
                text, words = prompt_for(**lab), [lab["color"], lab["shape"], lab["style"]]
            ids = tokenizer(
                text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
            )
            hidden = text_encoder(ids.input_ids)[0][0]
            cache[key] = hidden[_content_positions(tokenizer, text, words)]
        out.append(cache[key])
    return torch.stack(out)


# ---- generation with an image prompt ------------------------------------------------------------------
@torch.no_grad()
def generate_with_image_embeds(
    pipe,
    embeds: torch.Tensor,
    seeds: Sequence[int],
    *,
    prompt: str = "",
    steps: int = 25,
    guidance: float = 3.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """One image per (embedding, seed) through the stock pipeline; images [N, 3, H, W] in [0, 1].

    One pipeline call per image: diffusers treats ``ip_adapter_image_embeds`` as the image prompt of
    the *whole* batch (it repeats them ``batch × num_images_per_prompt`` times and the attention
    processor folds the extra rows into more tokens per sample), so per-sample embeddings in one
    batched call would give every sample the tokens of every image — the cause of the first
    prototype's chance-level image prompts. The negative branch gets zeros, as ``ip_adapter_image=`` does.
    """
    pipe.set_ip_adapter_scale(scale)
    out = []
    for embedding, seed in zip(embeds, seeds):
        positive = embedding.view(1, 1, -1).to(pipe.unet.dtype)
        layout = torch.cat([torch.zeros_like(positive), positive]) if guidance > 1 else positive
        image = pipe(
            prompt=prompt,
            ip_adapter_image_embeds=[layout],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(int(seed)),
            output_type="pt",
        ).images
        out.append(image.float().cpu().clamp(0, 1))
    return torch.cat(out)


def evaluate_image_prompts(
    pipe,
    encoder,
    judge,
    labels: Sequence[dict],
    *,
    seed: int = 0,
    guidance: float = 3.0,
    steps: int = 25,
    prompt="",
) -> dict[str, Any]:
    """Judge accuracy (shape/colour/style) of image-prompted generations against the prompt images' labels.

    Each label set is rendered (seeded) into a prompt image; one image is generated per prompt.
    """
    prompts = render_labels(labels, generator=torch.Generator().manual_seed(seed))
    embeds = image_embeds(encoder, prompts)
    seeds = [seed * 100_003 + i for i in range(len(labels))]
    images = torch.cat(
        [
            generate_with_image_embeds(
                pipe, embeds[i : i + 32], seeds[i : i + 32], prompt=prompt, steps=steps, guidance=guidance
            )
            for i in range(0, len(labels), 32)
        ]
    )
    return {k: round(v, 4) for k, v in judge.accuracy(images, labels).items()}


# ---- training -----------------------------------------------------------------------------------------
def train_ip_adapter(
    config: IPAdapterConfig,
    *,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    log=print,
) -> dict[str, Any]:
    """Train the image encoder and the IP-Adapter for the frozen shipped model; save into ``out``.

    Returns the info dict written as ``ip_adapter.json`` (recipe, times, losses, evaluations).
    """
    from erasekit.world.judge import load_judge
    from erasekit.world.model import load_shipped_pipeline

    start = time.time()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pipe = load_shipped_pipeline(model)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    judge = load_judge()
    info: dict[str, Any] = {"name": "erasekit ShapesWorld IP-Adapter", "recipe": dataclasses.asdict(config)}

    labels = sample_labels(config.pool, generator, p_no_shape=config.p_no_shape)
    images = torch.cat(
        [render_labels(labels[i : i + 1000], generator=generator) for i in range(0, len(labels), 1000)]
    )
    log(f"rendered {len(images)} images in {time.time() - start:.0f}s")

    t0 = time.time()
    token_targets = caption_token_targets(pipe.tokenizer, pipe.text_encoder, labels)
    encoder = build_image_encoder(config)
    info["encoder"], projection_init = train_image_encoder(
        encoder, images, labels, token_targets, config, generator, log
    )
    info["encoder"]["seconds"] = round(time.time() - t0, 1)
    info["encoder"]["parameters"] = sum(p.numel() for p in encoder.parameters())
    log(f"encoder: {info['encoder']}")

    t0 = time.time()
    with torch.no_grad():
        embeds = image_embeds(encoder, images)
        latents = _latents(pipe.vae, images)
    info["precompute_seconds"] = round(time.time() - t0, 1)

    params = _attach_adapter(pipe, config, generator, projection_init)
    info["adapter_parameters"] = sum(p.numel() for p in params)
    step_fn = _AdapterStep(pipe, config, labels, latents, embeds, generator)
    eval_labels = sample_labels(config.eval_images, torch.Generator().manual_seed(config.seed + 500))
    evaluations: list[dict] = []

    def evaluate(step: int) -> None:
        pipe.unet.eval()
        acc = evaluate_image_prompts(pipe, encoder, judge, eval_labels, seed=config.seed + 501)
        evaluations.append({"step": step, "minutes": round((time.time() - t_train) / 60, 2), **acc})
        log(f"eval step {step}: {acc}")

    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    t_train = time.time()
    evaluate(0)
    for step in range(config.steps):
        if (time.time() - t_train) / 60 > config.max_minutes:
            log(f"time budget reached at step {step}")
            break
        for group in optimiser.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config.steps)
        loss = step_fn.loss()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 100 == 0:
            log(f"step {step} loss {_mean(losses[-100:]):.5f} ({time.time() - t_train:.0f}s)")
        if config.eval_every and step > 0 and step % config.eval_every == 0:
            evaluate(step)
    info["train"] = {
        "steps": len(losses),
        "seconds": round(time.time() - t_train, 1),
        "loss_first_100": round(_mean(losses[:100]), 5),
        "loss_last_100": round(_mean(losses[-100:]), 5),
    }
    for p in params:
        p.requires_grad_(False)
    evaluate(len(losses))
    info["evaluations"] = evaluations
    info["seconds_total"] = round(time.time() - start, 1)
    info["machine"] = (
        f"{os.cpu_count()} logical CPUs; torch {torch.__version__}; {torch.get_num_threads()} threads"
    )
    info["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if out is not None:
        save_adapter(out, pipe.unet, encoder, info)
    return info


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(1, len(values))


def _latents(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The VAE's scaled posterior means of ``images`` (in [0, 1]), in batches."""
    return torch.cat(
        [
            vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean * vae.config.scaling_factor
            for i in range(0, len(images), batch)
        ]
    )


def _attach_adapter(pipe, config: IPAdapterConfig, generator, projection_init) -> list[nn.Parameter]:
    """Load a fresh IP-Adapter into ``pipe`` (projection warm-started from the encoder's) and return its
    trainable parameters, with requires_grad on."""
    unet = pipe.unet
    state = initial_state_dict(unet, config.embed_dim, generator)
    if config.token_weight > 0:
        state["image_proj"].update(projection_init)
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    # The projection's two biases stay 0: then a zero embedding (what the pipeline feeds the CFG
    # negative branch) makes zero tokens, whose keys and values are 0, so the image branch adds exactly
    # nothing and the negative branch is the text-only model. With a learned bias the "no image" tokens
    # are LayerNorm(bias): a constant image prompt in the negative branch.
    frozen = {id(projection.image_embeds.bias), id(projection.norm.bias)}
    params = [p for p in adapter_parameters(unet) if id(p) not in frozen]
    for p in params:
        p.requires_grad_(True)
    return params


class _AdapterStep:
    """One denoising-loss batch of the adapter: v-prediction MSE (min-SNR-γ weighted) on a random batch
    of the pool, with image embeddings dropped and captions emptied at the recipe's rates."""

    def __init__(self, pipe, config: IPAdapterConfig, labels, latents, embeds, generator):
        self.pipe, self.config, self.labels = pipe, config, labels
        self.latents, self.embeds, self.generator = latents, embeds, generator
        self.scheduler = backend_ip.training_scheduler(pipe)

    def captions(self, idx: list[int]) -> list[str]:
        config, generator = self.config, self.generator
        return [
            ""
            if float(torch.rand((), generator=generator)) < config.p_empty_text
            else caption(self.labels[i], generator, 0.13)
            for i in idx
        ]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.pipe.text_encoder(ids)[0]

    def loss(self) -> torch.Tensor:
        config, generator, scheduler = self.config, self.generator, self.scheduler
        idx = torch.randint(len(self.latents), (config.batch,), generator=generator)
        x0 = self.latents[idx]
        e = self.embeds[idx].clone()
        drop = torch.rand(config.batch, generator=generator) < config.p_drop_image
        e[drop] = 0
        cond = self.encode(self.captions(idx.tolist()))
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch,), generator=generator)
        x_t = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = self.pipe.unet(
            x_t, t, encoder_hidden_states=cond, added_cond_kwargs={"image_embeds": [e[:, None, :]]}
        ).sample
        per = ((pred - target) ** 2).mean((1, 2, 3))
        if config.min_snr_gamma > 0:
            alphas = scheduler.alphas_cumprod
            snr = alphas[t] / (1 - alphas[t])
            per = per * (torch.clamp(snr, max=config.min_snr_gamma) / (snr + 1))
        return per.mean()


def main(argv: list[str] | None = None) -> int:
    """``python -m erasekit.world.ip_adapter --out DIR``: train and save the ShapesWorld IP-Adapter."""
    parser = argparse.ArgumentParser(
        prog="python -m erasekit.world.ip_adapter", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", default=str(IP_ADAPTER_DIR), help="Folder for the adapter, encoder and recipe."
    )
    parser.add_argument("--model", default=None, help="Base pipeline folder (default: the shipped model).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it).")
    for f in dataclasses.fields(IPAdapterConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = IPAdapterConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(IPAdapterConfig)})

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    info = train_ip_adapter(config, model=args.model, out=args.out, log=log)
    info_cmd = "python -m erasekit.world.ip_adapter " + " ".join(sys.argv[1:] if argv is None else argv)
    info["command"] = info_cmd
    atomic_write(
        Path(args.out) / INFO_NAME, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    )
    print(json.dumps({"out": args.out, "evaluations": info["evaluations"][-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
