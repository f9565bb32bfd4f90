"""Stable Diffusion 1.x / 2.x backend: loading, encoding, one denoiser call, an explicit sampling loop.

The sampling loop is written out (DDIM, classifier-free guidance, one seeded generator per image) so
that every image depends only on its own prompt and seed — never on the batch it was generated in.
That is what makes evaluation resumable and shardable with identical numbers.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from erasekit.backends import _quiet  # noqa: F401  (before diffusers: silences an irrelevant warning)

# isort: split
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from torch import nn
from transformers.utils import logging as transformers_logging

from erasekit.backends.base import (
    DiffusionSurface,
    LinearInputs,
)
from erasekit.backends.targets import resolve_parameters
from erasekit.backends.tokenizer import check_tokenizer
from erasekit.errors import ErasekitError

_PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SDBackend(DiffusionSurface):
    """A Stable Diffusion pipeline seen through erasekit's method-facing surface.

    Args:
        pipe: A diffusers ``StableDiffusionPipeline`` (or any pipeline with the same components).
        name: How the user named the model (recorded in manifests).
    """

    kind = "sd"
    denoiser_name = "unet"
    closed_form_target = "cross_attn_kv"  # UCE's edit: the cross-attention K/V projections

    def __init__(self, pipe: StableDiffusionPipeline, name: str = "model"):
        self.pipe = pipe
        self.name = name
        self.tokenizer = check_tokenizer(pipe.tokenizer, f"tokenizer of {name}")
        self.unet, self.text_encoder, self.vae = pipe.unet, pipe.text_encoder, pipe.vae
        # The components artifacts and targets see. The VAE is not a target of any method.
        self.components: dict[str, nn.Module] = {"unet": self.unet, "text_encoder": self.text_encoder}
        for module in (self.unet, self.text_encoder, self.vae):
            module.requires_grad_(False)
            module.eval()
        self.train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type: str = self.train_scheduler.config.prediction_type
        self.num_train_timesteps: int = self.train_scheduler.config.num_train_timesteps
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.default_size = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.n_text_layers = int(self.text_encoder.config.num_hidden_layers)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        # IP-Adapter: where this model's adapter lives (the zoo sets it) and the loaded one, if any.
        self.image_adapter_source = None
        self.image_adapter = None

    # ---- prompts ---------------------------------------------------------------------------
    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids padded to the tokenizer's max length, [B, L]."""
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [B, L, D] used as cross-attention context.

        Gradients flow when called outside ``torch.no_grad`` (text-encoder methods need that).
        """
        return self.text_encoder(self.token_ids(prompts))[0]

    def denoiser_context(self, cond: torch.Tensor) -> torch.Tensor:
        """What the UNet reads as ``encoder_hidden_states`` for ``cond``: SD's conditioning is the context."""
        return cond

    def text_linear_inputs(self, prompts: Sequence[str], target: str) -> list[LinearInputs]:
        """The context rows every K/V projection of ``target`` reads for ``prompts`` (one stream)."""
        weights = {name: None for name in self.parameters_for(target) if name.endswith(".weight")}
        return [LinearInputs(self.encode_prompts(prompts), self.token_ids(prompts), weights)]

    def text_layer_module(self, layer: int) -> str:
        """Qualified name of text-encoder layer ``layer`` (its output is the residual stream)."""
        if not 0 <= layer < self.n_text_layers:
            raise ErasekitError(
                f"Text layer {layer} does not exist; this encoder has {self.n_text_layers} layers."
            )
        for prefix in ("text_encoder.text_model.encoder.layers", "text_encoder.encoder.layers"):
            name = f"{prefix}.{layer}"
            if name in self.named_modules():
                return name
        raise ErasekitError(
            "This text encoder has no CLIP-style encoder layers; ItD-style hooks need a CLIP text encoder."
        )

    # ---- denoiser ---------------------------------------------------------------------------
    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        image_scale: float = 1.0,
    ) -> torch.Tensor:
        """The UNet's native prediction (ε, or v for v-prediction models) for ``latents`` at ``t``.

        Linear combinations whose weights sum to one (CFG, ESD's target) mean the same in ε and v
        space at fixed x_t, so methods may combine predictions without converting. Inside
        :meth:`image_prompts`, ``image_tokens`` [B or 1, T, D] condition through the IP-Adapter at
        scale ``image_scale``; without them the call is text-only (zero tokens at scale 0).
        """
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=latents.device)
        t = t.to(latents.device).expand(latents.shape[0]) if t.numel() == 1 else t.to(latents.device)
        if self.image_adapter is not None:
            return self.image_adapter.predict(latents, t, cond, image_tokens, image_scale)
        if image_tokens is not None:
            raise ErasekitError(
                "image tokens need an IP-Adapter; call inside `with backend.image_prompts():`."
            )
        return self.unet(latents, t, encoder_hidden_states=cond).sample

    # ---- image prompts (IP-Adapter, backends/ip_adapter.py) ----------------------------------
    @contextmanager
    def image_prompts(self, source=None):
        """Load the model's IP-Adapter (``source``: a folder or installer; default ``image_adapter_source``)
        for the duration; yields the :class:`~erasekit.backends.ip_adapter.ImageAdapter` (image → tokens).

        Raises:
            ErasekitError: the model has no IP-Adapter and none was given.
        """
        from erasekit.backends.ip_adapter import ImageAdapter

        source = source if source is not None else self.image_adapter_source
        if source is None:
            raise ErasekitError(
                f"{self.name} has no IP-Adapter for image prompts; pass an adapter folder (diffusers IP-Adapter format)."
            )
        if self.image_adapter is not None:
            raise ErasekitError("an IP-Adapter is already loaded; nest no image_prompts() blocks.")
        self.image_adapter = ImageAdapter(self.pipe, source)
        try:
            yield self.image_adapter
        finally:
            self.image_adapter.unload()
            self.image_adapter = None

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0) of the model's training schedule."""
        return self.train_scheduler.add_noise(x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser was trained to output (ε or v) — the denoising loss's target."""
        if self.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(x0, noise, t)
        return noise

    # ---- images <-> latents -------------------------------------------------------------------
    def latent_shape(self, size: int | None = None) -> tuple[int, int, int]:
        side = (size or self.default_size) // self.vae_scale_factor
        return (int(self.unet.config.in_channels), side, side)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], [N, 3, H, W] -> scaled latents (posterior mean: deterministic)."""
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1], float32 on CPU."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    # ---- sampling -----------------------------------------------------------------------------
    def initial_latents(self, seeds: Sequence[int], size: int | None = None) -> torch.Tensor:
        """One independent seeded noise tensor per image (batch-composition independent)."""
        shape = self.latent_shape(size)
        return torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(self.device, self.dtype)

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler.timesteps

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
        image_tokens: torch.Tensor | None = None,
        image_scale: float = 1.0,
    ) -> torch.Tensor:
        """DDIM (η = 0) with classifier-free guidance, from step index ``start`` to ``stop``.

        ε̂ = ε(x, ∅) + w (ε(x, c) − ε(x, ∅))   (Ho & Salimans 2022). ``stop`` < ``steps`` returns a
        partially denoised x_t, as ESD and SPM need for their training latents. ``image_tokens``
        (inside :meth:`image_prompts`) condition the ε(x, c) branch only; ε(x, ∅) stays text-only.
        """
        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps[start:stop]:
            if uncond is None or guidance == 1.0:
                pred = self.predict_noise(latents, t, cond, image_tokens, image_scale)
            elif image_tokens is not None:
                pred_uncond = self.predict_noise(latents, t, uncond)
                pred_cond = self.predict_noise(latents, t, cond, image_tokens, image_scale)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            else:
                both = self.predict_noise(torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
                pred_uncond, pred_cond = both.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return latents

    # ---- targets ------------------------------------------------------------------------------
    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        """Parameters named by a target (``"cross_attn_kv"``, ``"text_mlp+text_attn_last"`` ...)."""
        return resolve_parameters(self.named_parameters(), target, self.n_text_layers)


# ---- loading -----------------------------------------------------------------------------------
def _from_folder(path: Path) -> StableDiffusionPipeline:
    if not (path / "model_index.json").is_file():
        raise ErasekitError(
            f"{path} is not a diffusers folder (no model_index.json); pass a pipeline folder or a .safetensors file."
        )
    if not sys.stderr.isatty():  # "Loading pipeline components..." only on a terminal
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # transformers 5's "Loading weights" bar
    try:
        return StableDiffusionPipeline.from_pretrained(
            path,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # An incomplete or foreign folder fails deep inside diffusers with any of these.
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ErasekitError(
            f"Could not load the diffusers folder {path} ({type(error).__name__}: {reason}); pass a complete Stable Diffusion pipeline folder."
        ) from error


def load_pipeline(model: str, *, allow_pickle: bool = False) -> StableDiffusionPipeline:
    """Load an SD 1.x/2.x pipeline from ``tiny``, a folder, a single file or a cached hub id.

    Never touches the network: hub ids load only from the local Hugging Face cache. Named models
    (``shapes``) are resolved by :mod:`erasekit.zoo` (``erasekit.zoo.load_pipeline``).
    """
    if model == "tiny":
        from erasekit.backends.tiny import build_tiny_pipeline

        return build_tiny_pipeline()
    path = Path(model).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES and not allow_pickle:
            raise ErasekitError(
                f"{path.name} is a pickled checkpoint that can run code when loaded; convert it to .safetensors or pass --allow-pickle if you trust it."
            )
        if path.suffix != ".safetensors" and path.suffix not in _PICKLE_SUFFIXES:
            raise ErasekitError(
                f"Unsupported model file {path.name}; pass a .safetensors checkpoint or a diffusers folder."
            )
        try:
            return StableDiffusionPipeline.from_single_file(
                os.fspath(path), safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
        except (OSError, ValueError) as error:
            raise ErasekitError(
                f"Could not load {path.name} offline ({type(error).__name__}); convert it to a diffusers folder on a connected machine and pass that folder."
            ) from error
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                model, safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
        except OSError as error:
            raise ErasekitError(
                f"{model} is not in the local Hugging Face cache; download it on a connected machine (`hf download {model}`) or pass a local folder."
            ) from error
        return pipe
    raise ErasekitError(
        f"Model {model!r} not found; pass a model name (`erasekit env` lists them), a diffusers folder, a .safetensors file or a cached hub id."
    )


def check_device(device: str) -> None:
    """Raise a one-line error unless ``device`` names a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ErasekitError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ErasekitError(
                f"Device {device} is not available (this torch {torch.__version__} sees {count} CUDA devices); use cpu."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ErasekitError("Device mps is not available on this machine; use cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ErasekitError(f"Device {device} is not supported; use cpu, cuda, cuda:N or mps.")


def load_backend(
    model: str,
    *,
    allow_pickle: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
) -> SDBackend:
    """Load a model (see :func:`load_pipeline`) and wrap it as a :class:`SDBackend` named ``name``.

    Named models and their data sources come from :func:`erasekit.zoo.load_model`.
    """
    check_device(device)
    pipe = load_pipeline(model, allow_pickle=allow_pickle)
    # Shipped weights may be stored in float16 (e.g. ShapesWorld's text encoder); compute in ``dtype``.
    parts = (pipe.unet, pipe.text_encoder, pipe.vae)
    if any(p.dtype != dtype or str(p.device) != device for p in parts):
        pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return SDBackend(pipe, name=name or model)
