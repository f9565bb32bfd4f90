"""Caption templates for ShapesWorld renders, and the canonical evaluation prompt.

Training captions come from full and partial templates, with synonyms for a share of the concept
words. :func:`prompt_for` writes the one canonical prompt the evaluation protocol uses; it is also one
of the training templates, so the shipped model has seen exactly that wording.
"""

from __future__ import annotations

import re
import string

import torch

from erasekit.errors import ErasekitError
from erasekit.world.concepts import SYNONYMS, check_concept

# The first template is the canonical one (prompt_for). Full templates name all three concepts;
# partial ones leave some out, so the model also learns each concept on its own.
FULL_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} on a {style} background",
    "a {color} {shape} on a {style} background",
    "a {style} background with a {color} {shape}",
    "{color} {shape}, {style} background",
)
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a {shape} on a {style} background",
    "a {color} shape on a {style} background",
    "a {shape}",
    "a {color} shape",
    "a {style} background",
)
TEMPLATES: tuple[str, ...] = FULL_TEMPLATES + PARTIAL_TEMPLATES
EMPTY_TEMPLATES: tuple[str, ...] = ("a {style} background", "an empty {style} background")

_VOWEL_WORD = re.compile(r"\ba (?=[aeiou])")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _fix_articles(text: str) -> str:
    """'a orange star' -> 'an orange star' (the same rule for training captions and prompts)."""
    return _VOWEL_WORD.sub("an ", text)


def fill(template: str, **words: str) -> str:
    """Fill a template with words and fix the articles."""
    return _fix_articles(template.format(**words))


def prompt_for(shape: str | None = None, color: str | None = None, style: str | None = None) -> str:
    """The canonical evaluation prompt, e.g. ``"a red star on a striped background"``.

    Any subset of the three concepts may be given; an empty call gives the empty prompt.

    Raises:
        ErasekitError: a name is not a concept of its domain.
    """
    if shape is not None:
        check_concept(shape, "shape")
    if color is not None:
        check_concept(color, "color")
    if style is not None:
        check_concept(style, "style")
    if shape and color and style:
        return fill(FULL_TEMPLATES[0], shape=shape, color=color, style=style)
    if shape and color:
        return fill("a {color} {shape}", shape=shape, color=color)
    if shape and style:
        return fill("a {shape} on a {style} background", shape=shape, style=style)
    if color and style:
        return fill("a {color} shape on a {style} background", color=color, style=style)
    if shape:
        return fill("a {shape}", shape=shape)
    if color:
        return fill("a {color} shape", color=color)
    if style:
        return fill("a {style} background", style=style)
    return ""


def _pick(seq, generator: torch.Generator):
    return seq[int(torch.randint(len(seq), (1,), generator=generator))]


def _word(concept: str, generator: torch.Generator, synonym_prob: float) -> str:
    if synonym_prob > 0 and float(torch.rand((), generator=generator)) < synonym_prob:
        return _pick(SYNONYMS[concept], generator)
    return concept


def caption(
    labels: dict,
    generator: torch.Generator,
    synonym_prob: float,
    *,
    full_prob: float = 0.7,
) -> str:
    """A random training caption for an image with ground-truth ``labels``.

    Args:
        labels: ``{"shape", "color", "style"}``; shape and colour are None for a background-only image.
        generator: Seeds the choice of template and synonyms.
        synonym_prob: Probability, per concept word, of using a synonym instead of the concept name.
        full_prob: Probability of a template naming all three concepts (when the image has a shape).

    Returns:
        The caption (never empty; empty captions for guidance are the trainer's business).
    """
    style = labels.get("style")
    if style is None:
        raise ErasekitError("caption labels need a 'style'; got " + repr(labels))
    words = {"style": _word(style, generator, synonym_prob)}
    if labels.get("shape") is None:
        return fill(_pick(EMPTY_TEMPLATES, generator), **words)
    words["shape"] = _word(labels["shape"], generator, synonym_prob)
    words["color"] = _word(labels["color"], generator, synonym_prob)
    if float(torch.rand((), generator=generator)) < full_prob:
        template = _pick(FULL_TEMPLATES, generator)
    else:
        template = _pick(PARTIAL_TEMPLATES, generator)
    return fill(template, **{k: v for k, v in words.items() if k in _fields(template)})
