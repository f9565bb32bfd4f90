"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345).

Fine-tunes the denoiser θ so that, conditioned on the concept c, it predicts what the frozen original
θ* predicts when guided *away* from c (eq. 2/3, negative guidance η)::

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

trained with the MSE between the two sides. Each iteration draws a DDIM step index k at random,
makes x_t by denoising seeded noise for k of ``ddim_steps`` steps with the *current* model under the
concept prompt (classifier-free guidance ``start_guidance``), and evaluates at the timestep x_t is
actually at (the reference code re-draws t from the mirrored interval; we use the matching one).
ESD-x trains the cross-attention (target ``cross_attn``), ESD-u everything else in the UNet
(``unet_non_cross``). Adam, lr 1e-5, 1000 iterations in the paper.

The frozen teacher costs no second UNet. Training updates the backend's own parameters in place
(only the targeted ones require grad) and keeps a clone of just those parameters' original values;
teacher predictions run the same modules through :func:`torch.func.functional_call` with the
originals substituted for the trained tensors. At the end (``finally``, also on error) the originals
are copied back, so the caller's model is bit-identical to before; the artifact holds the deltas.
Memory beyond the model: originals, gradients and two Adam moments of the trained parameters only.
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
from erasekit.methods.base import require

VARIANT_TARGETS = {"x": "cross_attn", "u": "unet_non_cross"}


@dataclass(frozen=True)
class ESDConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, or another name listed by `erasekit methods` (paper: the paper's / reference code's values; shapesworld: tuned on the shipped ShapesWorld model)."""
    variant: Literal["x", "u"] = "x"
    """ESD-x (train cross-attention: erases a prompt-bound concept, e.g. a style) or ESD-u (train the rest of the UNet: erases a concept globally, e.g. nudity)."""
    iterations: int = 1000
    """Optimiser steps (paper: 1000)."""
    lr: float = 1e-5
    """Adam learning rate (paper: 1e-5)."""
    negative_guidance: float = 1.0
    """η in eq. 3: how far the target is pushed away from the concept (paper: 1.0)."""
    start_guidance: float = 3.0
    """Classifier-free guidance scale used while denoising to the training latent x_t (reference: 3)."""
    ddim_steps: int = 50
    """DDIM steps of the schedule from which x_t's step index k is drawn (reference: 50)."""
    resolution: int = 0
    """Image side in pixels for the training latents (0 = the model's default size)."""

    def __post_init__(self) -> None:
        require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}.")
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}.")
        require(
            self.negative_guidance > 0, f"negative_guidance (η) must be > 0, got {self.negative_guidance}."
        )
        require(self.start_guidance >= 1, f"start_guidance must be >= 1, got {self.start_guidance}.")
        require(self.ddim_steps >= 1, f"ddim_steps must be >= 1, got {self.ddim_steps}.")
        require(self.resolution >= 0, f"resolution must be >= 0 (0 = model default), got {self.resolution}.")


# ---- the math (torch only) --------------------------------------------------------------------------
def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)] — the right-hand side of eq. 3.

    The weights sum to one, so the same line serves ε- and v-prediction models.
    """
    return eps_uncond - negative_guidance * (eps_concept - eps_uncond)


class _Components(nn.ModuleDict):
    """The backend's components under their qualified-name prefixes, so ``functional_call`` can swap
    parameters named ``unet.…`` for the duration of any backend call (holds references, no copies)."""

    def forward(self, call):  # noqa: D102 - runs ``call`` with the substituted parameters
        return call()


class ESD:
    """Erased Stable Diffusion: fine-tune the UNet towards negatively guided predictions."""

    name: ClassVar[str] = "esd"
    paper: ClassVar[str] = (
        "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023 (arXiv 2303.07345)"
    )
    config_cls: ClassVar[type] = ESDConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = ("iterations=2", "ddim_steps=4", "lr=1e-3")
    # ConceptSpec.from_lists arguments for the conformance suite: ESD takes no anchor or preserve set.
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"]}

    def erase(self, backend: Any, concepts: ConceptSpec, config: ESDConfig) -> Artifact:
        if any(t.anchor is not None for t in concepts.targets):
            raise ErasekitError(
                "ESD erases towards the unconditional prediction and takes no anchor; drop --anchor (or use uce)."
            )
        if concepts.preserve:
            raise ErasekitError("ESD has no preserve set in its objective; drop --preserve (or use uce).")
        # Everything random comes from one generator seeded from torch's global RNG (seeded by the runner).
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        trained = backend.parameters_for(VARIANT_TARGETS[config.variant])
        originals = {name: p.detach().clone() for name, p in trained.items()}  # θ* of the trained part only
        teacher = _Components(backend.components)

        def original_prediction(latents, t, cond):
            return torch.func.functional_call(
                teacher, originals, (lambda: backend.predict_noise(latents, t, cond),), strict=False
            )

        with torch.no_grad():
            concept_conds = [backend.encode_prompts([t.text]) for t in concepts.targets]
            uncond = backend.encode_prompts([""])
        timesteps = backend.sampling_timesteps(config.ddim_steps)
        losses: list[float] = []
        try:
            for param in trained.values():
                param.requires_grad_(True)
            optimizer = torch.optim.Adam(trained.values(), lr=config.lr)
            for _ in tqdm(range(config.iterations), desc="ESD", disable=None):
                cond = concept_conds[int(torch.randint(len(concept_conds), (), generator=generator))]
                k = int(torch.randint(config.ddim_steps, (), generator=generator))  # DDIM step index
                seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
                with torch.no_grad():
                    start = backend.initial_latents([seed], size=config.resolution or None)
                    # x_t from the current model θ, guided towards the concept (denoise is no_grad)
                    x_t = backend.denoise(
                        start, cond, uncond, steps=config.ddim_steps, guidance=config.start_guidance, stop=k
                    )
                    t = timesteps[k]  # the noise level x_t is at after k DDIM steps
                    # θ*'s unconditional and concept predictions in one batch of two
                    eps_uncond, eps_concept = original_prediction(
                        torch.cat([x_t, x_t]), t, torch.cat([uncond, cond])
                    ).chunk(2)
                    target = esd_target(eps_uncond, eps_concept, config.negative_guidance)
                prediction = backend.predict_noise(x_t, t, cond)  # ε_θ(x_t, c, t), with grad
                loss = nn.functional.mse_loss(prediction.float(), target.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            artifact = Artifact(self.name)
            with torch.no_grad():
                for name, param in trained.items():
                    artifact.add_weight(name, param.detach() - originals[name], mode="delta")
        finally:
            with torch.no_grad():
                for name, param in trained.items():
                    param.requires_grad_(False)
                    param.grad = None
                    param.copy_(originals[name])
        artifact.manifest["training"] = {
            "target": VARIANT_TARGETS[config.variant],
            "trained_parameters": int(sum(p.numel() for p in trained.values())),
            "loss": losses,
        }
        return artifact
