"""ShapesWorld as a data source: its captions, concept inventory and renderer behind erasekit.sources.

Methods never import the world; the model zoo attaches :class:`ShapesWorldSource` to ShapesWorld
models, and methods ask it — as they would ask a real model's caption set — for retain prompts,
related concepts, captions in the world's style and truthfully captioned renders of a concept.
"""

from __future__ import annotations

from typing import Any

import torch

from erasekit.concepts import has_word
from erasekit.sources import DataSource
from erasekit.world.captions import caption, fill, prompt_for
from erasekit.world.concepts import DOMAINS, all_concepts, domain_of
from erasekit.world.render import render, sample_labels

# Caption patterns the world's templates are made from (the world's own caption styles).
_TEMPLATE_PATTERNS = (
    "a {color} {shape} on a {style} background",
    "a {style} background with a {color} {shape}",
    "a {color} {shape}",
    "a {shape} on a {style} background",
    "a {color} shape on a {style} background",
    "a {shape}",
    "a {color} shape",
    "a {style} background",
)
# Share of captions using a synonym in the SAE-style corpus (the training captions' rate).
_CORPUS_SYNONYM_PROB = 0.13


def world_templates(concept: str) -> list[str]:
    """Prompt templates in ShapesWorld's caption style with '{}' where ``concept``'s domain goes.

    The other attributes cycle through their domains, so the templates do not favour one colour or style.
    """
    domain = domain_of(concept)
    others = {d: list(c) for d, c in DOMAINS.items() if d != domain}
    out = []
    for i, pattern in enumerate(_TEMPLATE_PATTERNS):
        if "{" + domain + "}" not in pattern:
            continue
        words = {d: values[(3 * i + 1) % len(values)] for d, values in others.items()}
        words[domain] = "{}"
        out.append(fill(pattern, **words))
    return list(dict.fromkeys(out))


def _known(concept: str) -> bool:
    return concept in all_concepts()


class ShapesWorldSource(DataSource):
    """The data a ShapesWorld model comes with (for the shipped model and `erasekit world train` folders)."""

    name = "shapesworld"
    preset = "shapesworld"  # methods' presets tuned on the shipped model (ESD: 250 iterations at lr 1e-3, key/value re-solve)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "concepts": len(all_concepts())}

    def retain_prompts(self, n: int, *, avoid=(), seed: int = 0) -> list[str]:
        """World captions of random labels that name none of ``avoid`` (as a label or a word)."""
        generator = torch.Generator().manual_seed(seed)
        avoid = list(avoid)
        out: list[str] = []
        for _ in range(50 * max(n, 1)):
            if len(out) >= n:
                break
            labels = sample_labels(1, generator, p_no_shape=0.1)[0]
            if any(_known(a) and labels.get(domain_of(a)) == a for a in avoid):
                continue
            text = caption(labels, generator, _CORPUS_SYNONYM_PROB)
            if any(has_word(text, a) for a in avoid):
                continue
            out.append(text)  # duplicates kept: they are the world's caption frequencies
        return out

    def corpus(self, n: int, *, seed: int = 0) -> list[str]:
        """``n`` world captions of random labels (10 % without a shape), synonyms at the training rate."""
        generator = torch.Generator().manual_seed(seed)
        return [
            caption(labels, generator, _CORPUS_SYNONYM_PROB)
            for labels in sample_labels(n, generator, p_no_shape=0.1)
        ]

    def same_kind_concepts(self, concept: str) -> list[str]:
        if not _known(concept):
            return []
        return [c for c in DOMAINS[domain_of(concept)] if c != concept]

    def default_anchor(self, concept: str) -> str | None:
        """The next concept of ``concept``'s domain in the world's list (cyclic: star -> heart,
        red -> green, grid -> plain): a definite replacement of the same kind. The empty prompt is
        no neutral target here: the shipped model's unconditional images are themselves shapes,
        colours and styles (mapping "plain" onto it left UCE at UA 0.50)."""
        if not _known(concept):
            return None
        values = DOMAINS[domain_of(concept)]
        return values[(values.index(concept) + 1) % len(values)]

    def related_concepts(self, concept: str) -> list[str]:
        """Every other world concept, those of ``concept``'s domain first ([] for unknown words)."""
        if not _known(concept):
            return []
        same = self.same_kind_concepts(concept)
        return same + [c for c in all_concepts() if c != concept and c not in same]

    def templates(self, concept: str) -> list[str] | None:
        return world_templates(concept) if _known(concept) else None

    def concept_prompts(self, concept: str, n: int, *, seed: int = 0) -> list[str]:
        """World captions (no synonyms) of random labels with ``concept`` set, each naming it."""
        if not _known(concept):
            return []
        generator = torch.Generator().manual_seed(seed)
        domain = domain_of(concept)
        out: list[str] = []
        for _ in range(50 * max(n, 1)):
            if len(out) >= n:
                break
            labels = sample_labels(1, generator)[0]
            labels[domain] = concept
            text = caption(labels, generator, 0.0)
            if has_word(text, concept):
                out.append(text)
        return out

    def concept_images(self, concept: str, n: int, size: int, generator: torch.Generator):
        """Renders showing ``concept`` (other attributes random), each with up to 4 true captions naming it.

        Captions are the world's captions of each render's own labels: templates that fix the other
        attributes ("a green {}") would contradict the render (measured in fewshot: the concept's loss
        then sat above the empty prompt's).
        """
        if not _known(concept):
            return None
        images, _, captions = self.labelled_images(concept, n, size, generator)
        return images, captions

    def labelled_images(
        self, concept: str, n: int, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[dict[str, str]], list[list[str]]]:
        """:meth:`concept_images` with each render's labels: (images, labels, captions)."""
        domain = domain_of(concept)
        columns = {}
        for d in ("shape", "color", "style"):
            options = DOMAINS[d]
            columns[d] = [options[i] for i in torch.randint(len(options), (n,), generator=generator).tolist()]
        columns[domain] = [concept] * n
        labels = [{"shape": a, "color": b, "style": c} for a, b, c in zip(*columns.values())]
        images = render(columns["shape"], columns["color"], columns["style"], size=size, generator=generator)
        return images, labels, [_captions_of(label, concept, 4, generator) for label in labels]


def _captions_of(labels: dict[str, str], concept: str, k: int, generator: torch.Generator) -> list[str]:
    out: list[str] = []
    for _ in range(20 * k):
        text = caption(labels, generator, 0.0)
        if has_word(text, concept) and text not in out:
            out.append(text)
            if len(out) == k:
                break
    return out or [prompt_for(**labels)]
