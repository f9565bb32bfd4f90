"""Checking an erasure while it trains, with the original model as the referee.

A loss that rises is no proof that a concept is gone: gradient ascent on the denoising loss can raise
it by distorting what the caption leaves unsaid (a colour, the fine texture of a render) while the
concept is still drawn in every sample. What a user checks is the samples. :class:`Verifier` does that
without a judge: it samples prompts from the model *being trained* and asks the *original* model which
concept each sample shows, as a diffusion classifier (Li et al., ICCV 2023, "Your Diffusion Model is
Secretly a Zero-Shot Classifier"): the candidate caption — the prompt with the concept word swapped for
each alternative — whose denoising loss, summed over fixed timesteps and noise, is lowest.

Two questions are asked at every check:

* **erased**: the share of samples of each target's prompts still classified as the target;
* **kept**: the share of samples of preserve concepts' prompts still classified as their own concept,
  compared with the same share for the original model's samples (measured once at the start), pooled
  and per concept (``kept_each``, :meth:`Verifier.most_lost`). The preserve prompts name no target:
  a caption of red that says "grid" would show the erasure of grid, not collateral damage to red.

Candidates come from the backend's data source (concepts of the same kind) or, for a source that knows
none, the spec's preserve list. The caption encodings are computed once, before training, with the
original text encoder, and the denoiser is frozen; only the samples change. Imports torch only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from erasekit.concepts import ConceptSpec, swap_word
from erasekit.sources import prompts_naming, source_of


@dataclass
class _Probe:
    concept: str
    candidates: list[str]  # alternatives, the concept itself not included
    prompts: list[str]
    seeds: list[int]
    captions: list[torch.Tensor] = field(default_factory=list)  # [concept, *candidates] encodings
    confirm_seeds: list[int] = field(default_factory=list)  # a second, independent draw of the samples


def _alternatives(source: Any, concept: str, pool: list[str], limit: int, rng: random.Random) -> list[str]:
    others = [c for c in source.same_kind_concepts(concept) or pool if c != concept]
    return rng.sample(others, limit) if len(others) > limit else others


def _prompts(
    source: Any, concepts: ConceptSpec, concept: str, n: int, rng: random.Random, avoid: list[str] = ()
) -> list[str]:
    seed = rng.randrange(2**31)
    prompts = prompts_naming(source, concept, concepts.templates, n, avoid=avoid, seed=seed)
    return prompts if len(prompts) >= n else [prompts[i % len(prompts)] for i in range(n)]


def keep_allocation(
    near: list[str], far: list[str], keep_samples: int, keep_concepts: int, rng: random.Random
) -> list[tuple[str, int]]:
    """(concept, samples) of the preservation check. The targets' own kind (``near``), where an
    erasure's collateral concentrates, gets three quarters of ``keep_samples`` split evenly, rounded
    up (all of them when there is nothing else), and a seeded sample of the rest gets one each, up to
    ``keep_concepts`` concepts in all. Without concepts of the targets' kind the samples are split
    evenly over a seeded sample of ``keep_concepts``."""
    if keep_samples <= 0:
        return []
    if not near:
        kept = rng.sample(far, keep_concepts) if len(far) > keep_concepts else far
        return [(c, max(1, keep_samples // max(1, len(kept)))) for c in kept]
    budget = (3 * keep_samples) // 4 if far else keep_samples
    per = max(1, -(-budget // len(near)))  # rounded up
    room = max(0, min(keep_samples - per * len(near), keep_concepts - len(near)))
    rest = rng.sample(far, room) if len(far) > room else far
    return [(c, per) for c in near] + [(c, 1) for c in rest]


class Verifier:
    """Diffusion-classifier checks of erasure (targets) and preservation (a sample of preserve concepts).

    Args:
        backend: The model (its current text encoder is the original when the verifier is built).
        concepts: The spec: targets to check, preserve concepts to keep.
        samples: Samples per target at each check.
        keep_samples: Samples over all the preserve concepts checked, at each check (see
            :func:`keep_allocation`).
        keep_concepts: Most preserve concepts checked: those of the targets' kind first, then a seeded
            sample of the rest.
        max_candidates: Most alternatives per classification.
        timesteps: Stratified timesteps the classifier sums the loss over.
        steps, guidance: Sampler settings of the samples.
    """

    def __init__(
        self,
        backend: Any,
        concepts: ConceptSpec,
        *,
        samples: int,
        keep_samples: int,
        keep_concepts: int,
        max_candidates: int,
        timesteps: int,
        steps: int,
        guidance: float,
        generator: torch.Generator,
        rng: random.Random,
    ):
        self.timesteps, self.steps, self.guidance = timesteps, steps, guidance
        source = source_of(backend)
        targets = [t.text for t in concepts.targets]
        preserve = [c for c in concepts.preserve if c not in targets]
        self.erase: list[_Probe] = []
        for concept in targets:
            others = _alternatives(source, concept, preserve, max_candidates, rng)
            if others:
                self.erase.append(
                    _Probe(concept, others, _prompts(source, concepts, concept, samples, rng), [])
                )
        self.keep: list[_Probe] = []
        # the targets' own kind first (where an erasure's collateral concentrates), then a seeded sample
        near = [c for t in targets for c in source.same_kind_concepts(t) if c in preserve]
        near = list(dict.fromkeys(near))[:keep_concepts]
        far = [c for c in preserve if c not in near]
        for concept, per in keep_allocation(near, far, keep_samples, keep_concepts, rng):
            # a damaged concept may now look like the erased one: targets are always candidates
            pool = [c for c in preserve if c != concept]
            same = source.same_kind_concepts(concept)
            erased = [t for t in targets if not same or t in same]
            others = list(dict.fromkeys(_alternatives(source, concept, pool, max_candidates, rng) + erased))
            if others:
                # captions of a kept concept that name a target would show the erasure, not collateral
                prompts = _prompts(source, concepts, concept, per, rng, avoid=targets)
                self.keep.append(_Probe(concept, others, prompts, []))
        for probe in self.erase + self.keep:
            probe.seeds = [int(torch.randint(2**31 - 1, (1,), generator=generator)) for _ in probe.prompts]
            probe.confirm_seeds = [
                int(torch.randint(2**31 - 1, (1,), generator=generator)) for _ in probe.prompts
            ]
            with torch.no_grad():
                probe.captions = [
                    backend.encode_prompts([swap_word(p, probe.concept, c) for p in probe.prompts])
                    for c in [probe.concept, *probe.candidates]
                ]
        self.noise_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        baseline = self.check(backend) if self.keep else {"kept": None, "kept_each": {}}
        self.baseline_kept = baseline["kept"]
        self.baseline_each: dict[str, int] = baseline.get("kept_each") or {}

    @property
    def active(self) -> bool:
        return bool(self.erase)

    def describe(self) -> dict[str, Any]:
        return {
            "erase": {p.concept: p.candidates for p in self.erase},
            "keep": {p.concept: p.candidates for p in self.keep},
            "baseline_kept": self.baseline_kept,
            "keep_samples": {p.concept: len(p.prompts) for p in self.keep},
        }

    def most_lost(self, check: dict[str, Any]) -> float:
        """The largest share of its samples any one preserve concept lost in ``check`` against the
        original's count."""
        each = check.get("kept_each") or {}
        sizes = {p.concept: len(p.prompts) for p in self.keep}
        return max(((self.baseline_each.get(c, 0) - n) / sizes[c] for c, n in each.items()), default=0.0)

    @torch.no_grad()
    def sample(self, backend: Any, *, confirm: bool = False) -> torch.Tensor:
        """The current model's samples of every probe prompt (targets first, then preserve concepts);
        ``confirm`` draws them from a second, independent set of seeds."""
        probes = self.erase + self.keep
        prompts = [p for probe in probes for p in probe.prompts]
        seeds = [s for probe in probes for s in (probe.confirm_seeds if confirm else probe.seeds)]
        return backend.sample(prompts, seeds, steps=self.steps, guidance=self.guidance)

    def check(self, backend: Any, *, confirm: bool = False) -> dict[str, Any]:
        """:meth:`classify` of the current model's :meth:`sample` (the denoiser must be the original:
        methods that train only text encoders, as fewshot does). A check that passes after many that
        did not may have passed by chance; confirming it on the second seeds removes most of that."""
        return self.classify(backend, self.sample(backend, confirm=confirm))

    @torch.no_grad()
    def classify(self, backend: Any, images: torch.Tensor) -> dict[str, Any]:
        """``{"present": {target: share still classified as it}, "kept": share of preserve samples
        classified as their own concept (None without preserve probes)}`` for :meth:`sample`'s images,
        with ``backend``'s denoiser as the referee and the caption encodings of the original encoder."""
        probes = self.erase + self.keep
        x0 = backend.encode_images(images)
        hits, start = [], 0
        for probe in probes:
            n = len(probe.prompts)
            hits.append(self._own_share(backend, x0[start : start + n], probe.captions))
            start += n
        present = {p.concept: h for p, h in zip(self.erase, hits[: len(self.erase)])}
        kept_hits = hits[len(self.erase) :]
        kept = None
        if self.keep:
            kept = sum(h * len(p.prompts) for h, p in zip(kept_hits, self.keep)) / sum(
                len(p.prompts) for p in self.keep
            )
        # per preserve concept, how many of its samples are still recognised as it
        each = {p.concept: round(h * len(p.prompts)) for p, h in zip(self.keep, kept_hits)}
        return {"present": present, "kept": kept, "kept_each": each}

    def _own_share(self, backend: Any, x0: torch.Tensor, captions: list[torch.Tensor]) -> float:
        """Share of ``x0`` whose lowest summed denoising loss is under caption 0 (the own concept's)."""
        total = backend.num_train_timesteps
        generator = torch.Generator().manual_seed(self.noise_seed)
        losses = torch.zeros(len(captions), x0.shape[0])
        for k in range(self.timesteps):
            t = torch.full(
                (x0.shape[0],), min(int((k + 0.5) / self.timesteps * total), total - 1), dtype=torch.long
            )
            t = t.to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            x_t, target = backend.add_noise(x0, noise, t), backend.training_target(x0, noise, t).float()
            for c, cond in enumerate(captions):
                pred = backend.predict_noise(x_t, t, cond).float()
                losses[c] += (pred - target).pow(2).flatten(1).mean(1).cpu()
        return float((losses.argmin(0) == 0).float().mean())
