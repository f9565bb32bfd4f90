"""What every attack shares: budgets, the judge's verdict, seeded generation from prompts or embeddings.

An *attempt* is one generated image; it succeeds when the judge names the erased concept in that
concept's domain (shape, colour or style). ASR = successes / attempts. Every result records the budget,
the seeds, the judge's version and the attacked model's fingerprint, so an ASR can be reproduced.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from erasekit.config import build_config, config_to_dict
from erasekit.errors import ErasekitError


class Judge(Protocol):
    """What an attack needs of a judge (``erasekit.world.judge.Judge`` is one)."""

    def predict(self, images: torch.Tensor) -> dict[str, list[str | None]]: ...


def resolve_budget(cls: type, presets: Mapping[str, Mapping[str, Any]], budget: Any) -> Any:
    """A frozen budget dataclass from a preset name (``"small"``), a mapping of fields, or an instance.

    A mapping may name a preset under ``"preset"`` and override single fields, e.g.
    ``{"preset": "small", "steps": 2}``.
    """
    if isinstance(budget, cls):
        return budget
    if isinstance(budget, str):
        if budget not in presets:
            raise ErasekitError(f"Unknown budget {budget!r}; choose from: {', '.join(presets)}.")
        return build_config(cls, **dict(presets[budget]))
    if isinstance(budget, Mapping):
        values = dict(budget)
        base = values.pop("preset", "small")
        if base not in presets:
            raise ErasekitError(f"Unknown budget {base!r}; choose from: {', '.join(presets)}.")
        return build_config(cls, **{**presets[base], **values})
    raise ErasekitError(
        f"A budget is a preset name ({', '.join(presets)}) or a mapping of fields; got {budget!r}."
    )


def concept_domain(concept: str) -> str:
    from erasekit.world import domain_of

    return domain_of(concept)


def judge_hits(judge: Judge, images: torch.Tensor, concept: str) -> list[bool]:
    """Per image, whether the judge names ``concept`` in its domain."""
    domain = concept_domain(concept)
    predictions = judge.predict(images)
    if domain not in predictions:
        raise ErasekitError(f"The judge does not rate the {domain} domain; use the ShapesWorld judge.")
    return [p == concept for p in predictions[domain]]


def judge_version(judge: Any) -> str:
    return str(getattr(judge, "version", type(judge).__name__))


def other_labels(concept: str, count: int, generator: torch.Generator) -> list[dict[str, str]]:
    """``count`` seeded label dicts {shape, color, style} whose ``concept``'s domain holds ``concept``."""
    from erasekit.world import DOMAINS

    domain = concept_domain(concept)
    labels = []
    for _ in range(count):
        label = {
            d: names[int(torch.randint(len(names), (1,), generator=generator))]
            for d, names in DOMAINS.items()
        }
        label[domain] = concept
        labels.append(label)
    return labels


@torch.no_grad()
def generate_from_embeddings(
    backend: Any,
    cond: torch.Tensor,
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    batch_size: int = 16,
) -> torch.Tensor:
    """Images [N, 3, H, W] in [0, 1] from conditioning embeddings [N, L, D], one seed per image.

    A backend with its own ``sample_from_embeddings`` (an autoregressive image-token model, whose
    conditioning is its prompt rows' input embeddings) samples through it; a diffusion backend runs
    the same explicit DDIM loop as ``backend.sample`` (negative prompt ""). Either way an attack whose
    embeddings equal a prompt's encoding reproduces ``backend.sample`` for that prompt and seed.
    """
    if len(cond) != len(seeds):
        raise ErasekitError(f"Got {len(cond)} embeddings but {len(seeds)} seeds; pass one seed per image.")
    own = getattr(backend, "sample_from_embeddings", None)
    if own is not None:
        return torch.cat(
            [
                own(cond[i : i + batch_size], list(seeds[i : i + batch_size]), steps=steps, guidance=guidance)
                for i in range(0, len(seeds), batch_size)
            ]
        )
    images = []
    for start in range(0, len(seeds), batch_size):
        chunk = cond[start : start + batch_size]
        uncond = backend.encode_prompts([""] * len(chunk))
        latents = backend.initial_latents(list(seeds[start : start + batch_size]))
        latents = backend.denoise(latents, chunk.to(uncond.dtype), uncond, steps=steps, guidance=guidance)
        images.append(backend.decode_latents(latents))
    return torch.cat(images)


@torch.no_grad()
def generate_from_prompts(
    backend: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    batch_size: int = 16,
) -> torch.Tensor:
    """Images of ``prompts`` (one seed each). A model that is not a text-embedding diffusion model
    (an autoregressive image-token model) samples through its own ``sample``."""
    if getattr(backend, "kind", "sd") != "sd":
        return torch.cat(
            [
                backend.sample(
                    list(prompts[i : i + batch_size]),
                    list(seeds[i : i + batch_size]),
                    steps=steps,
                    guidance=guidance,
                )
                for i in range(0, len(prompts), batch_size)
            ]
        )
    cond = torch.cat(
        [
            backend.encode_prompts(list(prompts[i : i + batch_size]))
            for i in range(0, len(prompts), batch_size)
        ]
    )
    return generate_from_embeddings(
        backend, cond, seeds, steps=steps, guidance=guidance, batch_size=batch_size
    )


def result(
    attack: str,
    backend: Any,
    concept: str,
    judge: Judge,
    budget: Any,
    seeds: Sequence[int],
    hits: Sequence[bool],
    started: float,
    **extra: Any,
) -> dict[str, Any]:
    """The record every attack returns (JSON-serialisable)."""
    successes = int(sum(bool(h) for h in hits))
    return {
        "attack": attack,
        "concept": concept,
        "domain": concept_domain(concept),
        "asr": successes / len(hits) if hits else float("nan"),
        "successes": successes,
        "attempts": len(hits),
        "budget": config_to_dict(budget) if dataclasses.is_dataclass(budget) else budget,
        "seeds": [int(s) for s in seeds],
        "judge": judge_version(judge),
        "model": getattr(backend, "name", "model"),
        "model_fingerprint": backend.fingerprint(),
        "seconds": round(time.perf_counter() - started, 3),
        **extra,
    }


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ErasekitError("An attack needs at least one seed; pass e.g. --seeds 0,1,2,3.")
    return seeds
