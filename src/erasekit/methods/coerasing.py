"""Co-Erasing: erase a concept from text *and* image prompts (Li et al., "One Image is Worth a Thousand
Words: A Usability-Preservable Text-Image Collaborative Erasing Framework", ICML 2025, arXiv 2505.11131;
code Ferry-Li/Co-Erasing).

A text-only eraser leaves the image path open: an image of the concept given through an IP-Adapter
(decoupled cross-attention, Ye et al. 2023) still makes the model draw it. Co-Erasing therefore runs
two stages:

1. **Text stage.** A text eraser (the paper: ESD; here erasekit's :class:`~erasekit.methods.esd.ESD`,
   or any erasekit weight-editing method's artifact given as ``text_artifact``) gives θ₁.
2. **Image stage.** Starting from θ₁, with θ₁ also the frozen teacher θ*, the ESD objective is
   conditioned on the text *and* image tokens v of concept images::

       L = ‖ ε_θ(x_t, t, [c; v]) − ( ε_θ*(x_t, t, u) − η (ε_θ*(x_t, t, [c; v]) − ε_θ*(x_t, t, u)) ) ‖²

   with u the empty prompt (text only: ``uncond=text``, the public code's ``--text_uncond``) or
   ["" ; v] (``uncond=image``). x_t is the latent after k of ``ddim_steps`` DDIM steps from seeded
   noise under the concept prompt, then blurred by a Gaussian of kernel size ``blur_factor`` (the
   paper's blur factor; σ = 0.3((k − 1)/2 − 1) + 0.8, torchvision's default for that kernel).

**Text-guided image concept refinement** (the paper's Sec. 3.3): the image tokens are re-expressed
through the concept prompt's token embeddings E ∈ R^{L×d}::

    v ← softmax(v Eᵀ / √d) E

so each refined token is a convex combination of the prompt's embeddings (it keeps what the image
shares with the concept's text and drops the rest of the image). The public code computes the
transposed product (text queries over image tokens, L tokens out); we follow the paper's description
and the rows-of-E form. v = the adapter's projection of the image embedding (in context space); the
refined tokens enter the UNet through the backend's image-token call, not through the projection.

Differences from the public code, on purpose (its bugs, see ``benchmarks/README.md``): x_t comes from
the sampler run forwards at the timestep x_t is at (as :mod:`erasekit.methods.esd` does); every
text-only branch is a text-only call (zero image tokens at scale 0) — no EOS token is read as an
image token; the IP-Adapter itself is a frozen base asset (it is not trained: an eraser that edited
the adapter would be undone by loading the stock adapter); the artifact holds UNet deltas relative
to the base model (stage 1 + stage 2), so it loads into a plain UNet or a stock pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec
from erasekit.errors import ErasekitError
from erasekit.methods.base import require, require_no_anchor_or_preserve
from erasekit.methods.esd import ESD, VARIANT_TARGETS, ESDConfig, _Components, esd_target
from erasekit.methods.training import TrainedParameters


@dataclass(frozen=True)
class CoErasingConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, paper (the paper's values) or shapesworld (tuned on the shipped ShapesWorld model)."""
    variant: Literal["x", "u"] = "x"
    """Which UNet part both stages train: x (cross-attention, ESD-x) or u (everything else, ESD-u; the public code's noxattn)."""
    text_artifact: str = ""
    """Stage 1 from a file: an erasekit artifact (weight edits) of any text method for this model; empty = run erasekit's ESD (text_iterations, text_lr)."""
    text_iterations: int = 1000
    """Stage 1 (ESD) optimiser steps (paper: 1000)."""
    text_lr: float = 1e-5
    """Stage 1 (ESD) Adam learning rate (paper: 1e-5)."""
    iterations: int = 1000
    """Stage 2 (image) optimiser steps (paper: 1000; README stage B: 1500)."""
    lr: float = 1e-5
    """Stage 2 Adam learning rate (paper: 1e-5)."""
    eta: float = 1.0
    """η, the negative guidance of both stages (paper: 1.0)."""
    uncond: Literal["text", "image"] = "text"
    """Stage 2's unconditional branch: text (the empty prompt alone, text-only call; the public --text_uncond) or image (empty prompt + the image tokens)."""
    text_guide: bool = True
    """Refine image tokens through the concept prompt's embeddings: v ← softmax(v Eᵀ/√d) E."""
    blur_factor: int = 3
    """Gaussian blur kernel size applied to x_t in stage 2 (odd; 0 = off; public code default 3, README 5)."""
    images: int = 100
    """Concept images (rendered or sampled by the model's data source, else generated; paper: 100, README: 200)."""
    image_scale: float = 1.0
    """IP-Adapter scale λ of the image branch in stage 2."""
    start_guidance: float = 3.0
    """Classifier-free guidance while denoising to x_t (both stages)."""
    ddim_steps: int = 50
    """DDIM steps of the schedule from which x_t's step index is drawn (paper: 50)."""
    trajectory_model: Literal["trained", "original"] = "trained"
    """Which model denoises to x_t in stage 2: trained (the model being fine-tuned) or original (the stage-1 teacher)."""
    resolution: int = 0
    """Image side in pixels for the training latents (0 = the model's default size)."""

    def __post_init__(self) -> None:
        for name in ("text_iterations", "iterations", "images", "ddim_steps"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("lr", "text_lr"):
            value = getattr(self, name)
            require(value > 0 and math.isfinite(value), f"{name} must be a positive number, got {value}.")
        require(self.eta > 0, f"eta must be > 0, got {self.eta}.")
        require(
            self.blur_factor == 0 or (self.blur_factor >= 3 and self.blur_factor % 2 == 1),
            f"blur_factor is a Gaussian kernel size: 0 (off) or odd >= 3, got {self.blur_factor}.",
        )
        require(self.image_scale >= 0, f"image_scale must be >= 0, got {self.image_scale}.")
        require(self.start_guidance >= 1, f"start_guidance must be >= 1, got {self.start_guidance}.")
        require(self.resolution >= 0, f"resolution must be >= 0 (0 = model default), got {self.resolution}.")

    # paper: Sec. 4 / the public README (stage A ESD-u 1000 its, stage B 1500 its with 200 images and
    # blur 5; lr 1e-5, η 1, 50 DDIM steps). shapesworld: ESD's shapesworld preset for both stages.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "variant": "u",
            "text_iterations": 1000,
            "text_lr": 1e-5,
            "iterations": 1500,
            "lr": 1e-5,
            "eta": 1.0,
            "blur_factor": 5,
            "images": 200,
            "ddim_steps": 50,
            "start_guidance": 3.0,
        },
        "shapesworld": {
            "variant": "x",
            "text_iterations": 150,
            "text_lr": 1e-3,
            "iterations": 150,
            "lr": 1e-3,
            "eta": 1.0,
            "blur_factor": 3,
            "images": 32,
            "ddim_steps": 25,
            "start_guidance": 3.0,
        },
    }


# ---- the math (torch only) --------------------------------------------------------------------------
def refine_image_tokens(v: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """Text-guided refinement v ← softmax(v Eᵀ / √d) E (paper Sec. 3.3): rows are convex combinations of E.

    Args:
        v: Image tokens [B, T, d] (context space).
        prompt_embeddings: E, the concept prompt's token embeddings [B or 1, L, d].
    """
    d = v.shape[-1]
    weights = torch.softmax(v @ prompt_embeddings.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return weights @ prompt_embeddings


def gaussian_blur(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-channel Gaussian blur of [B, C, H, W] with torchvision's default σ for ``kernel_size`` (reflect pad)."""
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    taps = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    pad = kernel_size // 2
    y = nn.functional.pad(x, (pad, pad, 0, 0), mode="reflect")
    y = nn.functional.conv2d(y, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = nn.functional.pad(y, (0, 0, pad, pad), mode="reflect")
    return nn.functional.conv2d(y, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# ---- the method ---------------------------------------------------------------------------------------
class CoErasing:
    """Text stage (ESD or a given artifact), then the image-conditioned ESD loss through the IP-Adapter."""

    name: ClassVar[str] = "coerasing"
    paper: ClassVar[str] = (
        "Li et al., One Image is Worth a Thousand Words: A Usability-Preservable Text-Image "
        "Collaborative Erasing Framework, ICML 2025 (arXiv 2505.11131)"
    )
    takes_preserve: ClassVar[bool] = False
    config_cls: ClassVar[type] = CoErasingConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "text_iterations=2",
        "iterations=2",
        "ddim_steps=4",
        "images=2",
        "lr=1e-3",
        "text_lr=1e-3",
    )
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"]}

    def erase(
        self,
        backend: Any,
        concepts: ConceptSpec,
        config: CoErasingConfig,
        *,
        generator: torch.Generator | None = None,
    ) -> Artifact:
        require_no_anchor_or_preserve(concepts, "Co-Erasing")
        if not hasattr(backend, "image_prompts") or getattr(backend, "image_adapter_source", None) is None:
            raise ErasekitError(
                f"Co-Erasing needs image prompts: {getattr(backend, 'name', 'this model')} ({backend.kind}) has no IP-Adapter; "
                "use a model that ships one (--model shapes) or set backend.image_adapter_source to an adapter folder."
            )
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        images = self._concept_images(backend, concepts, config, generator)  # from the base model
        text = self._text_stage(backend, concepts, config, generator)
        # Resolve the trained parameters before the adapter is loaded (its to_k_ip/to_v_ip live under attn2).
        trained = backend.parameters_for(VARIANT_TARGETS[config.variant])
        stage1 = {n: w for n, (mode, w) in text.weight_edits.items()}
        named = backend.named_parameters()
        unknown = sorted(set(stage1) - set(named))
        if unknown:
            raise ErasekitError(
                f"the text-stage artifact edits {unknown[0]}, which this model lacks; use one made for it."
            )
        touched = {**{n: named[n] for n in stage1}, **trained}
        with TrainedParameters(touched) as run:
            with torch.no_grad():
                for n, (mode, w) in text.weight_edits.items():
                    named[n].copy_(named[n] + w if mode == "delta" else w)
            for n, p in touched.items():
                p.requires_grad_(n in trained)
            teacher_values = {n: trained[n].detach().clone() for n in trained}  # θ* = θ₁
            with backend.image_prompts() as adapter:
                losses = self._image_stage(
                    backend, adapter, concepts, config, trained, teacher_values, images, generator
                )
            artifact = run.delta_artifact(self.name)
        artifact.manifest["training"] = {
            "target": VARIANT_TARGETS[config.variant],
            "trained_parameters": int(sum(p.numel() for p in trained.values())),
            "text_stage": text.manifest.get("method", "esd"),
            "text_stage_loss": text.manifest.get("training", {}).get("loss"),
            "loss": losses,
        }
        return artifact

    def _text_stage(self, backend, concepts, config, generator) -> Artifact:
        """Stage 1: erasekit's ESD with this config's settings, or the given artifact (weight edits only)."""
        if config.text_artifact:
            text = Artifact.load(config.text_artifact)
            if text.manifest.get("adapters") or text.manifest.get("hooks"):
                raise ErasekitError(
                    "Co-Erasing's image stage fine-tunes weights; pass a text_artifact of a weight-editing method (esd, uce, fewshot, abo)."
                )
            return text
        esd = ESDConfig(
            variant=config.variant,
            iterations=config.text_iterations,
            lr=config.text_lr,
            eta=config.eta,
            start_guidance=config.start_guidance,
            ddim_steps=config.ddim_steps,
            resolution=config.resolution,
        )
        return ESD().erase(backend, concepts, esd, generator=generator)

    def _concept_images(self, backend, concepts, config, generator) -> list[torch.Tensor]:
        """Per target, ``images`` images of it: the data source's, else the model's own generations."""
        size = config.resolution or backend.default_size
        source = getattr(backend, "data_source", None)
        out = []
        for target in concepts.targets:
            got = source.concept_images(target.text, config.images, size, generator) if source else None
            if got is None:
                seeds = torch.randint(0, 2**31 - 1, (config.images,), generator=generator).tolist()
                with torch.no_grad():
                    got = (
                        backend.sample(
                            [target.text] * config.images,
                            seeds,
                            steps=config.ddim_steps,
                            guidance=config.start_guidance,
                        ),
                    )
            out.append(got[0])
        return out

    def _image_stage(
        self, backend, adapter, concepts, config, trained, teacher_values, images, generator
    ) -> list[float]:
        """Stage 2 (the loss in the module docstring) on ``trained`` in place; θ* = ``teacher_values``."""
        teacher = _Components(backend.components)

        def teacher_prediction(latents, t, cond, tokens=None):
            return torch.func.functional_call(
                teacher,
                teacher_values,
                (
                    lambda: backend.predict_noise(
                        latents, t, cond, image_tokens=tokens, image_scale=config.image_scale
                    ),
                ),
                strict=False,
            )

        with torch.no_grad():
            conds = [backend.encode_prompts([t.text]) for t in concepts.targets]
            uncond = backend.encode_prompts([""])
            embeds = [adapter.image_embeds(x) for x in images]
        timesteps = backend.sampling_timesteps(config.ddim_steps)
        optimizer = torch.optim.Adam(trained.values(), lr=config.lr)
        losses: list[float] = []
        for _ in tqdm(range(config.iterations), desc="Co-Erasing", disable=None):
            i = int(torch.randint(len(conds), (), generator=generator))
            j = int(torch.randint(len(embeds[i]), (), generator=generator))
            k = int(torch.randint(config.ddim_steps, (), generator=generator))
            seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
            cond = conds[i]
            with torch.no_grad():
                v = adapter.tokens(embeds[i][j : j + 1])  # [1, 4, d]
                if config.text_guide:
                    v = refine_image_tokens(v, cond)
                start = backend.initial_latents([seed], size=config.resolution or None)

                def trajectory(start=start, cond=cond, k=k):
                    return backend.denoise(
                        start, cond, uncond, steps=config.ddim_steps, guidance=config.start_guidance, stop=k
                    )

                if config.trajectory_model == "original":
                    x_t = torch.func.functional_call(teacher, teacher_values, (trajectory,), strict=False)
                else:
                    x_t = trajectory()
                if config.blur_factor:
                    x_t = gaussian_blur(x_t, config.blur_factor)
                t = timesteps[k]
                eps_concept = teacher_prediction(x_t, t, cond, v)
                eps_uncond = teacher_prediction(x_t, t, uncond, v if config.uncond == "image" else None)
                target = esd_target(eps_uncond, eps_concept, config.eta)
            prediction = backend.predict_noise(x_t, t, cond, image_tokens=v, image_scale=config.image_scale)
            loss = nn.functional.mse_loss(prediction.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses
