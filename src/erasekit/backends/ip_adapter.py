"""IP-Adapter image prompts on an SD pipeline (Ye et al., arXiv 2308.06721): files, loading, one UNet call.

IP-Adapter's decoupled cross-attention (eq. 5)::

    Z = Attention(Q, K_text, V_text) + λ · Attention(Q, c_i W'_k, c_i W'_v)

with image tokens c_i = LayerNorm(W_proj · image_embeds) reshaped to 4 tokens. This module is the only
place that knows how diffusers stores and runs it, so that the same code serves the shipped ShapesWorld
adapter and a real SD1.5 + ``ip-adapter_sd15`` alike:

* files: ``<folder>/<weights>.safetensors`` with ``image_proj.{proj,norm}.*`` and
  ``ip_adapter.{1,3,5,…}.to_{k,v}_ip.weight`` (one odd id per cross-attention layer in
  ``unet.attn_processors`` order), and ``<folder>/image_encoder/`` (a ``CLIPVisionModelWithProjection``);
* loading: ``pipe.load_ip_adapter(folder, subfolder="", weight_name=…, image_encoder_folder=…,
  local_files_only=True)`` — offline, the stock path;
* calling: a text-only call through a UNet with the adapter loaded raises in diffusers (no
  ``image_embeds``), so :meth:`ImageAdapter.predict` always passes image tokens, zeros at scale 0
  for a text-only branch (bit-identical to the adapter-free UNet: λ·0 adds exactly 0). Tokens that
  are already in context space (Co-Erasing's refined ones) go in through a pass-through in place of
  ``encoder_hid_proj`` for the duration of the call — never by guessing from a tensor's width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from erasekit.errors import ErasekitError

NUM_TOKENS = 4  # diffusers' ImageProjection layout ("proj.weight") always makes 4 tokens
IMAGE_ENCODER_FOLDER = "image_encoder"


def cross_attention_processor_names(unet) -> list[str]:
    """The UNet's cross-attention processors in ``attn_processors`` order (diffusers' key order)."""
    return [n for n in unet.attn_processors if not n.endswith("attn1.processor")]


def initial_state_dict(
    unet, embed_dim: int, generator: torch.Generator
) -> dict[str, dict[str, torch.Tensor]]:
    """A fresh adapter ``{"image_proj": …, "ip_adapter": …}``: random projection, W'_k/W'_v = W_k/W_v.

    Initialising W'_k, W'_v from the text K/V projections is the original IP-Adapter's choice.
    """
    cross_dim = int(unet.config.cross_attention_dim)
    proj = torch.randn(NUM_TOKENS * cross_dim, embed_dim, generator=generator) / math.sqrt(embed_dim)
    image_proj = {
        "proj.weight": proj,
        "proj.bias": torch.zeros(NUM_TOKENS * cross_dim),
        "norm.weight": torch.ones(cross_dim),
        "norm.bias": torch.zeros(cross_dim),
    }
    modules = dict(unet.named_modules())
    ip = {}
    for i, name in enumerate(cross_attention_processor_names(unet)):
        attn = modules[name[: -len(".processor")]]
        ip[f"{2 * i + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        ip[f"{2 * i + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": ip}


def adapter_state_dict(unet) -> dict[str, dict[str, torch.Tensor]]:
    """Read a loaded adapter back out of a UNet into the file layout (inverse of ``load_ip_adapter``)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    image_proj = {
        "proj.weight": projection.image_embeds.weight,
        "proj.bias": projection.image_embeds.bias,
        "norm.weight": projection.norm.weight,
        "norm.bias": projection.norm.bias,
    }
    processors = unet.attn_processors
    ip = {}
    for i, name in enumerate(cross_attention_processor_names(unet)):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = processors[name].to_k_ip[0].weight
        ip[f"{2 * i + 1}.to_v_ip.weight"] = processors[name].to_v_ip[0].weight
    copy = {k: v.detach().clone().contiguous() for k, v in image_proj.items()}
    return {"image_proj": copy, "ip_adapter": {k: v.detach().clone().contiguous() for k, v in ip.items()}}


def adapter_parameters(unet) -> list[nn.Parameter]:
    """The trainable parameters of a loaded adapter (projection + every to_k_ip / to_v_ip)."""
    params = list(unet.encoder_hid_proj.parameters())
    processors = unet.attn_processors
    for name in cross_attention_processor_names(unet):
        params += list(processors[name].parameters())
    return params


def build_image_encoder(width: int, layers: int, embed_dim: int, image_size: int, patch_size: int = 4):
    """A freshly initialised small ``CLIPVisionModelWithProjection`` (what ``image_encoder/`` holds)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=embed_dim,
    )
    return CLIPVisionModelWithProjection(config)


def training_scheduler(pipe):
    """The DDPM scheduler of ``pipe``'s training schedule (add_noise / get_velocity)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def install_from_state(pipe, state: dict[str, dict[str, torch.Tensor]], encoder=None) -> None:
    """Load an adapter given as a state dict (and optionally an image encoder module) into ``pipe``."""
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    if encoder is not None:
        from transformers import CLIPImageProcessor

        size = int(encoder.config.image_size)
        pipe.register_modules(
            image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size)
        )


def install_from_folder(pipe, folder: str | Path, weight_name: str | None = None) -> None:
    """``pipe.load_ip_adapter`` on a local folder (offline); the weights file is found if not named.

    Raises:
        ErasekitError: no (or more than one candidate) ``*.safetensors`` adapter file in ``folder``.
    """
    folder = Path(folder)
    if weight_name is None:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(files) != 1:
            raise ErasekitError(
                f"{folder} needs exactly one IP-Adapter .safetensors file (found {len(files)}); pass the folder of one adapter."
            )
        weight_name = files[0]
    if not (folder / weight_name).is_file():
        raise ErasekitError(f"no IP-Adapter file {weight_name} in {folder}; pass an adapter folder.")
    encoder = IMAGE_ENCODER_FOLDER if (folder / IMAGE_ENCODER_FOLDER / "config.json").is_file() else None
    pipe.load_ip_adapter(
        str(folder),
        subfolder="",
        weight_name=weight_name,
        image_encoder_folder=encoder,
        local_files_only=True,
    )


class _GivenTokens(nn.Module):
    """Stands in for ``unet.encoder_hid_proj`` during one call: the tokens it is given are the tokens."""

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        return image_embeds


class ImageAdapter:
    """An IP-Adapter loaded into a pipeline: image → embedding → tokens, and the UNet call with tokens.

    Args:
        pipe: The pipeline (its UNet gets the IP processors until :meth:`unload`).
        source: An adapter folder, or a callable ``install(pipe)`` that loads one (tiny ones built in code).
    """

    def __init__(self, pipe, source: str | Path | Callable[[Any], None]):
        self.pipe = pipe
        self.unet = pipe.unet
        if callable(source):
            source(pipe)
        else:
            install_from_folder(pipe, source)
        self.projection = self.unet.encoder_hid_proj.image_projection_layers[0]
        self.processors = [self.unet.attn_processors[n] for n in cross_attention_processor_names(self.unet)]
        for module in (self.unet.encoder_hid_proj, *self.processors):
            module.requires_grad_(False)
        self.num_tokens = NUM_TOKENS
        self.context_dim = int(self.unet.config.cross_attention_dim)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Image-encoder embeddings [N, E] of images [N, 3, H, W] in [0, 1], prepared as the pipeline does.

        Raises:
            ErasekitError: the adapter came without an image encoder.
        """
        encoder = getattr(self.pipe, "image_encoder", None)
        if encoder is None or getattr(self.pipe, "feature_extractor", None) is None:
            raise ErasekitError(
                "this IP-Adapter has no image encoder; load an adapter folder with image_encoder/."
            )
        from PIL import Image

        pil = [
            Image.fromarray((x.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy())
            for x in images
        ]
        pixels = self.pipe.feature_extractor(pil, return_tensors="pt").pixel_values
        with torch.no_grad():
            return encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds.to(self.unet.dtype)

    def tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """Image tokens [N, 4, D] (context space) from embeddings [N, E]: the adapter's projection."""
        return self.projection(embeds.to(self.unet.dtype))

    def zero_tokens(self, batch: int) -> torch.Tensor:
        return torch.zeros(
            batch, self.num_tokens, self.context_dim, device=self.unet.device, dtype=self.unet.dtype
        )

    def predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        tokens: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """The UNet's output with image tokens [B or 1, T, D] at image scale λ (None: zeros at λ = 0)."""
        if tokens is None:
            tokens, scale = self.zero_tokens(latents.shape[0]), 0.0
        if tokens.shape[0] == 1 and latents.shape[0] > 1:
            tokens = tokens.expand(latents.shape[0], -1, -1)
        for processor in self.processors:
            processor.scale = [float(scale)]
        projection = self.unet.encoder_hid_proj
        self.unet.encoder_hid_proj = _GivenTokens()
        try:
            return self.unet(
                latents, t, encoder_hidden_states=cond, added_cond_kwargs={"image_embeds": [tokens]}
            ).sample
        finally:
            self.unet.encoder_hid_proj = projection
            for processor in self.processors:
                processor.scale = [1.0]

    def unload(self) -> None:
        """Remove the adapter: the UNet's processors return to the default ones."""
        self.pipe.unload_ip_adapter()


def random_adapter_installer(
    seed: int = 0, embed_dim: int = 16, image_size: int = 16
) -> Callable[[Any], None]:
    """An installer for a random, seeded adapter + image encoder built in code (tests, the ``tiny`` model)."""

    def install(pipe) -> None:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        encoder = build_image_encoder(16, 1, embed_dim, image_size).eval()
        install_from_state(pipe, initial_state_dict(pipe.unet, embed_dim, generator), encoder)

    return install
