"""Stable Diffusion XL backend: two CLIP encoders, pooled ``text_embeds`` and time-id conditioning.

SDXL (Podell et al. 2023, arXiv 2307.01952, Sec. 2.1-2.2) conditions its UNet on the penultimate
hidden states of CLIP ViT-L and OpenCLIP ViT-bigG concatenated (768 + 1280 = 2048 per token), read by
every ``attn2.to_k/to_v``, *and* on the pooled, projected bigG embedding ``text_embeds`` (1280)
concatenated with the Fourier-embedded time ids (original size, crop, target size), read by
``add_embedding.linear_1``. This backend reproduces ``StableDiffusionXLPipeline.encode_prompt``
(penultimate states, pooled output of the first encoder whose first output is 2-D, i.e. the
projection model) and its ``added_cond_kwargs``; the conditioning it hands methods is packed
(:mod:`erasekit.backends.families`): [B, 77 + 1, 2048] with the pooled vector in the last row.

**UCE and the pooled path (decision).** The UCE reference edits only ``attn2.to_k/to_v`` on SDXL, so
the concept still reaches the UNet through the pooled ``text_embeds`` (a user reports UCE not erasing
"cat" on SDXL: unified-concept-editing#35). Here the closed-form target is
``cross_attn_kv+pooled_text``: the same eq. 7 solve is also applied to the ``text_embeds`` columns of
``add_embedding.linear_1`` (its time-id columns are left exactly as they are), with the pooled
embeddings of the erase, anchor and preserve prompts as the rows. ``-o`` settings of UCE apply to
both streams; the pooled stream has one position per prompt, so every ``tokens`` mode uses it.

**ItD** hooks a layer of ``text_encoder`` (CLIP-L) only: the CLIP-G half of the context and the pooled
vector are not edited, so a concept can leak through them (stated, not fixed). Because SDXL reads the
penultimate states, the hook sits at most at layer n − 3 (see ``n_text_layers``).

The unconditional prompt: methods encode ``""`` as text. The stock pipeline does the same when it is
given ``negative_prompt=""``; without a negative prompt and with ``force_zeros_for_empty_prompt``
(SDXL base's default) it uses zeros instead. Sampling here uses DDIM (as for SD); the stock pipeline's
Euler scheduler is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from erasekit.backends.base import LinearInputs
from erasekit.backends.families import pack, unpack
from erasekit.backends.family_targets import SDXL_TARGETS, resolve_family_parameters
from erasekit.backends.sd import SDBackend
from erasekit.backends.tokenizer import check_tokenizer
from erasekit.errors import ErasekitError


class SDXLBackend(SDBackend):
    """A ``StableDiffusionXLPipeline`` seen through erasekit's method-facing surface."""

    kind = "sdxl"
    denoiser_name = "unet"
    closed_form_target = "cross_attn_kv+pooled_text"

    def __init__(self, pipe, name: str = "model"):
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise ErasekitError(
                "This SDXL pipeline lacks a text encoder (a refiner?); pass a base SDXL pipeline with text_encoder and text_encoder_2."
            )
        super().__init__(pipe, name)
        self.tokenizer_2 = check_tokenizer(pipe.tokenizer_2, f"tokenizer_2 of {name}")
        self.text_encoder_2 = pipe.text_encoder_2
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        self.components["text_encoder_2"] = self.text_encoder_2
        self.pooled_dim = int(self.text_encoder_2.config.projection_dim)
        # SDXL reads the penultimate hidden states. transformers 5 records hidden states before a
        # forward hook edits a layer's output, so a hook (ItD) changes the context only from a layer
        # below the penultimate one: layer-hooking methods see layers 0 .. n - 3 of text_encoder.
        self.n_text_layers = int(self.text_encoder.config.num_hidden_layers) - 2
        if self.n_text_layers < 1:
            self.n_text_layers = 0
        self.text_layers = {
            "text_encoder": int(self.text_encoder.config.num_hidden_layers),
            "text_encoder_2": int(self.text_encoder_2.config.num_hidden_layers),
        }

    # ---- prompts ---------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, L, D1 + D2], pooled [B, P]) as ``StableDiffusionXLPipeline.encode_prompt``."""
        states, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenizer(
                list(prompts),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the projection model's text_embeds
                pooled = out[0]
            states.append(out.hidden_states[-2])
        if pooled is None:
            raise ErasekitError(
                "No SDXL text encoder gives a pooled embedding; text_encoder_2 must be CLIPTextModelWithProjection."
            )
        return torch.cat(states, dim=-1), pooled

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Packed conditioning [B, L + 1, 2048]: the concatenated context, then pooled ``text_embeds``."""
        context, pooled = self._encode(prompts)
        return pack(context, pooled)

    def denoiser_context(self, cond: torch.Tensor) -> torch.Tensor:
        return unpack(cond, self.pooled_dim)[0]

    def text_linear_inputs(self, prompts: Sequence[str], target: str) -> list[LinearInputs]:
        """Two streams: the context (``attn2.to_k/to_v``) and the pooled vector (``add_embedding.linear_1``'s text columns)."""
        params = self.parameters_for(target)
        context, pooled = self._encode(prompts)
        streams = {
            "context": LinearInputs(context, self.token_ids(prompts), {}, "context"),
            "pooled": LinearInputs(pooled[:, None], None, {}, "pooled"),
        }
        for pname in params:
            if pname.endswith((".attn2.to_k.weight", ".attn2.to_v.weight")):
                streams["context"].weights[pname] = None
            elif pname == "unet.add_embedding.linear_1.weight":
                streams["pooled"].weights[pname] = (0, self.pooled_dim)  # text_embeds come first
            else:
                raise ErasekitError(
                    f"{pname} does not read the text conditioning linearly; a closed-form edit takes cross_attn_kv and pooled_text only."
                )
        return [s for s in streams.values() if s.weights]

    # ---- denoiser ---------------------------------------------------------------------------
    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """(original size, crop top-left, target size) for an uncropped image of the latents' size."""
        height, width = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=latents.dtype, device=latents.device)
        return ids.expand(latents.shape[0], 6)

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        image_scale: float = 1.0,
    ) -> torch.Tensor:
        """The UNet's prediction for packed ``cond`` (context + pooled) with SDXL's added conditioning."""
        if image_tokens is not None:
            raise ErasekitError(
                "Image prompts (IP-Adapter) are supported on SD 1.x/2.x models only, not on SDXL yet."
            )
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=latents.device)
        t = t.to(latents.device).expand(latents.shape[0]) if t.numel() == 1 else t.to(latents.device)
        context, pooled = unpack(cond, self.pooled_dim)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(latents)}
        return self.unet(latents, t, encoder_hidden_states=context, added_cond_kwargs=added).sample

    # ---- targets ------------------------------------------------------------------------------
    def text_layer_module(self, layer: int) -> str:
        if self.n_text_layers == 0:
            raise ErasekitError(
                "This SDXL text_encoder is too shallow for a layer hook to reach the UNet's context (it reads the penultimate layer); use uce, esd, fewshot or spm."
            )
        return super().text_layer_module(layer)

    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        """Parameters named by an SDXL target (:mod:`erasekit.backends.family_targets`)."""
        return resolve_family_parameters(self.named_parameters(), target, SDXL_TARGETS, self.text_layers)
