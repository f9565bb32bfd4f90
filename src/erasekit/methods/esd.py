"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345).

Fine-tunes the denoiser θ so that, conditioned on the concept c, it predicts what the frozen original
θ* predicts when guided *away* from c (eq. 2/3, negative guidance η)::

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

trained with the MSE between the two sides. ``eta`` is this η, the paper's negative guidance (paper:
1). The current reference script (``esd_sd.py``) writes the target as
ε_θ*(x_t, c, t) − g [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)], which is eq. 3 with η = g − 1: its
``--negative_guidance 2`` (the default) is the paper's η = 1, and the same number given to eq. 3
would be η = 2: at the start (θ = θ*) the loss is (1 + η)² ‖ε_c − ε_∅‖²/n, so 9/4 of the
intended one (measured: ``benchmarks/parity/esd.py``). ``eta_convention=reference`` takes the number
in the script's convention; the ``reference`` preset does that with the script's other defaults
(see :data:`ESDConfig.PRESETS`).

Each iteration draws a DDIM step index k at random, makes x_t by denoising seeded noise for k of
``ddim_steps`` steps under the concept prompt (classifier-free guidance ``start_guidance``) with the
model being trained (as the paper's CompVis code does; ``trajectory_model=original`` uses the frozen
θ*, as ``esd_sd.py`` does), and evaluates at the timestep x_t is actually at (the CompVis code
re-draws t from the mirrored interval; we use the matching one).
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
from erasekit.methods.base import require, require_no_anchor_or_preserve
from erasekit.methods.training import TrainedParameters

VARIANT_TARGETS = {"x": "cross_attn", "u": "unet_non_cross"}


@dataclass(frozen=True)
class ESDConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, paper (the paper's values), reference (esd_sd.py's defaults, η in its convention, x_t from the frozen model) or shapesworld (tuned on the shipped ShapesWorld model)."""
    variant: Literal["x", "u"] = "x"
    """ESD-x (train cross-attention: erases a prompt-bound concept, e.g. a style) or ESD-u (train the rest of the UNet: erases a concept globally, e.g. nudity)."""
    iterations: int = 1000
    """Optimiser steps (paper: 1000)."""
    lr: float = 1e-5
    """Adam learning rate (paper: 1e-5)."""
    eta: float = 1.0
    """η, the paper's negative guidance (eq. 3): the target is ε(x_t) − η (ε(x_t, c) − ε(x_t)) (paper: 1). In eta_convention=reference it is the reference script's --negative_guidance instead (esd_sd.py: ε(x_t, c) − η (ε(x_t, c) − ε(x_t)), i.e. the paper's η + 1; its default 2 is the paper's 1)."""
    eta_convention: Literal["paper", "reference"] = "paper"
    """Which convention eta is in: paper (eq. 3) or reference (esd_sd.py's --negative_guidance = paper η + 1)."""
    negative_guidance: float | None = None
    """Removed (it was the paper's η): write eta=N for an old erasekit value N, or eta=N eta_convention=reference for esd_sd.py's --negative_guidance N."""
    trajectory_model: Literal["trained", "original"] = "trained"
    """Which model denoises to the training latent x_t: trained (the model being fine-tuned, as the paper's code did) or original (the frozen θ*, as the current esd_sd.py does)."""
    start_guidance: float = 3.0
    """Classifier-free guidance scale used while denoising to the training latent x_t (reference: 3)."""
    ddim_steps: int = 50
    """DDIM steps of the schedule from which x_t's step index k is drawn (reference: 50)."""
    resolution: int = 0
    """Image side in pixels for the training latents (0 = the model's default size)."""

    def __post_init__(self) -> None:
        require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}.")
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}.")
        if self.negative_guidance is not None:
            raise ErasekitError(
                f"negative_guidance is now eta in the paper's convention: write -o eta={self.negative_guidance:g} "
                f"(same meaning as before), or -o eta={self.negative_guidance:g} -o eta_convention=reference if "
                "you copied esd_sd.py's --negative_guidance (= paper η + 1)."
            )
        require(self.paper_eta > 0, f"η must be > 0 in the paper's convention, got {self.paper_eta:g}.")
        require(self.start_guidance >= 1, f"start_guidance must be >= 1, got {self.start_guidance}.")
        require(self.ddim_steps >= 1, f"ddim_steps must be >= 1, got {self.ddim_steps}.")
        require(self.resolution >= 0, f"resolution must be >= 0 (0 = model default), got {self.resolution}.")

    @property
    def paper_eta(self) -> float:
        """η of eq. 3, whichever convention ``eta`` was given in (reference = paper η + 1)."""
        return paper_eta(self.eta, self.eta_convention)

    # Named presets (-o preset=NAME), applied under explicit settings. paper: the paper's settings
    # (Sec. 4: 1000 iterations, Adam lr 1e-5, η = 1, 50 DDIM steps, start guidance 3). reference: the
    # current reference script esd_sd.py's defaults (200 iterations, lr 5e-5, --negative_guidance 2 in
    # its own convention, x_t from the frozen model). shapesworld: tuned on the shipped model (the
    # benchmark's overrides: 150 iterations, lr 1e-3, 25 DDIM steps).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "iterations": 1000,
            "lr": 1e-5,
            "eta": 1.0,
            "eta_convention": "paper",
            "start_guidance": 3.0,
            "ddim_steps": 50,
            "trajectory_model": "trained",
        },
        "reference": {
            "iterations": 200,
            "lr": 5e-5,
            "eta": 2.0,
            "eta_convention": "reference",
            "start_guidance": 3.0,
            "ddim_steps": 50,
            "trajectory_model": "original",
        },
        "shapesworld": {
            "iterations": 150,
            "lr": 1e-3,
            "eta": 1.0,
            "eta_convention": "paper",
            "start_guidance": 3.0,
            "ddim_steps": 25,
            "trajectory_model": "trained",
        },
    }


# ---- the math (torch only) --------------------------------------------------------------------------
def paper_eta(eta: float, convention: str) -> float:
    """η of eq. 3 from a value in ``convention``: "paper" as is, "reference" (esd_sd.py) minus 1.

    esd_sd.py's target is ε(x_t, c) − g (ε(x_t, c) − ε(x_t)) = ε(x_t) − (g − 1)(ε(x_t, c) − ε(x_t)).
    """
    return eta - 1.0 if convention == "reference" else eta


def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)] — the right-hand side of eq. 3 (η: paper's).

    The weights sum to one, so the same line serves ε- and v-prediction models.
    """
    return eps_uncond - eta * (eps_concept - eps_uncond)


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
    # Its objective has no preserve term: run_method does not fill preserve concepts in for it.
    takes_preserve: ClassVar[bool] = False
    config_cls: ClassVar[type] = ESDConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = ("iterations=2", "ddim_steps=4", "lr=1e-3")
    # ConceptSpec.from_lists arguments for the conformance suite: ESD takes no anchor or preserve set.
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"]}

    def erase(
        self,
        backend: Any,
        concepts: ConceptSpec,
        config: ESDConfig,
        *,
        generator: torch.Generator | None = None,
    ) -> Artifact:
        require_no_anchor_or_preserve(concepts, "ESD", "uce")
        # Everything random comes from the run's generator (run_method seeds it with --seed).
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        trained = backend.parameters_for(VARIANT_TARGETS[config.variant])
        with TrainedParameters(trained) as run:
            losses = self._train(backend, concepts, config, trained, run.originals, generator)
            artifact = run.delta_artifact(self.name)
        artifact.manifest["training"] = {
            "target": VARIANT_TARGETS[config.variant],
            "trained_parameters": int(sum(p.numel() for p in trained.values())),
            "loss": losses,
        }
        return artifact

    def _train(self, backend, concepts, config, trained, originals, generator) -> list[float]:
        """The ESD loop (eq. 3) on ``trained`` in place; ``originals`` are θ* of the trained part."""
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
        optimizer = torch.optim.Adam(trained.values(), lr=config.lr)
        for _ in tqdm(range(config.iterations), desc="ESD", disable=None):
            cond = concept_conds[int(torch.randint(len(concept_conds), (), generator=generator))]
            k = int(torch.randint(config.ddim_steps, (), generator=generator))  # DDIM step index
            seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
            with torch.no_grad():
                start = backend.initial_latents([seed], size=config.resolution or None)

                # x_t guided towards the concept, from the current model θ or the frozen θ*
                def trajectory(start=start, cond=cond, k=k):
                    return backend.denoise(
                        start,
                        cond,
                        uncond,
                        steps=config.ddim_steps,
                        guidance=config.start_guidance,
                        stop=k,
                    )

                if config.trajectory_model == "original":
                    x_t = torch.func.functional_call(teacher, originals, (trajectory,), strict=False)
                else:
                    x_t = trajectory()
                t = timesteps[k]  # the noise level x_t is at after k DDIM steps
                # θ*'s unconditional and concept predictions in one batch of two
                eps_uncond, eps_concept = original_prediction(
                    torch.cat([x_t, x_t]), t, torch.cat([uncond, cond])
                ).chunk(2)
                target = esd_target(eps_uncond, eps_concept, config.paper_eta)
            prediction = backend.predict_noise(x_t, t, cond)  # ε_θ(x_t, c, t), with grad
            loss = nn.functional.mse_loss(prediction.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses
