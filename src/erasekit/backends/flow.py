"""SD3 / SD3.5 and FLUX backends: MMDiT transformers trained by rectified flow, CLIP + T5 text.

**Conditioning** (read in diffusers 0.42.1, ``pipeline_stable_diffusion_3.py`` ``encode_prompt`` and
``pipeline_flux.py`` ``encode_prompt``, reproduced here):

* SD3: context = [ pad(CLIP-L ⊕ CLIP-G penultimate states, to the T5 width) ; T5 states ] along the
  sequence (77 + 256 tokens at the pipeline's default ``max_sequence_length``), pooled = CLIP-L ⊕
  CLIP-G projected pooled vectors (2048).
* FLUX: context = T5 states (512 tokens by default), pooled = CLIP-L's pooler output (768); latents
  are packed 2×2 into tokens inside :meth:`FlowBackend.predict_noise` (methods see [B, C, H, W]), and
  FLUX.1-dev's distilled guidance enters as the ``guidance`` embedding: no classifier-free batch
  (``denoise`` ignores ``uncond``, as ``FluxPipeline`` does at ``true_cfg_scale`` 1).

Methods get the packed conditioning of :mod:`erasekit.backends.families` ([B, L + r, D]).

**Flow matching** (Lipman et al. 2023; Esser et al. 2024, arXiv 2403.03206, eq. 1-3): x_t = (1 − σ) x_0
+ σ ε with σ = t / 1000, and the transformer predicts the velocity v = ε − x_0
(``prediction_type = "flow"``). ``add_noise`` and ``training_target`` are that pair, not DDPM's;
``sampling_timesteps``/``denoise`` use ``FlowMatchEulerDiscreteScheduler`` with the pipeline's own
sigma schedule (FLUX: ``linspace(1, 1/steps)`` with the resolution-dependent shift μ). ESD's and SPM's
targets are weighted sums of predictions whose weights sum to one; at fixed x_t the velocity is an
affine function of the ε-prediction (v = (ε̂ − x_t) / (1 − σ)), so those sums mean the same here.

**Targets and what "cross-attention K/V" means** in joint attention: see
:mod:`erasekit.backends.family_targets` (``cross_attn_kv`` = the dual-stream blocks'
``add_{k,v}_proj``; SD3.5's ``attn2`` is image self-attention; UCE's closed form edits
``text_projections`` = ``context_embedder`` + the pooled ``text_embedder``).

**Refused:** ItD (its SAE hook sits on one CLIP encoder's token states, but these models read the
prompt mainly through T5) — :meth:`FlowBackend.text_layer_module` raises a one-line ErasekitError.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from erasekit.backends import _quiet  # noqa: F401

# isort: split
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from torch import nn

from erasekit.backends.base import (
    DiffusionSurface,
    LinearInputs,
)
from erasekit.backends.families import pack, unpack
from erasekit.backends.family_targets import FLOW_TARGETS, resolve_family_parameters
from erasekit.backends.tokenizer import check_tokenizer
from erasekit.errors import ErasekitError

# The pipelines' default T5 lengths (StableDiffusion3Pipeline / FluxPipeline ``max_sequence_length``).
T5_LENGTH = {"sd3": 256, "flux": 512}
FLUX_DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default


def _calculate_shift(seq_len: int, config) -> float:
    """μ of the resolution-dependent shift (diffusers ``calculate_shift``; Esser et al. Sec. 5.3.2)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * slope + base_shift - slope * base_len


class FlowBackend(DiffusionSurface):
    """A ``StableDiffusion3Pipeline`` (family ``sd3``) or ``FluxPipeline`` (``flux``) for methods.

    Args:
        pipe: The stock diffusers pipeline.
        family: ``"sd3"`` or ``"flux"``.
        name: How the user named the model (recorded in manifests).
        max_sequence_length: T5 tokens (default: the pipeline's default, 256 for SD3, 512 for FLUX).
    """

    denoiser_name = "transformer"
    closed_form_target = "text_projections"
    prediction_type = "flow"

    def __init__(self, pipe, family: str, name: str = "model", max_sequence_length: int | None = None):
        if family not in T5_LENGTH:
            raise ErasekitError(f"Unknown flow family {family!r}; use sd3 or flux.")
        self.pipe, self.kind, self.name = pipe, family, name
        self.negative_branch = family == "sd3"  # FLUX embeds its (distilled) guidance: no negative prompt
        self.t5_length = max_sequence_length or T5_LENGTH[family]
        self.transformer, self.vae = pipe.transformer, pipe.vae
        self.tokenizer = check_tokenizer(pipe.tokenizer, f"tokenizer of {name}")
        if family == "sd3":
            names = ("text_encoder", "text_encoder_2", "text_encoder_3")
            self.tokenizer_2 = check_tokenizer(pipe.tokenizer_2, f"tokenizer_2 of {name}")
            self.t5_tokenizer = pipe.tokenizer_3
        else:
            names = ("text_encoder", "text_encoder_2")
            self.t5_tokenizer = pipe.tokenizer_2
        encoders = {n: getattr(pipe, n, None) for n in names}
        missing = [n for n, e in encoders.items() if e is None]
        if missing:
            raise ErasekitError(
                f"This {family} pipeline has no {missing[0]}; pass a pipeline with all its text encoders."
            )
        self.t5 = encoders[names[-1]]
        self.components: dict[str, nn.Module] = {"transformer": self.transformer, **encoders}
        for module in (*self.components.values(), self.vae):
            module.requires_grad_(False)
            module.eval()
        self.text_encoder = encoders["text_encoder"]
        self.n_text_layers = int(self.text_encoder.config.num_hidden_layers)
        self.text_layers = {
            n: int(getattr(e.config, "num_hidden_layers", None) or e.config.num_layers)
            for n, e in encoders.items()
        }
        self.num_train_timesteps: int = int(pipe.scheduler.config.num_train_timesteps)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        config = self.transformer.config
        if family == "sd3":
            self.latent_channels = int(config.in_channels)
            self.default_size = int(config.sample_size) * self.vae_scale_factor
            self.pooled_dim = int(config.pooled_projection_dim)
        else:
            self.latent_channels = int(config.in_channels) // 4
            self.default_size = int(self.vae.config.sample_size)
            self.pooled_dim = int(config.pooled_projection_dim)
        self.device, self.dtype = self.transformer.device, self.transformer.dtype

    # ---- prompts ---------------------------------------------------------------------------
    def _ids(self, tokenizer, prompts: Sequence[str], length: int) -> torch.Tensor:
        return tokenizer(
            list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """The first CLIP tokenizer's padded ids [B, L] (start token first)."""
        return self._ids(self.tokenizer, prompts, self.tokenizer.model_max_length)

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, L, D], pooled [B, P]) exactly as the stock pipeline's ``encode_prompt``."""
        clip_length = self.tokenizer.model_max_length  # both pipelines use tokenizer 1's length
        t5_states = self.t5(self._ids(self.t5_tokenizer, prompts, self.t5_length))[0]
        if self.kind == "flux":
            pooled = self.text_encoder(self.token_ids(prompts), output_hidden_states=False).pooler_output
            return t5_states, pooled
        states, pooled = [], []
        for tokenizer, encoder in (
            (self.tokenizer, self.components["text_encoder"]),
            (self.tokenizer_2, self.components["text_encoder_2"]),
        ):
            out = encoder(self._ids(tokenizer, prompts, clip_length), output_hidden_states=True)
            pooled.append(out[0])
            states.append(out.hidden_states[-2])
        clip = torch.cat(states, dim=-1)
        if clip.shape[-1] > t5_states.shape[-1]:
            raise ErasekitError(
                f"The CLIP features ({clip.shape[-1]}) are wider than T5's ({t5_states.shape[-1]}); the pipeline would truncate them. Use a T5 at least as wide."
            )
        clip = torch.nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5_states], dim=-2), torch.cat(pooled, dim=-1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Packed conditioning [B, L + r, D]: the transformer's context, then the pooled vector."""
        context, pooled = self._encode(prompts)
        return pack(context, pooled)

    def denoiser_context(self, cond: torch.Tensor) -> torch.Tensor:
        """What the transformer reads as ``encoder_hidden_states`` for ``cond``."""
        return unpack(cond, self.pooled_dim)[0]

    def text_linear_inputs(self, prompts: Sequence[str], target: str) -> list[LinearInputs]:
        """Streams of the closed-form text layers: the context (``context_embedder``) and the pooled
        vector (``time_text_embed.text_embedder.linear_1``). The context mixes encoders (SD3) or is T5
        (no start token), so it carries no CLIP token ids."""
        params = self.parameters_for(target)
        context, pooled = self._encode(prompts)
        streams = {
            "context": LinearInputs(context, None, {}, "context"),
            "pooled": LinearInputs(pooled[:, None], None, {}, "pooled"),
        }
        for pname in params:
            if pname == "transformer.context_embedder.weight":
                streams["context"].weights[pname] = None
            elif pname == "transformer.time_text_embed.text_embedder.linear_1.weight":
                streams["pooled"].weights[pname] = None
            else:
                raise ErasekitError(
                    f"{pname} does not read text alone (joint-attention inputs depend on the timestep); a closed-form edit takes text_projections only."
                )
        return [s for s in streams.values() if s.weights]

    def text_layer_module(self, layer: int) -> str:
        raise ErasekitError(
            f"ItD hooks one CLIP encoder's token states, but {self.kind} reads the prompt mainly through T5; use uce, esd, fewshot or spm on this model."
        )

    # ---- denoiser ---------------------------------------------------------------------------
    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity v̂ ≈ ε − x_0 at ``latents`` [B, C, H, W] and timestep t = 1000 σ."""
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=latents.device)
        batch = latents.shape[0]
        t = t.to(latents.device, torch.float32)
        t = t.expand(batch) if t.numel() == 1 else t.reshape(batch)
        context, pooled = unpack(cond, self.pooled_dim)
        if self.kind == "sd3":
            return self.transformer(
                hidden_states=latents,
                timestep=t.to(latents.dtype),
                encoder_hidden_states=context,
                pooled_projections=pooled,
            ).sample
        height, width = latents.shape[-2:]
        packed = FluxPipeline._pack_latents(latents, batch, latents.shape[1], height, width)
        img_ids = FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, latents.device, latents.dtype
        )
        txt_ids = torch.zeros(context.shape[1], 3, device=latents.device, dtype=latents.dtype)
        embedded = None
        if self.transformer.config.guidance_embeds:
            value = FLUX_DEFAULT_GUIDANCE if guidance is None else guidance
            embedded = torch.full((batch,), float(value), device=latents.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed,
            timestep=(t / 1000).to(latents.dtype),
            guidance=embedded,
            pooled_projections=pooled,
            encoder_hidden_states=context,
            txt_ids=txt_ids,
            img_ids=img_ids,
        ).sample
        scale = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, height * scale, width * scale, scale)

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(t, device=like.device).float() / self.num_train_timesteps
        return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rectified-flow interpolation x_t = (1 − σ) x_0 + σ ε, σ = t / 1000."""
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ε − x_0 the transformer was trained to predict (SD3 eq. / FLUX)."""
        return noise - x0

    # ---- images <-> latents -------------------------------------------------------------------
    def latent_shape(self, size: int | None = None) -> tuple[int, int, int]:
        side = (size or self.default_size) // self.vae_scale_factor
        if self.kind == "flux":
            side = 2 * (side // 2)  # packing needs an even side
        return (self.latent_channels, side, side)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        config = self.vae.config
        return (self.vae.encode(x).latent_dist.mean - (config.shift_factor or 0.0)) * config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        x = self.vae.decode(
            latents.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        ).sample
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    # ---- sampling -----------------------------------------------------------------------------
    def initial_latents(self, seeds: Sequence[int], size: int | None = None) -> torch.Tensor:
        shape = self.latent_shape(size)
        return torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(self.device, self.dtype)

    def _scheduler(self, steps: int, size: int | None = None) -> FlowMatchEulerDiscreteScheduler:
        """The pipeline's schedule for ``steps`` at image side ``size`` (the shift μ depends on it)."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        side = self.latent_shape(size)[-1]
        patch = 2 if self.kind == "flux" else int(self.transformer.config.patch_size)
        mu = _calculate_shift((side // patch) ** 2, scheduler.config)
        if self.kind == "flux":
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        elif scheduler.config.get("use_dynamic_shifting", False):
            scheduler.set_timesteps(steps, mu=mu)
        else:
            scheduler.set_timesteps(steps)
        return scheduler

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """The schedule's timesteps at the default image size. With a resolution-dependent shift
        (FLUX.1's ``use_dynamic_shifting``) another size has other timesteps: ESD/SPM at a
        non-default ``resolution`` then read t from the default size's schedule (known limit)."""
        return self._scheduler(steps).timesteps

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        *,
        steps: int,
        guidance: float,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Euler steps of the flow ODE from step ``start`` to ``stop``; SD3 with classifier-free guidance,
        FLUX with ``guidance`` as its embedded (distilled) guidance."""
        scheduler = self._scheduler(steps, latents.shape[-1] * self.vae_scale_factor)
        scheduler.set_begin_index(start)
        for t in scheduler.timesteps[start:stop]:
            if self.kind == "flux":
                pred = self.predict_noise(latents, t, cond, guidance=guidance)
            elif uncond is None or guidance == 1.0:
                pred = self.predict_noise(latents, t, cond)
            else:
                both = self.predict_noise(torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
                pred_uncond, pred_cond = both.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return latents

    # ---- targets ------------------------------------------------------------------------------
    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        """Parameters named by a target (:mod:`erasekit.backends.family_targets`)."""
        return resolve_family_parameters(self.named_parameters(), target, FLOW_TARGETS, self.text_layers)
