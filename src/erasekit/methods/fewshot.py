"""Few-shot text-encoder unlearning (Fuchi & Takagi, BMVC 2024, arXiv 2405.07288).

Only the text encoder changes (by default the MLP ``fc1``/``fc2`` of every layer plus the last layer's
self-attention, resolved through the backend's targets for an encoder of any depth). The objective is
gradient *ascent* on the ordinary denoising loss over a few real images ``x_0`` of the concept, captioned
with object/style templates ("a photo of a {}"):

    max_φ  L(φ) = E_{x_0, y, t, ε} ‖ f_θ(x_t, t, E_φ(y)) − target(x_0, ε, t) ‖²            (paper eq. 2)

where ``E_φ`` is the text encoder, ``f_θ`` the frozen denoiser (ε or v prediction) and ``target`` what
it was trained to output. Public defaults: Adam (β = 0.9, 0.98; eps 1e-6; weight decay 1e-8), lr 1e-5,
batch 2, ~4 images, 5 epochs.

What the public code lacks is added here:

* **A stopping rule (the bound against collapse).** Ascent is unbounded; run long enough and the
  encoder collapses. Three reference losses are measured once, with the original encoder, on a fixed
  probe set (fixed images, timesteps and noises): the concept's own ``L_c⁰``, the empty prompt's
  ``L_∅`` and ``L_mis`` — the same captions with the concept word swapped for each *other* (preserve)
  concept. ``L_∅ − L_c`` is (up to weighting) the variational gap between the unconditional and
  conditional ELBOs, i.e. how much the caption tells the denoiser about the images; ``L_mis`` is the
  loss of a caption that names the wrong concept. Training stops as soon as the concept's probe loss
  reaches ``stop_factor × L_ref``: by default ``L_ref = L_mis`` (``stop_rule=mismatch``; ``uncond``
  without a preserve list), i.e. the concept's own name must explain its images no better than
  another concept's name does, with ``stop_factor`` = 1.5 as a measured margin (on the shipped
  ShapesWorld model, with truthful captions, 1.3 stopped "blue" at UA 0.69; 1.5 reaches UA 1.0 for
  star, red, striped, heart and blue with IRA and CRA at 1.0). A concept whose loss has not reached
  the bound by the step cap (``epochs``) gets up to ``relax_steps`` more, in which the trust region's
  multiplier λ is halved at every check where the loss stalled: on the shipped model λ = 10 held the
  probe loss of striped, dotted and grid in place for all 40 steps (0.063 → 0.066 for dotted);
  relaxing λ from the first step instead cost circle its erasure, so concepts that reach the bound
  within the cap train exactly as before.
  ``stop_rule=uncond`` uses ``L_∅``, ``initial`` uses ``L_c⁰``; ``epochs`` caps the steps.
* **Verification: the concept must be gone from the samples, not just from the loss.** On the shipped
  ShapesWorld model a probe loss far past the bound (0.24 against a reference of 0.12) left dotted
  drawn in 32 of 32 held-out images: the ascent had raised the loss by distorting what the caption
  leaves unsaid (the fine texture at t < 200, a circle's colour at t > 800), not the concept. With
  ``verify`` > 0 (default 16), once the probe loss reaches ``verify_from`` × the stopping rule's
  reference, every ``verify_every`` steps the model being trained samples the concept's prompts and the
  *original* model classifies each sample among the concept and its alternatives (same-kind concepts
  from the data source, else the preserve list) as a diffusion classifier (Li et al., ICCV 2023); see
  :mod:`erasekit.methods.verification`. Training stops when at most ``verify_max`` of them still show
  the concept and the preserve concepts' samples are recognised about as often as the original's
  (within ``verify_keep_drop`` pooled, and no one preserve concept down by more than the share
  ``verify_keep_each`` of its samples: collateral concentrates on one neighbour), both again on a second,
  independent set of samples (a check repeated until it passes stops on lucky draws: dotted passed at
  1/16 and showed dots in 6 of 32 held-out images); a check where the preserve samples are not kept doubles λ instead. An attempt that
  reaches the cap with the concept still recognised is redone from the original weights with fresh
  images (``restarts``), and the best attempt is kept. On ShapesWorld the classifier recognised 48 of 48
  base samples of six concepts, and after six erasures its share of samples still showing the
  concept matched the judge's in five and missed by 2 of 8 in one (circle: 6/8 against 8/8).
* **Informative timesteps.** The ascent and the probes draw half their timesteps in proportion to
  ``L_∅(t) − L_c(t)`` (measured once per slice of the schedule on the concept's images: where the
  caption tells the denoiser something about them) and half uniformly (``timestep_mix``; 0 is the
  paper's uniform draw). Uniform draws spent the ascent at small t, where on ShapesWorld the caption
  lowers the loss by 0.01 against 0.54 at t ≈ 950.
* **Restarts that alternate the loss: plain, then aimed at where the concept is drawn
  (``concept_mask``).** The plain loss is a mean over every latent element, so the ascent gains most
  by distorting whatever covers the most pixels, whatever the caption says about it. On the shipped
  model one such run turned every circle prompt into a white circle on a checkered background (31 of
  32 held-out images still circles, probe loss 7.6× its start). Circle is what this model draws when
  the shape word says nothing (over the empty prompt, colour-only prompts and prompts with a missing
  or nonsense shape word, circle was the most common shape: 25 of 80 samples), so an uninformative
  caption still draws circles. The masked loss weights each element's squared error
  by ``(1 − m) + m·w``, with ``w ∝ (f(x_t, y) − f(x_t, y'))²`` from the frozen model, ``y'`` the
  caption with the concept swapped for another concept of its kind, normalised to mean 1 per sample:
  where the concept word changes the prediction. Which attempt passes depends on the draw (images,
  batch order) as much as on the loss. Over one session's runs (seed 0, several settings), masked
  first attempts erased circle 5 times of 5 and plain attempts 1 of 3; masked attempts erased grid 1
  time in 11 (plain: 2 in 6) and dotted 2 in 11 (plain: 3 in 5). Masked first attempts also cost the colours more of their
  neighbours on the held-out grid (yellow IRA 0.84×, blue 0.89×; plain first attempts: 0.98× and
  1.00×). So the attempts go plain, masked, plain, plain (``concept_mask`` = 0,0.5,0; ``restarts`` = 3).
* **A trust region on everything else the encoder says,** in two forms. Its Lagrangian form is on by
  default: the ascent objective gets ``+ λ · mean_p ‖E_φ(p) − E_φ₀(p)‖² / ‖E_φ₀(p)‖²`` over a random
  subset of neutral prompts (the preserve concepts in the templates plus a few generic prompts), so
  the ascent moves along directions that leave them be (``preserve_weight`` = λ). The hard form
  (``max_drift`` > 0) bounds the largest relative drift ``‖E_φ(p) − E_φ₀(p)‖ / ‖E_φ₀(p)‖``: a step
  that leaves it is halved up to ``backtracks`` times, else undone and training stops.
* **Truthful captions.** On ShapesWorld each rendered image is captioned with the world's own captions
  of its labels (all naming the concept), and zero-shot images with the prompt that generated them;
  only user images (``images_dir``) take the spec's templates. Templates that fix the other attributes
  ("a green {} on a striped background") contradict a render of a red heart on dots: the concept's
  loss then sat *above* the empty prompt's, the stopping rule's references lost their meaning, and
  the ascent mostly unlearned the contradicted words (heart: UA 0.5 at the step cap; now 1.0). The
  mismatch reference swaps the concept word in the same captions for each other concept.
* **Per-step augmentation**: each image is encoded once, as ``views`` augmented copies (original,
  horizontal flip, random crops rescaled to full size); every step draws one view per image.

Defaults are tuned on ShapesWorld (a 3-layer, width-128 encoder trained from scratch): lr 3e-3,
batch 4, up to 40 steps (+ 40 relaxed), the probe every 2 steps, 8 penalty prompts per step, 16
verification samples 4 steps after the loss reaches the reference (intervals then ×1.5), up to 3
restarts, the first of them on the masked loss (m = 0.5); the paper's SD 1.5 settings are lr 1e-5, batch 2,
5 epochs of ~4 images, plain ascent without stopping rule, verification or restarts
(``-o preset=paper``). On a real model each verification costs ``2 × verify`` samples plus
``verify_timesteps × (1 + alternatives)`` UNet passes per sample: lower ``verify`` or set it to 0.

Zero-shot (no images): when the model's data source (``backend.data_source``, see erasekit.sources)
renders images of the concept — ShapesWorld's does — those truthfully captioned images are used;
otherwise ``zero_shot=generate`` samples them from the model itself with the concept's prompts and
``zero_shot=error`` raises.

The artifact holds delta tensors of the changed text-encoder parameters; the UNet is untouched.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec, swap_word
from erasekit.errors import ErasekitError
from erasekit.methods.base import require
from erasekit.methods.training import TrainedParameters
from erasekit.methods.verification import Verifier
from erasekit.sources import source_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Prompts whose encoding the trust region watches besides the preserve list.
NEUTRAL_PROMPTS = ("", "a photo", "an image of something", "a picture")


@dataclass(frozen=True)
class FewShotConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, or another name listed by `erasekit methods` (paper: the paper's / reference code's values; shapesworld: tuned on the shipped ShapesWorld model)."""
    target: str = "text_mlp+text_attn_last"
    """Text-encoder parameters to train, as backend targets joined by '+' (see `erasekit methods`)."""
    images_dir: str | None = None
    """Folder of PNG/JPG images of the concept (one concept), or one subfolder per concept name."""
    num_images: int = 4
    """Images used per concept (the first ones in name order; rendered or generated when none given)."""
    epochs: int = 40
    """Most passes over the images (steps = epochs × ceil(images / batch_size)); the loss bound usually stops earlier (on ShapesWorld, 24 left "star" at UA 0.59 on the held-out grid, short of the bound; 18–21 steps sufficed for circle/triangle). Paper: 5."""
    batch_size: int = 4
    """Images per optimizer step (paper: 2)."""
    lr: float = 3e-3
    """Adam learning rate (tuned on ShapesWorld's small encoder; paper: 1e-5 on SD 1.5's CLIP-L)."""
    adam_beta2: float = 0.98
    """Adam β₂ (public code: 0.98; β₁ is 0.9, eps 1e-6, weight decay 1e-8)."""
    views: int = 4
    """Augmented views encoded per image: original, horizontal flip, then random crops."""
    augment: Literal["flip_crop", "flip", "none"] = "flip_crop"
    """Per-step augmentation of the images (views are drawn at random each step)."""
    crop_scale: float = 0.85
    """Side of a random crop as a fraction of the image (then resized back)."""
    stop_rule: Literal["mismatch", "uncond", "initial", "none"] = "mismatch"
    """Stop when the concept's probe loss reaches stop_factor × that of other concepts' captions on its images (mismatch; uncond without a preserve list), of the empty prompt (uncond), or its own initial loss (initial)."""
    stop_factor: float = 1.5
    """Multiplier of the stopping rule's reference loss (1.5 measured on ShapesWorld; 1.3 stopped "blue" too early)."""
    max_drift: float = 0.0
    """Trust region: largest relative change of neutral/preserve prompt encodings; a step beyond it is halved until inside, or undone and training stops (0 = off)."""
    preserve_weight: float = 10.0
    """λ of the drift penalty λ·mean ‖E(p) − E₀(p)‖²/‖E₀(p)‖² over neutral/preserve prompts added to the ascent (0 = off)."""
    penalty_prompts: int = 8
    """Neutral/preserve prompts drawn per step for the drift penalty (each is a text-encoder pass with gradients: at SD scale the penalty dominated the step at 16)."""
    relax_steps: int = 40
    """Extra steps past the step cap for a concept whose probe loss has not reached the stopping bound by then; during them λ is relaxed (× stall_decay) at every check where the loss stalled (0 = stop at the cap). Concepts that reach the bound within the cap train exactly as without it. On ShapesWorld λ = 10 froze the ascent on striped/dotted/grid (probe loss 0.071 -> 0.076 in 40 steps); relaxing λ from the first step instead cost circle its erasure (UA 0.09) and star its CRA (0.78)."""
    stall_decay: float = 0.5
    """Factor applied to λ at a check past the cap where the concept's loss rose by less than stall_fraction of the way to the bound since the previous check (1 = fixed λ)."""
    stall_fraction: float = 0.02
    """Least rise of the probe loss between two checks, as a fraction of (bound − initial loss), that does not count as a stall."""
    backtracks: int = 3
    """Halvings tried to bring a step back inside the trust region before giving up."""
    timestep_mix: float = 0.5
    """Share of the ascent's and probes' timesteps drawn in proportion to how much the concept's captions lower the frozen model's loss there (L_∅(t) − L_c(t), measured once on the images); the rest are uniform over the schedule (0 = uniform, the paper)."""
    concept_mask: tuple[float, ...] = (0.0, 0.5, 0.0)
    """Share m of the ascent's squared error weighted by where the concept is drawn, for each attempt in turn (the last value repeats; 0 = the paper's plain loss): each latent element's error is weighted (1 − m) + m·w, with w ∝ the frozen model's (f(x_t, y) − f(x_t, y'))² for the caption y and y' = y with the concept swapped for another same-kind/preserve concept (mean 1 per sample), so the ascent goes where the concept word changes the prediction. The probes and the stopping rule's references use the same weights. On ShapesWorld masked attempts erased circle (the shape drawn when the shape word says nothing) where plain ones mostly did not, and plain attempts did better on grid: the attempts alternate."""
    timestep_bins: int = 10
    """Equal slices of the schedule in which the informative weighting measures the caption's gain (one probe pass each)."""
    probes: int = 8
    """Fixed (image, timestep, noise) triples the stopping rule measures the loss on."""
    check_every: int = 2
    """Steps between two measurements of the probe loss (the stopping rule's cost: `probes` UNet passes each time)."""
    mismatch_concepts: int = 8
    """Most preserve concepts (a seeded sample) whose captions define the mismatch reference loss."""
    verify: int = 16
    """Once the loss bound is reached, check the erasure before stopping: sample this many of the concept's prompts from the model being trained and ask the *original* model which concept each sample shows (a diffusion classifier: the caption, among the concept's and same-kind/preserve concepts' versions of it, with the lowest denoising loss); training goes on while more than verify_max of them still show the concept (0 = off, stop at the bound). On ShapesWorld the bound alone was reached with the style still drawn in every sample (dotted, grid: UA 0)."""
    verify_max: float = 0.0
    """Largest share of verification samples the original model may still classify as the concept for training to stop (0: none may; at 1/16 dotted stopped with dots in 6 of 32 held-out images)."""
    verify_from: float = 1.0
    """With verification on, it starts once the probe loss reaches verify_from × the stopping rule's reference loss (1 = the level of another concept's captions; stop_factor then bounds nothing but the start without verification)."""
    verify_keep: int = 24
    """Samples of preserve concepts' prompts at each verification (three quarters over the erased concepts' own kind, one each for a seeded sample of the rest; 0 = no preservation check)."""
    verify_keep_drop: float = 0.0625
    """Largest drop, against the original model, of the share of preserve concepts' samples the verification still recognises; a check beyond it doubles λ (up to 8× preserve_weight) instead of stopping (1/16: one of 24 samples; at 1/8 orange stopped at step 8 with 22 of 24 and lost 3 of 28 other-colour images on the tuning grid, at 1/16 it went on to step 41 and lost none)."""
    verify_keep_each: float = 0.5
    """Largest share of any one preserve concept's samples that a check may lose against the original's count (those of the erased concept's own kind get three or four samples, the rest one); more doubles λ like verify_keep_drop. The samples have fixed seeds, so a concept the erasure leaves alone draws what the original drew. Collateral concentrates on one neighbour: on ShapesWorld erasing yellow verified with 23 of 24 preserve samples kept (two per concept) and turned 7 of 8 held-out white images cyan."""
    verify_every: int = 4
    """Steps between the first two verifications while the concept is still recognised."""
    verify_backoff: float = 1.5
    """Growth of the interval between verifications after each that did not pass (1 = every verify_every steps): bounds their cost for a concept that stays recognised (on ShapesWorld, 20 checks at a fixed interval made circle's three attempts take over 15 minutes)."""
    restarts: int = 3
    """Fresh attempts (original weights, new images and batch order, the next concept_mask) when one ends at the step cap with the concept still recognised by the verification; the attempt recognised least is kept."""
    verify_timesteps: int = 8
    """Timesteps (stratified over the schedule, fixed noise) the verifying classifier sums the loss over."""
    zero_shot: Literal["generate", "error"] = "generate"
    """Without images: sample them from the model itself (generate) or raise (error)."""
    generate_steps: int = 25
    """Sampling steps for zero-shot generation (and the verification's, unless the model recommends its own)."""
    generate_guidance: float = 5.0
    """Guidance scale for zero-shot generation (and the verification's, unless the model recommends its own)."""

    # Named presets (-o preset=NAME). paper: the public code's settings on SD 1.5 (lr 1e-5, batch 2,
    # 5 epochs, plain ascent: no stopping rule, no drift penalty). shapesworld: the defaults, tuned on
    # the shipped model, spelled out so they stay if the defaults move.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "lr": 1e-5,
            "batch_size": 2,
            "epochs": 5,
            "stop_rule": "none",
            "preserve_weight": 0.0,
            "timestep_mix": 0.0,
            "concept_mask": (0.0,),
            "verify": 0,
            "restarts": 0,
        },
        "shapesworld": {
            "lr": 3e-3,
            "batch_size": 4,
            "epochs": 40,
            "stop_rule": "mismatch",
            "stop_factor": 1.5,
            "preserve_weight": 10.0,
            "penalty_prompts": 8,
            "check_every": 2,
            "relax_steps": 40,
            "stall_decay": 0.5,
            "stall_fraction": 0.02,
            "timestep_mix": 0.5,
            "concept_mask": (0.0, 0.5, 0.0),
            "timestep_bins": 10,
            "verify": 16,
            "verify_max": 0.0,
            "verify_every": 4,
            "verify_backoff": 1.5,
            "restarts": 3,
            "verify_keep": 24,
            "verify_keep_drop": 0.0625,
            "verify_keep_each": 0.5,
            "verify_from": 1.0,
        },
    }

    def __post_init__(self) -> None:
        require(self.num_images >= 1, "num_images must be at least 1.")
        require(self.epochs >= 1, "epochs must be at least 1.")
        require(self.batch_size >= 1, "batch_size must be at least 1.")
        require(self.lr > 0, "lr must be positive.")
        require(0 < self.adam_beta2 < 1, "adam_beta2 must be in (0, 1).")
        require(self.views >= 1, "views must be at least 1.")
        require(0.3 <= self.crop_scale <= 1.0, "crop_scale must be in [0.3, 1].")
        require(self.stop_factor > 0, "stop_factor must be positive.")
        require(self.max_drift >= 0, "max_drift must be >= 0 (0 turns the trust region off).")
        require(self.probes >= 1, "probes must be at least 1.")
        require(self.timestep_bins >= 1, "timestep_bins must be at least 1.")
        require(0 <= self.timestep_mix <= 1, "timestep_mix must be in [0, 1] (0 = uniform timesteps).")
        require(
            len(self.concept_mask) >= 1 and all(0 <= m <= 1 for m in self.concept_mask),
            "concept_mask takes one share in [0, 1] per attempt, e.g. 0,0.5,0 (0 = the plain denoising loss).",
        )
        require(self.check_every >= 1, "check_every must be at least 1.")
        require(self.mismatch_concepts >= 1, "mismatch_concepts must be at least 1.")
        require(self.backtracks >= 0, "backtracks must be >= 0.")
        require(self.preserve_weight >= 0, "preserve_weight must be >= 0.")
        require(self.penalty_prompts >= 1, "penalty_prompts must be at least 1.")
        require(self.relax_steps >= 0, "relax_steps must be >= 0 (0 stops at the step cap).")
        require(0 < self.stall_decay <= 1, "stall_decay must be in (0, 1] (1 keeps λ fixed).")
        require(self.stall_fraction >= 0, "stall_fraction must be >= 0.")
        require(self.generate_steps >= 1, "generate_steps must be at least 1.")
        require(self.verify >= 0, "verify must be >= 0 (0 turns the verification off).")
        require(0 <= self.verify_max < 1, "verify_max must be in [0, 1).")
        require(self.verify_every >= 1, "verify_every must be at least 1.")
        require(self.verify_backoff >= 1, "verify_backoff must be >= 1 (1 = a fixed interval).")
        require(self.verify_from > 0, "verify_from must be positive.")
        require(0 <= self.verify_keep_drop <= 1, "verify_keep_drop must be in [0, 1].")
        require(0 <= self.verify_keep_each <= 1, "verify_keep_each must be in [0, 1].")
        require(self.restarts >= 0, "restarts must be >= 0.")
        require(self.verify_timesteps >= 1, "verify_timesteps must be at least 1.")


# ---- images -----------------------------------------------------------------------------------------
def load_images(folder: Path, limit: int, size: int) -> torch.Tensor:
    """Up to ``limit`` PNG/JPG images of ``folder`` as [N, 3, size, size] in [0, 1] (centre crop)."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ErasekitError(f"No PNG/JPG images in {folder}; put a few images of the concept there.")
    out = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            out.append(data.view(size, size, 3).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def augmented_views(
    images: torch.Tensor, views: int, mode: str, crop_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """[N, V, 3, H, W]: view 0 the image, view 1 its mirror, further views random crops resized back."""
    n, _, h, w = images.shape
    out = [images]
    for v in range(1, views if mode != "none" else 1):
        source = images.flip(-1) if (v % 2 == 1 and mode != "none") else images
        if v == 1 or mode == "flip":
            out.append(source)
            continue
        ch, cw = max(1, round(h * crop_scale)), max(1, round(w * crop_scale))
        crops = []
        for i in range(n):
            top = int(torch.randint(h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(w - cw + 1, (1,), generator=generator))
            crops.append(source[i : i + 1, :, top : top + ch, left : left + cw])
        out.append(F.interpolate(torch.cat(crops), size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(out, dim=1)


# ---- the method ---------------------------------------------------------------------------------------
class FewShot:
    """Few-shot unlearning: gradient ascent on the denoising loss, text encoder only."""

    name: ClassVar[str] = "fewshot"
    paper: ClassVar[str] = (
        "Fuchi & Takagi, Erasing Concepts from Text-to-Image Diffusion Models with Few-shot Unlearning, "
        "BMVC 2024, arXiv:2405.07288"
    )
    config_cls: ClassVar[type] = FewShotConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "num_images=2",
        "epochs=1",
        "relax_steps=0",
        "views=2",
        "probes=2",
        "generate_steps=2",
    )

    def erase(
        self,
        backend: Any,
        concepts: ConceptSpec,
        config: FewShotConfig,
        *,
        generator: torch.Generator | None = None,
    ) -> Artifact:
        params = backend.parameters_for(config.target)
        # every text encoder: text_encoder, and SDXL/SD3/FLUX's text_encoder_2/_3
        outside = [n for n in params if not n.split(".", 1)[0].startswith("text_encoder")]
        if outside:
            raise ErasekitError(
                f"fewshot trains the text encoder only, but target {config.target!r} selects {outside[0]}; pick text_* targets."
            )
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        # Two streams from the run's generator: tensors draw from `generator`, list choices from `rng`.
        rng = random.Random(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        generator = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        verifier = None
        if config.verify > 0:  # built once, with the original encoder; its baseline is the original's
            steps, guidance = verify_sampling(backend, config)
            verifier = Verifier(
                backend,
                concepts,
                samples=config.verify,
                keep_samples=config.verify_keep,
                keep_concepts=max(1, config.verify_keep // 2),
                max_candidates=config.mismatch_concepts,
                timesteps=config.verify_timesteps,
                steps=steps,
                guidance=guidance,
                generator=generator,
                rng=rng,
            )
            verifier = verifier if verifier.active else None
        attempts: list[dict[str, Any]] = []
        best: tuple[float, Artifact, dict[str, Any]] | None = None
        for attempt in range(config.restarts + 1):
            # each attempt from the original weights, with fresh images, probes and batch order
            mix = float(config.concept_mask[min(attempt, len(config.concept_mask) - 1)])
            data = [
                self._concept_latents(backend, concepts, t.text, config, generator) for t in concepts.targets
            ]
            with TrainedParameters(params) as trained:
                report = self._train(backend, concepts, config, params, data, generator, rng, verifier, mix)
                artifact = trained.delta_artifact(self.name)
            left = attempt_score(report)
            attempts.append(
                {
                    "attempt": attempt,
                    "concept_mask": mix,
                    "stopped_by": report["stopped_by"],
                    "score": left,
                }
            )
            # a verified attempt (passed a check and its confirmation) beats any unverified one, even one
            # whose last, unconfirmed check at the step cap scored as well
            if best is None or report["stopped_by"] == "verified" or (left is not None and left < best[0]):
                best = (math.inf if left is None else left, artifact, report)
            if report["stopped_by"] != "steps" or left is None:
                break  # stopped by its rule (bound, verification, trust region), or nothing to verify
        _, artifact, report = best
        report["attempts"] = attempts
        artifact.manifest["training"] = report
        return artifact

    # -- data
    def _concept_latents(
        self,
        backend: Any,
        concepts: ConceptSpec,
        concept: str,
        config: FewShotConfig,
        generator: torch.Generator,
    ) -> dict[str, Any]:
        size = int(getattr(backend, "default_size", 512))
        images = None
        source = "images_dir"
        captions: list[list[str]] | None = None  # per image, when its true caption is known
        if config.images_dir is not None:
            folder = Path(config.images_dir).expanduser()
            if not folder.is_dir():
                raise ErasekitError(f"--images {folder} is not a folder; pass a folder of PNG/JPG images.")
            sub = folder / concept
            if sub.is_dir():
                folder = sub
            elif len(concepts.targets) > 1:
                raise ErasekitError(
                    f"Several concepts but no subfolder {sub.name!r} in {folder}; give one subfolder of images per concept."
                )
            images = load_images(folder, config.num_images, size)
        elif (
            world := source_of(backend).concept_images(concept, config.num_images, size, generator)
        ) is not None:
            # The model's data source renders real images of the concept, each with true captions
            # (ShapesWorld: the world's captions of each render's own labels). Templates that fix the
            # other attributes ("a green {}") would contradict the images and make every caption worse
            # than none (measured: the concept's loss above the empty prompt's), so the ascent would
            # mostly unlearn those words.
            images, captions = world
            source = source_of(backend).name
        elif config.zero_shot == "error":
            raise ErasekitError(
                "fewshot needs images of the concept; pass --images DIR (or zero_shot=generate to sample them)."
            )
        else:
            source = "generated"
            prompts = [rng_choice(concepts.prompts(concept), i) for i in range(config.num_images)]
            seeds = [int(torch.randint(2**31 - 1, (1,), generator=generator)) for _ in prompts]
            images = backend.sample(
                prompts, seeds, steps=config.generate_steps, guidance=config.generate_guidance
            )
            captions = [[prompt] for prompt in prompts]  # each image with the prompt that made it
        views = augmented_views(images, config.views, config.augment, config.crop_scale, generator)
        n, v = views.shape[:2]
        with torch.no_grad():
            latents = torch.cat([backend.encode_images(views[:, j]) for j in range(v)])  # [v*n, ...]
        latents = latents.view(v, n, *latents.shape[1:]).transpose(0, 1).contiguous()  # [n, v, ...]
        return {"concept": concept, "latents": latents, "source": source, "images": n, "captions": captions}

    # -- probes for the stopping rule
    def _probe_set(
        self,
        backend: Any,
        concepts: ConceptSpec,
        data: list[dict],
        config: FewShotConfig,
        generator: torch.Generator,
        weights: torch.Tensor,
        mask: ConceptMask | None = None,
    ):
        probes = []
        for item in data:
            lat = item["latents"][:, 0]  # un-augmented view
            n = lat.shape[0]
            idx = torch.arange(config.probes) % n
            x0 = lat[idx]
            # Stratified quantiles of the timestep distribution, so the probe covers all of it.
            u = (torch.arange(config.probes) + torch.rand(config.probes, generator=generator)) / config.probes
            t = timesteps_at(u, weights, backend.num_train_timesteps).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            if item.get("captions"):
                captions = [item["captions"][int(i)][0] for i in idx]
            else:
                captions = [rng_choice(concepts.prompts(item["concept"]), i) for i in range(config.probes)]
            x_t = backend.add_noise(x0, noise, t)
            weight = None
            if mask is not None:  # fixed probes: the mean over all the concept's alternatives
                concept = [item["concept"]] * len(captions)
                weight = mask.weights(backend, x_t, t, captions, mask.swaps(captions, concept, None))
            probes.append(
                {
                    "x_t": x_t,
                    "t": t,
                    "target": backend.training_target(x0, noise, t),
                    "captions": captions,
                    "concept": item["concept"],
                    "weight": weight,
                }
            )
        return probes

    @staticmethod
    @torch.no_grad()
    def _probe_loss(backend: Any, probes: list[dict], caption_for=None) -> float:
        """Mean denoising loss on the probes; ``caption_for(probe, caption)`` rewrites each caption."""
        losses = []
        for probe in probes:
            caps = (
                probe["captions"]
                if caption_for is None
                else [caption_for(probe, c) for c in probe["captions"]]
            )
            cond = backend.encode_prompts(caps)
            pred = backend.predict_noise(probe["x_t"], probe["t"], cond)
            losses.append(weighted_mse(pred, probe["target"], probe.get("weight")).item())
        return sum(losses) / len(losses)

    # -- training
    def _stopping_rule(self, backend, concepts, config, probes, rng) -> dict[str, Any]:
        """The probe losses the stopping rule compares with, measured once with the original encoder."""
        loss_initial = self._probe_loss(backend, probes)
        loss_uncond = self._probe_loss(backend, probes, lambda probe, caption: "")
        # L_mismatch: the concept's images captioned with *other* (preserve) concepts in the same templates.
        loss_mismatch = None
        if concepts.preserve:
            # A seeded sample of at most `mismatch_concepts` other concepts keeps this reference cheap.
            others = list(concepts.preserve)
            if len(others) > config.mismatch_concepts:
                others = rng.sample(others, config.mismatch_concepts)
            # The same captions naming another concept instead ("... on a plain background").
            per_other = [
                self._probe_loss(
                    backend, probes, lambda probe, caption, c=c: swap_word(caption, probe["concept"], c)
                )
                for c in others
            ]
            loss_mismatch = sum(per_other) / len(per_other)
        rule = config.stop_rule
        if rule == "mismatch" and loss_mismatch is None:
            rule = "uncond"  # no other concept to compare with: fall back to the empty prompt
        reference = {"mismatch": loss_mismatch, "uncond": loss_uncond, "initial": loss_initial}.get(rule)
        return {
            "probe_loss_initial": loss_initial,
            "probe_loss_uncond": loss_uncond,
            "probe_loss_mismatch": loss_mismatch,
            "stop_reference": rule,
            "ceiling": config.stop_factor * reference if reference is not None else math.inf,
        }

    def _batch_loss(
        self, backend, concepts, config, data, batch, neutral, weight, weights, generator, rng, mask
    ):
        """(objective to minimise, ascent term) for one batch: −L(φ) of eq. 2 plus the drift penalty."""
        x0 = torch.stack(
            [data[k]["latents"][i, rng.randrange(data[k]["latents"].shape[1])] for k, i in batch]
        )
        captions = [
            rng.choice(
                data[k]["captions"][i] if data[k]["captions"] else concepts.prompts(data[k]["concept"])
            )
            for k, i in batch
        ]
        u = torch.rand(len(batch), generator=generator)
        t = timesteps_at(u, weights, backend.num_train_timesteps).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = backend.add_noise(x0, noise, t)
        pred = backend.predict_noise(x_t, t, backend.encode_prompts(captions))
        pixel = None
        if mask is not None:  # aimed at where the concept is drawn: one alternative drawn per image
            concept = [data[k]["concept"] for k, _ in batch]
            pixel = mask.weights(backend, x_t, t, captions, mask.swaps(captions, concept, rng))
        # Gradient ascent on the denoising loss (paper eq. 2): minimise its negative.
        ascent = weighted_mse(pred, backend.training_target(x0, noise, t), pixel)
        loss = -ascent
        if weight > 0:
            # Lagrangian form of the trust region: penalise the relative squared drift of the
            # neutral/preserve encodings, so the ascent moves along directions that leave them be.
            # A random subset per step keeps the cost flat in the size of the preserve list.
            prompts, reference, norm = neutral.prompts, neutral.reference, neutral.norm
            pick = rng.sample(range(len(prompts)), min(config.penalty_prompts, len(prompts)))
            now = backend.encode_prompts([prompts[i] for i in pick])
            rel = (now - reference[pick]).flatten(1).pow(2).sum(1) / norm[pick].pow(2)
            loss = loss + weight * rel.mean()
        return loss, ascent

    @staticmethod
    def _backtrack(params, before, config, drift) -> tuple[float, float]:
        """Trust region (hard form): halve the step until the neutral encodings drift at most
        ``max_drift``; returns (drift, step scale). The caller undoes a step still outside."""
        drift_now, shrink = drift(), 1.0
        with torch.no_grad():
            proposed = {n: p.detach().clone() for n, p in params.items()}
            while drift_now > config.max_drift and shrink > 1 / 2**config.backtracks:
                shrink /= 2
                for n, p in params.items():
                    p.copy_(before[n] + shrink * (proposed[n] - before[n]))
                drift_now = drift()
        return drift_now, shrink

    @staticmethod
    def _timestep_weights(
        backend, concepts, config, data, generator
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(caption gain per slice or None, the draw's weight per slice): ``timestep_mix`` of the
        informative weighting, the rest uniform."""
        uniform = torch.full((config.timestep_bins,), 1.0 / config.timestep_bins)
        if config.timestep_mix <= 0:
            return None, uniform
        gains = caption_gains(backend, concepts, data, config.timestep_bins, generator)
        informative = gains.clamp_min(0)
        if float(informative.sum()) <= 0:
            raise ErasekitError(
                "The concept's captions do not lower the model's denoising loss at any timestep, so there "
                "is nothing for the ascent to unlearn; check the images/captions or pass -o timestep_mix=0."
            )
        return gains, (
            1 - config.timestep_mix
        ) * uniform + config.timestep_mix * informative / informative.sum()

    @staticmethod
    def _verify(backend, verifier: Verifier, config, step: int, checks: list) -> tuple[bool, bool]:
        """One check (and its confirmation when it passes), appended to ``checks``: (erased, kept)."""
        checks.append({"step": step, **verifier.check(backend)})
        erased = max(checks[-1]["present"].values()) <= config.verify_max
        kept = kept_enough(verifier, checks[-1], config)
        if erased and kept:  # confirm on fresh samples: repeated checks invite a lucky pass
            checks.append({"step": step, "confirm": True, **verifier.check(backend, confirm=True)})
            erased = max(checks[-1]["present"].values()) <= config.verify_max
            kept = kept_enough(verifier, checks[-1], config)
        return erased, kept

    def _optimizer_step(self, optimizer, loss, params, config, drift) -> tuple[float, float, bool]:
        """Backward, Adam step, then the hard trust region: (drift, step scale, undone)."""
        before = {n: p.detach().clone() for n, p in params.items()} if config.max_drift > 0 else None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if before is None:
            return 0.0, 1.0, False
        drift_now, shrink = self._backtrack(params, before, config, drift)
        if drift_now <= config.max_drift:
            return drift_now, shrink, False
        with torch.no_grad():  # a step that cannot be brought inside is undone and ends training
            for n, p in params.items():
                p.copy_(before[n])
        return drift_now, shrink, True

    def _train(
        self, backend, concepts, config, params, data, generator, rng, verifier, mix
    ) -> dict[str, Any]:
        gains, weights = self._timestep_weights(backend, concepts, config, data, generator)
        mask = ConceptMask(backend, concepts, data, config, rng, mix) if mix > 0 else None
        probes = self._probe_set(backend, concepts, data, config, generator, weights, mask)
        rule = self._stopping_rule(backend, concepts, config, probes, rng)
        ceiling = rule.pop("ceiling")
        bounded = math.isfinite(ceiling)
        neutral = TrustPrompts(backend, concepts)
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(
            list(params.values()), lr=config.lr, betas=(0.9, config.adam_beta2), eps=1e-6, weight_decay=1e-8
        )
        batches = _Batches(data, config.batch_size, rng)
        steps = config.epochs * math.ceil(len(batches.pool) / config.batch_size)
        relax = config.relax_steps if bounded and config.preserve_weight > 0 else 0
        run = _Run(rule["probe_loss_initial"], config.preserve_weight)
        stall = config.stall_fraction * (ceiling - run.loss_now) if bounded else 0.0
        verifier = verifier if bounded else None
        start = ceiling if verifier is None else ceiling / config.stop_factor * config.verify_from
        for step in range(steps + relax):
            if run.loss_now >= start:
                if verifier is None:
                    run.stopped = "loss_bound"
                    break
                if self._gate(backend, verifier, config, step, run):
                    break
            batch = batches.next()
            loss, ascent = self._batch_loss(
                backend, concepts, config, data, batch, neutral, run.weight, weights, generator, rng, mask
            )
            drift_now, shrink, undone = self._optimizer_step(optimizer, loss, params, config, neutral.drift)
            if undone:
                run.stopped = "trust_region"
                run.history.append(
                    {"step": step, "train_loss": ascent.item(), "drift": drift_now, "undone": True}
                )
                break
            if (step + 1) % config.check_every == 0 or step in (steps - 1, steps + relax - 1):
                loss_now = self._probe_loss(backend, probes)
                if step >= steps and loss_now - run.loss_checked < stall:  # past the cap, stalled: relax λ
                    run.weight *= config.stall_decay
                run.loss_now = run.loss_checked = loss_now
            run.history.append(
                {
                    "step": step,
                    "train_loss": ascent.item(),
                    "probe_loss": run.loss_now,
                    "drift": drift_now,
                    "step_scale": shrink,
                    "preserve_weight": run.weight,
                }
            )
        if (
            verifier is not None
            and run.stopped == "steps"
            and (not run.checks or run.checks[-1]["step"] != step)
        ):
            run.checks.append({"step": step + 1, **verifier.check(backend)})
        for p in params.values():
            p.requires_grad_(False)
        return {
            **run.summary(steps, rule, ceiling),
            "image_source": sorted({item["source"] for item in data}),
            "verification": None if verifier is None else {**verifier.describe(), "checks": run.checks},
            "timestep_weights": [round(float(w), 6) for w in weights],
            "caption_gain": None if gains is None else [round(float(g), 6) for g in gains],
            "concept_mask": mix,
            "mask_alternatives": None if mask is None else mask.alternatives,
            "history": run.history,
        }

    def _gate(self, backend, verifier: Verifier, config, step: int, run: _Run) -> bool:
        """At a due check, verify; True when the erasure verified. Otherwise tighten the trust region if the
        rest is being damaged (dual ascent on λ) and schedule the next check, further off each time."""
        if step < run.next_check:
            return False
        erased, kept = self._verify(backend, verifier, config, step, run.checks)
        if erased and kept:
            run.stopped = "verified"
            return True
        if not kept:
            run.weight = min(run.weight * 2, config.preserve_weight * 8)
        # back off: a concept far from gone need not be sampled every few steps
        run.next_check = step + math.ceil(config.verify_every * config.verify_backoff**run.interval)
        run.interval += 1
        return False


class _Batches:
    """Batches of (item, image) indices into the training data, reshuffled with ``rng`` as they run out."""

    def __init__(self, data: list[dict[str, Any]], size: int, rng: random.Random):
        self.pool = [(k, i) for k, item in enumerate(data) for i in range(item["latents"].shape[0])]
        self.size, self.rng = size, rng
        self.order: list[tuple[int, int]] = []

    def next(self) -> list[tuple[int, int]]:
        if len(self.order) < self.size:
            shuffled = self.pool[:]
            self.rng.shuffle(shuffled)
            self.order += shuffled
        batch, self.order = self.order[: self.size], self.order[self.size :]
        return batch


@dataclass
class _Run:
    """One attempt's training state: the probe loss, λ, why it stopped, its history and checks."""

    loss_now: float
    weight: float
    stopped: str = "steps"
    next_check: int = 0
    interval: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    loss_checked: float = field(init=False)  # the probe loss at the last probe (the stall test's baseline)

    def __post_init__(self) -> None:
        self.loss_checked = self.loss_now

    def summary(self, steps: int, rule: dict[str, Any], ceiling: float) -> dict[str, Any]:
        run = sum(1 for h in self.history if not h.get("undone"))
        return {
            "steps_run": run,
            "steps_max": steps,
            "relax_steps_run": max(0, run - steps),
            "stopped_by": self.stopped,
            **rule,
            "probe_loss_final": self.loss_now,
            "preserve_weight_final": self.weight,
            "loss_ceiling": ceiling if math.isfinite(ceiling) else None,
            # None: nothing was checked (no verifier, or the bound never reached); the CLI reports False
            "verified": None if not self.checks else self.stopped == "verified",
        }


class TrustPrompts:
    """The prompts the trust region watches (neutral prompts, the preserve concepts in the templates,
    the retain prompts) with the original encoder's encodings of them."""

    def __init__(self, backend: Any, concepts: ConceptSpec):
        self.backend = backend
        self.prompts = (
            list(NEUTRAL_PROMPTS)
            + [p for c in concepts.preserve for p in concepts.prompts(c)]
            + list(concepts.retain)
        )
        with torch.no_grad():
            self.reference = backend.encode_prompts(self.prompts)
            self.norm = self.reference.flatten(1).norm(dim=1).clamp_min(1e-8)

    def drift(self) -> float:
        """The largest relative drift ‖E_φ(p) − E_φ₀(p)‖ / ‖E_φ₀(p)‖ over the prompts, now."""
        with torch.no_grad():
            now = self.backend.encode_prompts(self.prompts)
        return float(((now - self.reference).flatten(1).norm(dim=1) / self.norm).max())


class ConceptMask:
    """Weights of the ascent's squared error: where the frozen model's prediction changes when the
    concept word of the caption is swapped for another concept (:attr:`FewShotConfig.concept_mask`).

    The alternatives are the data source's concepts of the same kind, else the spec's preserve list (a
    seeded sample of at most ``mismatch_concepts``); a concept with none is trained on the plain loss.
    Every caption the training can draw, and its swaps, are encoded once with the original encoder:
    the weights always come from the original model (only the text encoder trains, the denoiser is frozen).
    """

    def __init__(
        self, backend: Any, concepts: ConceptSpec, data: list[dict], config: FewShotConfig, rng, mix: float
    ):
        self.mix = mix
        source = source_of(backend)
        self.alternatives: dict[str, list[str]] = {}
        texts: set[str] = set()
        for item in data:
            concept = item["concept"]
            others = [c for c in source.same_kind_concepts(concept) or concepts.preserve if c != concept]
            if len(others) > config.mismatch_concepts:
                others = rng.sample(others, config.mismatch_concepts)
            self.alternatives[concept] = others
            captions = (
                [c for per in item["captions"] for c in per]
                if item["captions"]
                else concepts.prompts(concept)
            )
            for caption in captions:
                texts.add(caption)
                texts.update(swap_word(caption, concept, other) for other in others)
        ordered = sorted(texts)
        with torch.no_grad():
            encoded = torch.cat(
                [backend.encode_prompts(ordered[i : i + 32]) for i in range(0, len(ordered), 32)]
            )
        self.encoding = dict(zip(ordered, encoded))

    def encode(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([self.encoding[c] for c in captions])

    @torch.no_grad()
    def weights(
        self, backend: Any, x_t: torch.Tensor, t: torch.Tensor, captions: list[str], swaps: list[list[str]]
    ) -> torch.Tensor | None:
        """Per-element weights, shaped like the prediction: (1 − m) + m · d / mean(d) per sample, with
        d the sum over ``swaps`` (each a swapped copy of ``captions``) of (f(x_t, y) − f(x_t, y'))²;
        None (the plain loss) without swaps."""
        if not swaps:
            return None
        own = backend.predict_noise(x_t, t, self.encode(captions)).float()
        d = torch.zeros_like(own)
        for swapped in swaps:
            d += (own - backend.predict_noise(x_t, t, self.encode(swapped)).float()).pow(2)
        mean = d.flatten(1).mean(1).view(-1, *[1] * (d.ndim - 1))
        w = torch.where(mean > 0, d / mean.clamp_min(1e-30), torch.ones_like(d))
        return (1 - self.mix) + self.mix * w

    def swaps(
        self, captions: list[str], concepts_of: list[str], rng: random.Random | None
    ) -> list[list[str]]:
        """Swapped copies of ``captions``: the j-th alternative of each caption's concept for every j
        (``rng`` None) or one alternative drawn per caption (``rng``)."""
        if rng is None:
            k = min(len(self.alternatives.get(c, [])) for c in concepts_of)
            return [
                [swap_word(c, w, self.alternatives[w][j]) for c, w in zip(captions, concepts_of)]
                for j in range(k)
            ]
        if not all(self.alternatives.get(k) for k in concepts_of):
            return []
        return [[swap_word(c, k, rng.choice(self.alternatives[k])) for c, k in zip(captions, concepts_of)]]


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error, each element weighted (``weight`` None: the plain mean)."""
    error = (pred.float() - target.float()).pow(2)
    return error.mean() if weight is None else (weight * error).mean()


def kept_enough(verifier: Verifier, check: dict[str, Any], config: FewShotConfig) -> bool:
    """Whether the preserve concepts' samples are still recognised about as often as the original's."""
    if check["kept"] is None:
        return True
    pooled = check["kept"] >= verifier.baseline_kept - config.verify_keep_drop
    return pooled and verifier.most_lost(check) <= config.verify_keep_each


def attempt_score(report: dict[str, Any]) -> float | None:
    """How far an attempt's last check is from a verified erasure (None without verification): the share
    of samples still showing a target plus the share of preserve samples lost against the original."""
    verification = report.get("verification") or {}
    checks = verification.get("checks") or []
    if not checks:
        return None
    last = checks[-1]
    lost = 0.0 if last["kept"] is None else max(0.0, verification["baseline_kept"] - last["kept"])
    return max(last["present"].values()) + lost


def verify_sampling(backend: Any, config: FewShotConfig) -> tuple[int, float]:
    """The sampler settings of the verification: the model's recommended ones (its manifest's, via
    ``backend.recommended_sampling``) when it declares them, else generate_steps / generate_guidance."""
    recommended = getattr(backend, "recommended_sampling", None) or {}
    return (
        int(recommended.get("steps", config.generate_steps)),
        float(recommended.get("guidance", config.generate_guidance)),
    )


# ---- timesteps ----------------------------------------------------------------------------------------
def timesteps_at(u: torch.Tensor, weights: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Timesteps at quantiles ``u`` ∈ [0, 1) of the piecewise-uniform distribution that gives the b-th of
    ``len(weights)`` equal slices of the schedule probability ∝ ``weights[b]`` (inverse CDF)."""
    bins = weights.numel()
    cdf = torch.cumsum(weights.double(), 0) / weights.double().sum()
    b = torch.searchsorted(cdf, u.double(), right=True).clamp(max=bins - 1)
    start = torch.where(b > 0, cdf[(b - 1).clamp_min(0)], torch.zeros_like(u, dtype=torch.double))
    inside = ((u.double() - start) / (cdf[b] - start).clamp_min(1e-12)).clamp(0, 1)
    t = ((b.double() + inside) / bins * num_train_timesteps).long()
    return t.clamp(0, num_train_timesteps - 1)


@torch.no_grad()
def caption_gains(
    backend: Any, concepts: ConceptSpec, data: list[dict], bins: int, generator: torch.Generator
) -> torch.Tensor:
    """Per slice of the schedule, how much the concept's captions lower the frozen model's loss on its
    images: L_∅(t) − L_c(t) (the per-timestep term of the gap between the unconditional and conditional
    ELBOs), one random timestep in the slice and one fixed noise per image."""
    x0 = torch.cat([item["latents"][:, 0] for item in data])
    captions = []
    for item in data:
        for i in range(item["latents"].shape[0]):
            if item["captions"]:
                captions.append(item["captions"][i][0])
            else:
                captions.append(rng_choice(concepts.prompts(item["concept"]), i))
    cond, uncond = backend.encode_prompts(captions), backend.encode_prompts([""] * len(captions))
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    total = backend.num_train_timesteps
    gains = torch.zeros(bins)
    for b in range(bins):
        u = (b + torch.rand(x0.shape[0], generator=generator)) / bins
        t = (u * total).long().clamp(max=total - 1).to(x0.device)
        x_t, target = backend.add_noise(x0, noise, t), backend.training_target(x0, noise, t).float()
        own = F.mse_loss(backend.predict_noise(x_t, t, cond).float(), target)
        empty = F.mse_loss(backend.predict_noise(x_t, t, uncond).float(), target)
        gains[b] = float(empty - own)
    return gains


def rng_choice(options: list[str], i: int) -> str:
    """Cycle through ``options`` deterministically (template i mod len)."""
    return options[i % len(options)]
