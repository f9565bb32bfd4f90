"""Data sources: where a method's prompts, retain data and concept images come from.

A method that needs more than the concept it is asked to erase — prompts to keep (retain data), other
concepts to contrast with, captions in the model's own style, images of the concept — asks the
backend's :class:`DataSource` (``backend.data_source``), never a particular world. The model zoo
(:mod:`erasekit.zoo`) attaches the source that belongs to a model:

* ShapesWorld models get :class:`erasekit.world.source.ShapesWorldSource` (the world's captions,
  concept inventory and renderer);
* other Stable Diffusion models get :func:`packaged_captions` (2,000 MS-COCO captions shipped in the
  package, CC BY 4.0; see ``erasekit/data/README.md``);
* ``--retain FILE`` (:func:`caption_file`) replaces the retain prompts of either.

Every source describes itself (:meth:`DataSource.describe`); the runner records that in the artifact
manifest, so an artifact says which data shaped it. This module imports torch only.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from erasekit.concepts import OBJECT_TEMPLATES, STYLE_TEMPLATES, ConceptSpec, has_word
from erasekit.errors import ErasekitError

# How many retain prompts :func:`complete_spec` puts into a concept spec when the user gave none.
DEFAULT_RETAIN_PROMPTS = 64


class DataSource:
    """What a model's world offers methods. Every query has an honest empty answer.

    Subclasses override what they can provide; the defaults say "nothing known" (empty lists or None),
    and methods fall back to their own behaviour (generating images from the model, say).
    """

    name: str = "none"
    preset: str | None = None
    """The method preset tuned on this source's models (``-o preset=NAME``), used when the user names
    none and the method has one of that name; None: the methods' own defaults."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the source for manifests."""
        return {"name": self.name}

    def retain_prompts(self, n: int, *, avoid: Sequence[str] = (), seed: int = 0) -> list[str]:
        """Up to ``n`` prompts of the model's distribution that name none of the words in ``avoid``."""
        return []

    def corpus(self, n: int, *, seed: int = 0) -> list[str]:
        """``n`` prompts of the model's distribution (for statistics such as an SAE's training set)."""
        return self.retain_prompts(n, seed=seed)

    def related_concepts(self, concept: str) -> list[str]:
        """Other concepts this world knows, the closest (same kind as ``concept``) first."""
        return []

    def same_kind_concepts(self, concept: str) -> list[str]:
        """Other concepts of ``concept``'s own kind (other shapes for a shape), or []."""
        return []

    def default_anchor(self, concept: str) -> str | None:
        """What ``concept`` turns into when a method that maps it onto an anchor (UCE's guide,
        ABO's alternative) is given none: a concept of the same kind the model draws, or None
        (then the method's own no-anchor rule holds: the empty prompt for UCE, removal for ABO)."""
        return None

    def templates(self, concept: str) -> list[str] | None:
        """Prompt templates ('{}' for the concept) in the model's own caption style, or None."""
        return None

    def concept_prompts(self, concept: str, n: int, *, seed: int = 0) -> list[str]:
        """Up to ``n`` captions of the model's distribution that name ``concept``."""
        return []

    def concept_images(
        self, concept: str, n: int, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, list[list[str]]] | None:
        """``n`` images of ``concept`` [n, 3, size, size] in [0, 1] with true captions each, or None."""
        return None


@dataclass
class CaptionSource(DataSource):
    """Retain prompts from a fixed caption list (a packaged set or a user's ``--retain`` file)."""

    captions: tuple[str, ...]
    name: str = "captions"
    origin: str = ""
    user_given: bool = False
    """A user's file: leaving nothing after dropping the prompts that name the erased concept is an error."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "captions": len(self.captions)}

    def retain_prompts(self, n: int, *, avoid: Sequence[str] = (), seed: int = 0) -> list[str]:
        """Up to ``n`` captions (a seeded sample) without the words in ``avoid``: a prompt that names
        the erased concept is not retain data."""
        kept = [c for c in self.captions if not any(has_word(c, word) for word in avoid)]
        if not kept and self.user_given and self.captions:
            raise ErasekitError(
                f"Every prompt in {self.origin} names a concept being erased ({', '.join(avoid)}); give prompts without it."
            )
        if len(kept) <= n:
            return kept
        return random.Random(seed).sample(kept, n)


@dataclass
class WithRetain(DataSource):
    """``base`` with its retain prompts replaced by ``retain``'s (what ``--retain FILE`` does)."""

    base: DataSource
    retain: DataSource

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}+{self.retain.name}"

    @property
    def preset(self) -> str | None:  # type: ignore[override]
        return self.base.preset

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.describe(), "retain": self.retain.describe()}

    def retain_prompts(self, n: int, *, avoid: Sequence[str] = (), seed: int = 0) -> list[str]:
        return self.retain.retain_prompts(n, avoid=avoid, seed=seed)

    def corpus(self, n: int, *, seed: int = 0) -> list[str]:
        return self.base.corpus(n, seed=seed)

    def related_concepts(self, concept: str) -> list[str]:
        return self.base.related_concepts(concept)

    def same_kind_concepts(self, concept: str) -> list[str]:
        return self.base.same_kind_concepts(concept)

    def default_anchor(self, concept: str) -> str | None:
        return self.base.default_anchor(concept)

    def templates(self, concept: str) -> list[str] | None:
        return self.base.templates(concept)

    def concept_prompts(self, concept: str, n: int, *, seed: int = 0) -> list[str]:
        return self.base.concept_prompts(concept, n, seed=seed)

    def concept_images(self, concept, n, size, generator):
        return self.base.concept_images(concept, n, size, generator)


def read_captions(path: str | Path) -> list[str]:
    """Prompts from a file: .txt (one per line), .csv (a ``prompt``/``caption``/``text`` column) or .jsonl.

    Raises:
        ErasekitError: the file is missing, unreadable or holds no prompt.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErasekitError(
            f"Retain file {path} not found; pass a .txt (one prompt per line), .csv or .jsonl file."
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        column = next((c for c in ("prompt", "caption", "text") if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ErasekitError(f"{path.name} has no prompt, caption or text column; add one (CSV header).")
        prompts = [row[column] for row in reader]
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ErasekitError(
                    f"{path.name} line {number} is not JSON; write one object per line."
                ) from None
            value = (
                record.get("prompt", record.get("caption", record.get("text")))
                if isinstance(record, dict)
                else None
            )
            if not isinstance(value, str):
                raise ErasekitError(f"{path.name} line {number} has no prompt/caption/text string; add one.")
            prompts.append(value)
    else:
        prompts = text.splitlines()
    prompts = [" ".join(p.split()) for p in prompts if p and p.strip()]
    if not prompts:
        raise ErasekitError(f"{path.name} holds no prompt; put one prompt per line (or a prompt column).")
    return list(dict.fromkeys(prompts))


def caption_file(path: str | Path) -> CaptionSource:
    """A user's retain prompts (``--retain FILE``)."""
    captions = read_captions(path)
    return CaptionSource(
        tuple(captions), name="retain-file", origin=str(Path(path).expanduser()), user_given=True
    )


def packaged_captions() -> CaptionSource:
    """The packaged MS-COCO captions (CC BY 4.0), the retain source of real Stable Diffusion models."""
    text = resources.files("erasekit").joinpath("data/coco_captions.txt").read_text(encoding="utf-8")
    captions = tuple(line.strip() for line in text.splitlines() if line.strip())
    return CaptionSource(captions, name="coco-captions", origin="erasekit/data/coco_captions.txt")


def prompts_naming(
    source: DataSource,
    concept: str,
    templates: Sequence[str],
    n: int,
    *,
    avoid: Sequence[str] = (),
    seed: int = 0,
) -> list[str]:
    """Prompts that name ``concept`` the way the model is prompted: up to ``n`` of the source's own
    captions of it that name none of ``avoid`` (the concepts being erased: a caption of "star" may
    well be "a red star", which must not be kept while erasing red), else ``concept`` in each of
    ``templates`` (a target's templates can make nonsense of a concept of another kind: "a {} square"
    with "heart" in it)."""
    captions = source.concept_prompts(concept, 4 * n, seed=seed)
    kept = [c for c in captions if not any(has_word(c, word) for word in avoid)][:n]
    return kept or [t.format(concept) for t in templates]


def source_of(backend: Any) -> DataSource:
    """The backend's data source (an empty one when the model came without any)."""
    source = getattr(backend, "data_source", None)
    return source if isinstance(source, DataSource) else DataSource()


def complete_spec(
    concepts: ConceptSpec,
    source: DataSource,
    *,
    preserve: bool = True,
    anchors: bool = False,
    retain_prompts: int = DEFAULT_RETAIN_PROMPTS,
    seed: int = 0,
) -> ConceptSpec:
    """Fill what the user left out of ``concepts`` from ``source``; what the user gave is kept as is.

    * a target without an anchor (and ``anchors``, for methods that map a concept onto one): the
      source's :meth:`DataSource.default_anchor`, unless that is itself being erased;
    * no preserve concepts (and ``preserve``): the source's related concepts of every target, minus
      the targets (anchors included: their own images must stay);
    * the default templates: the source's templates in the model's caption style (when every target
      gets the same ones; otherwise the defaults stay);
    * no retain prompts: up to ``retain_prompts`` of the source's, naming no target concept.

    ``completed`` on the result lists which parts came from the source, for the manifest.
    """
    filled: list[str] = []
    erased = concepts.erase_texts
    changes: dict[str, Any] = {}
    if anchors and any(t.anchor is None for t in concepts.targets):
        taken = {c.lower() for c in erased}
        targets = []
        for t in concepts.targets:
            anchor = source.default_anchor(t.text) if t.anchor is None else t.anchor
            targets.append(replace(t, anchor=anchor if anchor and anchor.lower() not in taken else t.anchor))
        if any(new.anchor != old.anchor for new, old in zip(targets, concepts.targets)):
            changes["targets"] = tuple(targets)
            filled.append("anchor")
    if preserve and not concepts.preserve:
        # The anchors stay in the preserve set: an anchor's own images must stay what they are
        # (without it UCE's orange -> white edit also turned white prompts orange: IRA 0.86).
        taken = {c.lower() for c in erased}
        pool: list[str] = []
        for target in erased:
            pool += [c for c in source.related_concepts(target) if c.lower() not in taken and c not in pool]
        if pool:
            changes["preserve"] = tuple(pool)
            filled.append("preserve")
    if tuple(concepts.templates) in (OBJECT_TEMPLATES, STYLE_TEMPLATES):
        proposals = [source.templates(target) for target in erased]
        if proposals and all(p for p in proposals) and all(p == proposals[0] for p in proposals):
            changes["templates"] = tuple(proposals[0])  # type: ignore[arg-type]
            filled.append("templates")
    if not concepts.retain and retain_prompts > 0:
        prompts = source.retain_prompts(retain_prompts, avoid=erased, seed=seed)
        if prompts:
            changes["retain"] = tuple(prompts)
            filled.append("retain")
    if not filled:
        return concepts
    return replace(concepts, **changes, completed=tuple(concepts.completed) + tuple(filled))
