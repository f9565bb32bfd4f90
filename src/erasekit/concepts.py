"""What to erase, what to map it to, what to keep; the prompt templates that put concepts in context."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from erasekit.errors import ErasekitError

# Object and style templates in the spirit of the few-shot unlearning code (Fuchi & Takagi 2024) and
# textual inversion; "{}" is the concept.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a rendering of a {}",
    "a drawing of a {}",
)
STYLE_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a painting in the style of {}",
    "an image in the style of {}",
    "a picture in the style of {}",
)


def has_word(text: str, word: str) -> bool:
    """Whether ``text`` contains ``word`` (one or several words) as whole words."""
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def fix_articles(text: str) -> str:
    """'a orange star' -> 'an orange star', 'an red star' -> 'a red star' after a word is put in or left out."""
    return re.sub(
        r"\b(a|an) (\w)", lambda m: ("an " if m.group(2).lower() in "aeiou" else "a ") + m.group(2), text
    )


def without_concept(template: str) -> str:
    """``template`` with its concept slot left out: "a green {} on a plain background" → "a green on a
    plain background"; an article right before the slot goes with it ("a {} on ..." → "on ...")."""
    text = re.sub(r"\b(?:a|an|the)\s+\{\}", "{}", template, flags=re.IGNORECASE).replace("{}", "")
    return fix_articles(" ".join(text.split()))


def swap_word(text: str, word: str, other: str) -> str:
    """``text`` with the whole word ``word`` replaced by ``other``, articles fixed."""
    return fix_articles(re.sub(rf"\b{re.escape(word)}\b", other, text))


@dataclass(frozen=True)
class Target:
    """One concept to erase.

    Attributes:
        text: The concept as users prompt it ("star", "Van Gogh").
        anchor: What the concept should turn into (UCE's guide, ABO's alternative); None = remove.
    """

    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class ConceptSpec:
    """A validated erasure request: targets, optional anchors, concepts to preserve, templates."""

    targets: tuple[Target, ...]
    preserve: tuple[str, ...] = ()
    templates: tuple[str, ...] = OBJECT_TEMPLATES
    kind: str = "object"
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retain: tuple[str, ...] = ()
    """Whole prompts whose images must stay (retain data), e.g. a model's own captions."""
    completed: tuple[str, ...] = ()
    """Which fields came from the model's data source rather than the user (see erasekit.sources)."""

    def __post_init__(self) -> None:
        if not self.targets:
            raise ErasekitError("No concept to erase; pass at least one --concept.")
        seen: set[str] = set()
        for text in [t.text for t in self.targets] + list(self.preserve):
            key = _norm(text)
            if not key and text in self.preserve and text not in self.erase_texts:
                if text != "":
                    raise ErasekitError(
                        'A preserve concept is only whitespace; pass "" for the unconditional prompt, or text.'
                    )
                # "" as a preserve concept is the unconditional prompt (UCE's paper script keeps it)
            elif not key:
                raise ErasekitError("A concept is empty; pass non-empty text to --concept/--preserve.")
            if key in seen:
                raise ErasekitError(
                    f"Concept {text!r} is given twice (or both erased and preserved); list each concept once."
                )
            seen.add(key)
        for target in self.targets:
            if target.anchor is not None and not _norm(target.anchor):
                raise ErasekitError(f"Anchor of {target.text!r} is empty; give anchor text or leave it out.")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ErasekitError("Every prompt template needs a '{}' placeholder for the concept.")
        if any(not _norm(prompt) for prompt in self.retain):
            raise ErasekitError("A retain prompt is empty; remove empty lines from the retain file.")
        if self.kind not in ("object", "style"):
            raise ErasekitError(f"Concept kind {self.kind!r} is unknown; use object or style.")

    @classmethod
    def from_lists(
        cls,
        concepts: Sequence[str],
        anchors: Sequence[str] = (),
        preserve: Sequence[str] = (),
        *,
        kind: str = "object",
        templates: Sequence[str] | None = None,
    ) -> ConceptSpec:
        """Build from CLI-style lists. ``anchors`` has 0, 1 (shared) or one entry per concept."""
        anchors = list(anchors)
        if len(anchors) not in (0, 1, len(concepts)):
            raise ErasekitError(
                f"Got {len(anchors)} anchors for {len(concepts)} concepts; give one anchor, or one per concept."
            )
        if len(anchors) == 1:
            anchors = anchors * len(concepts)
        targets = tuple(
            Target(text=c.strip(), anchor=(anchors[i].strip() if anchors else None))
            for i, c in enumerate(concepts)
        )
        if templates is None:
            templates = STYLE_TEMPLATES if kind == "style" else OBJECT_TEMPLATES
        return cls(
            targets=targets,
            preserve=tuple(p.strip() for p in preserve),
            templates=tuple(templates),
            kind=kind,
        )

    @property
    def erase_texts(self) -> list[str]:
        return [t.text for t in self.targets]

    def prompts(self, concept: str) -> list[str]:
        """``concept`` placed in every template; "" (the unconditional prompt) stays [""]."""
        if concept == "":
            return [""]
        return [template.format(concept) for template in self.templates]

    def to_dict(self) -> dict:
        return {
            "targets": [{"text": t.text, "anchor": t.anchor} for t in self.targets],
            "preserve": list(self.preserve),
            "templates": list(self.templates),
            "kind": self.kind,
            "retain": list(self.retain),
            "completed": list(self.completed),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConceptSpec:
        return cls(
            targets=tuple(Target(t["text"], t.get("anchor")) for t in data["targets"]),
            preserve=tuple(data.get("preserve", ())),
            templates=tuple(data.get("templates", OBJECT_TEMPLATES)),
            kind=data.get("kind", "object"),
            retain=tuple(data.get("retain", ())),
            completed=tuple(data.get("completed", ())),
        )


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
