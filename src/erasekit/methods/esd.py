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

Three options beyond the paper (off in the paper, reference and default presets):

* ``preserve_weight`` > 0 (with ``variant=kv``: ESD-x on the cross-attention key/value projections,
  the layers that read the prompt) re-solves the trained edit in closed form after training
  (:func:`keep_preserved`): each key/value delta ΔW becomes ΔW (C_E + ρI)(C_E + λ_p C_P + ρI)⁻¹, the
  least-squares edit that does to prompts naming the concept (token-embedding covariance C_E) what
  ESD learned, leaves the keys and values of prompts to keep (C_P: the preserve concepts' captions
  and the retain prompts, as for the retain term) as they were, and keeps the trained delta where
  neither set constrains it (ρ). It is UCE's eq. 7 (Gandikota et al., WACV 2024) with ESD's trained
  edit as the target instead of an anchor's keys and values, in the spirit of null-space-constrained
  editing (AlphaEdit, Fang et al., ICLR 2025, arXiv 2410.02355): the edit may not move what is
  preserved. It needs the keys' and values' inputs to be the text alone (SD 1.x/2.x, SDXL; not the
  joint attention of SD3/FLUX) and costs one d×d solve per layer. The ``shapesworld`` preset uses it.
* ``retain_weight`` > 0 adds AdvUnlearn's utility-retaining regularisation (Zhang et al., Defensive
  Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models, NeurIPS 2024,
  arXiv 2405.15234): on retain prompts c_r the trained model must keep the frozen model's prediction,
  L = L_ESD + λ_r ‖ε_θ(x_r, c_r, t) − ε_θ*(x_r, c_r, t)‖². The prompts (:func:`retain_selection`) are
  half the preserve concepts' (the data source's captions of each, the erased concept's own kind
  first), half the run's retain prompts; x_r are the frozen model's own DDIM states for them, cached
  with their targets before training (one extra forward/backward of ``retain_batch`` states per
  iteration).
* ``prompts=templates`` erases the concept in each of the run's templates, guided away from the same
  caption without the concept (in the spirit of the reference code's ``erase_from``, which erases an
  attribute from one named object), instead of the bare concept guided away from the unconditional prediction.

The paper's objective has no term for what must stay, so erasing one concept also moves its
neighbours: on the shipped ShapesWorld model with the paper's objective (150 iterations, lr 1e-3,
only ``--concept``) 6 of 22 concepts missed the in-domain or erasure bar on the held-out grid;
orange's in-domain retention was 0.75× base, and erasing yellow turned orange prompts red or blue
(8 of the 9 images it lost). The retain term did not fix that: ``retain_weight=1`` took orange to
IRA 0.95× but UA 0.59, and with ``prompts=templates`` 2 of the 6 met the bar. The re-solve does:
the ``shapesworld`` preset (``variant=kv``, ``preserve_weight=1``, 250 iterations) meets the bar on
all 22, every IRA and CRA at 1.00× base (numbers in benchmarks/README.md).

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
from erasekit.concepts import ConceptSpec, without_concept
from erasekit.errors import ErasekitError
from erasekit.methods.base import require, require_no_anchor_or_preserve
from erasekit.methods.training import TrainedParameters, delta_artifact, predictions, trajectory_states
from erasekit.sources import DataSource, prompts_naming, source_of

VARIANT_TARGETS = {"x": "cross_attn", "u": "unet_non_cross", "kv": "cross_attn_kv"}
# the layers that read the prompt linearly: what preserve_weight re-solves
RESOLVE_TARGET = VARIANT_TARGETS["kv"]


@dataclass(frozen=True)
class ESDConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, paper (the paper's values), reference (esd_sd.py's defaults, η in its convention, x_t from the frozen model) or shapesworld (tuned on the shipped ShapesWorld model)."""
    variant: Literal["x", "u", "kv"] = "x"
    """ESD-x (train cross-attention: erases a prompt-bound concept, e.g. a style), ESD-u (train the rest of the UNet: erases a concept globally, e.g. nudity) or kv (ESD-x on the cross-attention key/value projections only: the layers that read the prompt, which preserve_weight can re-solve)."""
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
    prompts: Literal["concept", "templates"] = "concept"
    """What ESD erases: concept (the concept's words alone, guided away from the unconditional prediction, as the paper does) or templates (the concept in each of the run's templates, guided away from the same caption without the concept, so the rest of the caption keeps its meaning; the model's caption style comes from its data source)."""
    retain_weight: float = 0.0
    """λ_r, weight of a retain term ‖ε_θ(x_r, c_r, t) − ε_θ*(x_r, c_r, t)‖² on retain prompts c_r (AdvUnlearn's utility-retaining regularisation; 0 = the paper's ESD, as in every preset). The prompts are the run's retain prompts (--retain FILE, else the model's data source) and the --preserve concepts' prompts."""
    retain_prompts: int = 32
    """Prompts of the retain term, their DDIM trajectories (one seed each, sampled by the frozen model) cached: half the preserve concepts' prompts (round-robin, the erased concept's own kind first), half the retain prompts."""
    retain_batch: int = 4
    """Cached retain states in the retain term of each iteration."""
    preserve_weight: float = 0.0
    """λ_p of a closed-form re-solve after training (0 = off, the paper's ESD): each trained key/value delta ΔW becomes ΔW (C_E + ρI)(C_E + λ_p C_P + ρI)⁻¹, the least-squares edit that does what ESD learned on prompts naming the concept (C_E) and leaves the keys and values of prompts to keep (C_P) as they were. Needs variant=kv; the prompts are as for the retain term (the preserve concepts' captions and the retain prompts)."""
    preserve_ridge: float = 0.01
    """ρ of the re-solve, relative to the mean eigenvalue of C_E + λ_p C_P: how much of the trained delta is kept in directions neither prompt set spans (a synonym's words); small values keep only what the erase prompts span."""
    preserve_prompts: int = 256
    """Prompts of the re-solve's keep side (half the preserve concepts' captions, the erased concept's own kind first, half the retain prompts), and at most as many captions naming the erased concept on its erase side."""

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
        require(
            self.retain_weight >= 0 and math.isfinite(self.retain_weight),
            f"retain_weight must be a number >= 0 (0 = no retain term), got {self.retain_weight}.",
        )
        require(self.retain_prompts >= 1, f"retain_prompts must be >= 1, got {self.retain_prompts}.")
        require(self.retain_batch >= 1, f"retain_batch must be >= 1, got {self.retain_batch}.")
        require(
            self.preserve_weight >= 0 and math.isfinite(self.preserve_weight),
            f"preserve_weight must be a number >= 0 (0 = no re-solve), got {self.preserve_weight}.",
        )
        require(
            self.preserve_ridge > 0 and math.isfinite(self.preserve_ridge),
            f"preserve_ridge must be a number > 0, got {self.preserve_ridge}.",
        )
        require(self.preserve_prompts >= 1, f"preserve_prompts must be >= 1, got {self.preserve_prompts}.")
        require(
            self.preserve_weight == 0 or self.variant == "kv",
            f"preserve_weight re-solves the key/value deltas of variant=kv, but variant={self.variant} trains "
            "layers that read the image too; add -o variant=kv (or set -o preserve_weight=0).",
        )

    @property
    def paper_eta(self) -> float:
        """η of eq. 3, whichever convention ``eta`` was given in (reference = paper η + 1)."""
        return paper_eta(self.eta, self.eta_convention)

    # Named presets (-o preset=NAME), applied under explicit settings. paper: the paper's settings
    # (Sec. 4: 1000 iterations, Adam lr 1e-5, η = 1, 50 DDIM steps, start guidance 3). reference: the
    # current reference script esd_sd.py's defaults (200 iterations, lr 5e-5, --negative_guidance 2 in
    # its own convention, x_t from the frozen model). shapesworld: tuned on the shipped model (lr 1e-3,
    # 25 DDIM steps; the key/value re-solve, and 250 iterations, with which blue's erasure went from
    # UA 0.69 at 150 to 0.94 on the tuning grid while the re-solve kept the neighbours).
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
            "iterations": 250,
            "lr": 1e-3,
            "eta": 1.0,
            "eta_convention": "paper",
            "start_guidance": 3.0,
            "ddim_steps": 25,
            "trajectory_model": "trained",
            "variant": "kv",
            "preserve_weight": 1.0,
        },
    }


# ---- the math (torch only) --------------------------------------------------------------------------
def paper_eta(eta: float, convention: str) -> float:
    """η of eq. 3 from a value in ``convention``: "paper" as is, "reference" (esd_sd.py) minus 1.

    esd_sd.py's target is ε(x_t, c) − g (ε(x_t, c) − ε(x_t)) = ε(x_t) − (g − 1)(ε(x_t, c) − ε(x_t)).
    """
    return eta - 1.0 if convention == "reference" else eta


def erase_prompts(concepts: ConceptSpec, mode: str) -> list[tuple[str, str]]:
    """(prompt, neutral prompt) pairs ESD trains on: each concept against "" (``concept``, the paper),
    or each template with the concept against the template without it (``templates``)."""
    if mode == "concept":
        return [(t.text, "") for t in concepts.targets]
    return [
        (template.format(t.text), without_concept(template))
        for t in concepts.targets
        for template in concepts.templates
    ]


def retain_selection(
    concepts: ConceptSpec, n: int, generator: torch.Generator, source: DataSource | None = None
) -> list[str]:
    """Up to ``n`` prompts for the retain term: half the preserve concepts' prompts, taken round-robin
    in the order given (a data source lists the target's own kind first, the neighbours an erasure
    spills onto), the rest drawn at random from the retain prompts; either half fills the other's
    shortfall. A preserve concept's prompts are the source's captions of it, else the spec's templates."""
    source = source or DataSource()
    per_concept = []
    for concept in concepts.preserve:  # each concept's prompts in random order
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        prompts = prompts_naming(
            source,
            concept,
            concepts.templates,
            len(concepts.templates),
            avoid=concepts.erase_texts,
            seed=seed,
        )
        per_concept.append([prompts[i] for i in torch.randperm(len(prompts), generator=generator).tolist()])
    preserve = [p[i] for i in range(max(map(len, per_concept), default=0)) for p in per_concept if i < len(p)]
    retain = [concepts.retain[i] for i in torch.randperm(len(concepts.retain), generator=generator).tolist()]
    take_retain = min(len(retain), max(n - min(len(preserve), (n + 1) // 2), n // 2))
    return preserve[: n - take_retain] + retain[:take_retain]


def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)] — the right-hand side of eq. 3 (η: paper's).

    The weights sum to one, so the same line serves ε- and v-prediction models.
    """
    return eps_uncond - eta * (eps_concept - eps_uncond)


def row_covariance(rows: torch.Tensor) -> torch.Tensor:
    """C = Rᵀ R / n of rows R [n, d] (token embeddings), float64."""
    rows = rows.to(torch.float64)
    return rows.T @ rows / rows.shape[0]


def keep_preserved(
    delta: torch.Tensor, c_erase: torch.Tensor, c_keep: torch.Tensor, weight: float, ridge: float
) -> torch.Tensor:
    """ΔW' = ΔW (C_E + ρI)(C_E + λ_p C_P + ρI)⁻¹ for one linear layer that reads the rows' space.

    C_E, C_P are :func:`row_covariance` of the erase rows E (token embeddings of prompts naming the
    concept) and the keep rows P (prompts to keep). ΔW' minimises
    ‖(ΔW' − ΔW) Eᵀ‖²/n_E + λ_p ‖ΔW' Pᵀ‖²/n_P + ρ ‖ΔW' − ΔW‖²: do what the trained delta does to the
    erase rows, leave the keep rows' outputs as they were, and keep the trained delta wherever
    neither set constrains it (ρ: a synonym's embedding lies partly outside both sets). ρ = ``ridge``
    × the mean eigenvalue of C_E + λ_p C_P, so one number serves any embedding scale. With ρ → 0 this
    is UCE's eq. 7 with ESD's trained edit as the target in place of an anchor's keys and values.
    """
    m = c_erase + weight * c_keep
    eye = torch.eye(m.shape[0], dtype=torch.float64)
    rho = ridge * torch.trace(m) / m.shape[0]
    # ΔW' = ΔW (C_E + ρI) M⁻¹, i.e. ΔW'ᵀ = M⁻¹ (C_E + ρI) ΔWᵀ (both symmetric): a solve, no inverse
    new = torch.linalg.solve(m + rho * eye, (c_erase + rho * eye) @ delta.to(torch.float64).T).T
    return new.to(delta.dtype)


def output_energy(delta: torch.Tensor, covariance: torch.Tensor) -> float:
    """‖ΔW Rᵀ‖²/n = tr(ΔW C ΔWᵀ): the mean squared change ``delta`` makes to the rows' outputs."""
    d = delta.to(torch.float64)
    return float(((d @ covariance) * d).sum())


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

    @staticmethod
    def takes_preserve(config: ESDConfig) -> bool:
        """The paper's objective has no preserve term; the re-solve (preserve_weight > 0) and the retain
        term (retain_weight > 0) use the preserve concepts' prompts, so only with one of them does
        run_method fill them in from the data source."""
        return config.retain_weight > 0 or config.preserve_weight > 0

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
        require_no_anchor_or_preserve(
            concepts,
            "ESD",
            "uce",
            allow_preserve=config.retain_weight > 0 or config.preserve_weight > 0,
            preserve_advice="drop --preserve, or keep them with -o variant=kv -o preserve_weight=1 (or the retain term, -o retain_weight=1)",
        )
        # Everything random comes from the run's generator (run_method seeds it with --seed).
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        trained = backend.parameters_for(VARIANT_TARGETS[config.variant])
        # Before training (the model is still θ*): the retain term's states and targets.
        retain = (
            self._retain_cache(backend, concepts, config, generator) if config.retain_weight > 0 else None
        )
        with TrainedParameters(trained) as run:
            losses, retain_losses = self._train(
                backend, concepts, config, trained, run.originals, retain, generator
            )
            deltas = run.deltas()
        resolve = None
        if config.preserve_weight > 0:
            deltas, resolve = self._keep_preserved(backend, concepts, config, deltas, generator)
        artifact = delta_artifact(self.name, deltas)
        artifact.manifest["training"] = {
            "target": VARIANT_TARGETS[config.variant],
            "trained_parameters": int(sum(p.numel() for p in trained.values())),
            "loss": losses,
        }
        if retain is not None:
            artifact.manifest["training"].update(retain_prompts=retain["prompts"], retain_loss=retain_losses)
        if resolve is not None:
            artifact.manifest["training"]["resolve"] = resolve
        return artifact

    @staticmethod
    @torch.no_grad()
    def _keep_preserved(backend, concepts: ConceptSpec, config: ESDConfig, deltas: dict, generator):
        """Re-solve every trained key/value delta with :func:`keep_preserved` (preserve_weight > 0).
        Returns the new deltas and what the manifest records about the re-solve."""
        source = source_of(backend)
        keep = retain_selection(concepts, config.preserve_prompts, generator, source)
        if not keep:
            raise ErasekitError(
                "preserve_weight > 0 needs prompts to keep: pass --retain FILE or --preserve CONCEPT (or set -o preserve_weight=0)."
            )
        erase = [prompt for prompt, _neutral in erase_prompts(concepts, config.prompts)]
        per_target = max(1, config.preserve_prompts // len(concepts.targets))
        for target in concepts.targets:
            seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
            erase += prompts_naming(source, target.text, concepts.templates, per_target, seed=seed)
        try:
            streams = backend.text_linear_inputs(erase + keep, RESOLVE_TARGET)
        except ErasekitError as error:
            raise ErasekitError(
                f"preserve_weight needs key/value layers that read the prompt alone: {error} Set -o preserve_weight=0 on this model."
            ) from error
        resolved = {}
        energy = dict.fromkeys(("erase_before", "erase_after", "keep_before", "keep_after"), 0.0)
        for stream in streams:
            rows = stream.inputs.detach().to("cpu", torch.float64)
            c_erase = row_covariance(rows[: len(erase)].flatten(0, 1))
            c_keep = row_covariance(rows[len(erase) :].flatten(0, 1))
            for name, columns in stream.weights.items():
                if name not in deltas:
                    continue
                delta = deltas[name].detach().to("cpu")
                start, stop = columns or (0, delta.shape[1])
                old = delta[:, start:stop]
                new = keep_preserved(old, c_erase, c_keep, config.preserve_weight, config.preserve_ridge)
                for side, covariance in (("erase", c_erase), ("keep", c_keep)):
                    energy[f"{side}_before"] += output_energy(old, covariance)
                    energy[f"{side}_after"] += output_energy(new, covariance)
                full = delta.clone()
                full[:, start:stop] = new
                resolved[name] = full.to(deltas[name].device)
        unresolved = sorted(set(deltas) - set(resolved))
        if unresolved:  # variant=kv trains only what the streams list; anything else is a backend mismatch
            raise ErasekitError(
                f"preserve_weight re-solves the layers that read the prompt, but {unresolved[0]} does not; use -o preserve_weight=0 on this model."
            )

        def ratio(side: str) -> float:
            before = energy[f"{side}_before"]
            return math.sqrt(energy[f"{side}_after"] / before) if before > 0 else 0.0

        report = {
            "preserve_weight": config.preserve_weight,
            "preserve_ridge": config.preserve_ridge,
            "erase_prompts": len(erase),
            "keep_prompts": len(keep),
            "resolved_weights": len(resolved),
            # RMS change of the keys and values after / before the re-solve, on each prompt set
            "erase_change_ratio": ratio("erase"),
            "keep_change_ratio": ratio("keep"),
        }
        return resolved, report

    @staticmethod
    @torch.no_grad()
    def _retain_cache(backend, concepts: ConceptSpec, config: ESDConfig, generator: torch.Generator) -> dict:
        """The retain term's inputs: the frozen model's DDIM states for the chosen retain prompts, and
        its conditional prediction at each (the term's target)."""
        prompts = retain_selection(concepts, config.retain_prompts, generator, source_of(backend))
        if not prompts:
            raise ErasekitError(
                "retain_weight > 0 needs retain prompts: pass --retain FILE or --preserve CONCEPT (or set -o retain_weight=0)."
            )
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
        x, t, owner = trajectory_states(
            backend, prompts, seeds, config.ddim_steps, config.start_guidance, size=config.resolution or None
        )
        conds = backend.encode_prompts(prompts)
        owner_index = torch.tensor(owner, device=conds.device)
        target = predictions(backend, x, t, conds[owner_index])
        return {"prompts": prompts, "x": x, "t": t, "owner": owner_index, "conds": conds, "target": target}

    def _train(self, backend, concepts, config, trained, originals, retain, generator):
        """The ESD loop (eq. 3, plus the retain term when ``retain`` holds its cache) on ``trained`` in
        place; ``originals`` are θ* of the trained part. Returns the ESD and the retain losses."""
        teacher = _Components(backend.components)

        def original_prediction(latents, t, cond):
            return torch.func.functional_call(
                teacher, originals, (lambda: backend.predict_noise(latents, t, cond),), strict=False
            )

        with torch.no_grad():
            pairs = erase_prompts(concepts, config.prompts)
            concept_conds = [backend.encode_prompts([prompt, neutral]) for prompt, neutral in pairs]
            uncond = backend.encode_prompts([""])
        timesteps = backend.sampling_timesteps(config.ddim_steps)
        losses: list[float] = []
        retain_losses: list[float] = []
        optimizer = torch.optim.Adam(trained.values(), lr=config.lr)
        for _ in tqdm(range(config.iterations), desc="ESD", disable=None):
            cond, neutral = concept_conds[
                int(torch.randint(len(concept_conds), (), generator=generator))
            ].chunk(2)
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
                # θ*'s neutral (unconditional, or the caption without the concept) and concept
                # predictions in one batch of two
                eps_neutral, eps_concept = original_prediction(
                    torch.cat([x_t, x_t]), t, torch.cat([neutral, cond])
                ).chunk(2)
                target = esd_target(eps_neutral, eps_concept, config.paper_eta)
            prediction = backend.predict_noise(x_t, t, cond)  # ε_θ(x_t, c, t), with grad
            loss = nn.functional.mse_loss(prediction.float(), target.float())
            losses.append(float(loss.detach()))
            if retain is not None:
                pick = torch.randint(retain["x"].shape[0], (config.retain_batch,), generator=generator)
                pick = pick.to(retain["x"].device)
                kept = backend.predict_noise(
                    retain["x"][pick], retain["t"][pick], retain["conds"][retain["owner"][pick]]
                )
                retain_loss = nn.functional.mse_loss(kept.float(), retain["target"][pick].float())
                retain_losses.append(float(retain_loss.detach()))
                loss = loss + config.retain_weight * retain_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return losses, retain_losses
