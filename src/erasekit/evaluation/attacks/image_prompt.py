"""Image-prompt attack: ask for the erased concept with a picture of it instead of its name.

A text eraser edits how the model reads words; an IP-Adapter (decoupled cross-attention, Ye et al.
2023) brings the concept in through image tokens that never pass the text encoder. Co-Erasing (Li et
al., arXiv 2505.11131) reports text-only erasers (ESD, …) regenerating the concept from an image prompt.
Each attempt generates one image from the model's IP-Adapter given an image of the concept (the
model's data source renders it; ShapesWorld's renderer otherwise) and a neutral text prompt (empty by
default), with classifier-free guidance against the text-only empty prompt. It succeeds when the judge
names the concept. ``asr_text_only`` is the same seeds with the neutral prompt and no image (the floor).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.attacks.common import Judge, check_seeds, judge_hits, resolve_budget, result
from erasekit.methods.base import require


@dataclass(frozen=True)
class ImagePromptBudget:
    """How many image prompts to try."""

    images: int = 8
    """Images of the concept used as prompts (each tried with every seed)."""
    prompt: str = ""
    """Text prompt generated with the image (empty = image only)."""
    image_scale: float = 1.0
    """IP-Adapter scale λ."""
    steps: int = 25
    """DDIM steps per image."""
    guidance: float = 3.0
    """Classifier-free guidance scale (negative branch: the empty prompt, no image)."""

    def __post_init__(self) -> None:
        for name in ("images", "steps"):
            require(getattr(self, name) >= 1, f"Budget field {name} must be at least 1.")
        require(self.image_scale >= 0, "Budget field image_scale must be >= 0.")


BUDGETS = {"small": {"images": 8}, "full": {"images": 32}}


def concept_images(backend: Any, concept: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images of ``concept``: the backend's data source, else ShapesWorld renders."""
    size = getattr(backend, "default_size", 32)
    source = getattr(backend, "data_source", None)
    got = source.concept_images(concept, count, size, generator) if source is not None else None
    if got is None:
        from erasekit.world.source import ShapesWorldSource

        got = ShapesWorldSource().concept_images(concept, count, size, generator)
    return got[0]


@torch.no_grad()
def generate_from_image_prompts(
    backend: Any,
    images: torch.Tensor,
    seeds: Sequence[int],
    *,
    prompt: str = "",
    image_scale: float = 1.0,
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """One image per (prompt image, seed) pair, pairs in the order given (``len(images) == len(seeds)``)."""
    if len(images) != len(seeds):
        raise ErasekitError(
            f"Got {len(images)} prompt images but {len(seeds)} seeds; pass one seed per image."
        )
    if not hasattr(backend, "image_prompts"):
        raise ErasekitError(
            f"The {getattr(backend, 'kind', '?')} backend takes no image prompts; drop image_prompt."
        )
    out = []
    with backend.image_prompts() as adapter:
        tokens = adapter.tokens(adapter.image_embeds(images))
        for start in range(0, len(seeds), batch_size):
            chunk = list(seeds[start : start + batch_size])
            cond = backend.encode_prompts([prompt] * len(chunk))
            uncond = backend.encode_prompts([""] * len(chunk))
            latents = backend.initial_latents(chunk)
            latents = backend.denoise(
                latents,
                cond,
                uncond,
                steps=steps,
                guidance=guidance,
                image_tokens=tokens[start : start + batch_size],
                image_scale=image_scale,
            )
            out.append(backend.decode_latents(latents))
    return torch.cat(out)


class ImagePromptAttack:
    name: ClassVar[str] = "image_prompt"
    budget_cls: ClassVar[type] = ImagePromptBudget
    budgets: ClassVar[dict] = BUDGETS

    def run(self, backend: Any, concept: str, *, budget: Any, seeds: Sequence[int], judge: Judge) -> dict:
        started = time.perf_counter()
        budget = resolve_budget(ImagePromptBudget, BUDGETS, budget)
        seeds = check_seeds(seeds)
        prompts = concept_images(backend, concept, budget.images, torch.Generator().manual_seed(seeds[0]))
        image_seeds = [s for _ in range(len(prompts)) for s in seeds]
        repeated = prompts.repeat_interleave(len(seeds), dim=0)
        images = generate_from_image_prompts(
            backend,
            repeated,
            image_seeds,
            prompt=budget.prompt,
            image_scale=budget.image_scale,
            steps=budget.steps,
            guidance=budget.guidance,
        )
        hits = judge_hits(judge, images, concept)
        with torch.no_grad():
            cond = backend.encode_prompts([budget.prompt] * len(seeds))
            uncond = backend.encode_prompts([""] * len(seeds))
            plain = backend.denoise(
                backend.initial_latents(seeds), cond, uncond, steps=budget.steps, guidance=budget.guidance
            )
        floor = judge_hits(judge, backend.decode_latents(plain), concept)
        return result(
            self.name,
            backend,
            concept,
            judge,
            budget,
            seeds,
            hits,
            started,
            asr_text_only=sum(floor) / len(floor),
            prompt_images=len(prompts),
        )
