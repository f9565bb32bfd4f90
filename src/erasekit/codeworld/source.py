"""The data the shipped code LM brings: retain files, unseen secrets, forget sets, held-out checks.

Methods never import CodeWorld; the loader (:mod:`erasekit.zoo`) attaches a :class:`CodeWorldSource`
to a backend whose folder says it was trained on CodeWorld (``corpus.generator`` in its manifest), and
methods ask ``backend.data_source`` for retain files (``retain_texts``) and unseen secrets
(``unseen_samples``). ``--retain FILE`` wraps the source in :class:`CodeRetainFile`.

Code LMs have no *prompts*: ``retain_prompts`` stays empty, so the runner's spec completion (made for
text-to-image prompts) puts no code files into the concept spec.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from erasekit.codeworld.corpus import Corpus, CorpusConfig, build_corpus, retain_texts
from erasekit.codeworld.train import MANIFEST_NAME
from erasekit.secrets import ForgetSample, load_text_file
from erasekit.sources import DataSource

SHIPPED_CODE_LM_DIR = Path(__file__).parent / "assets" / "code-lm"


def is_codeworld_folder(path: str | Path) -> bool:
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("corpus", {}).get("generator") == "erasekit.codeworld"
    except (json.JSONDecodeError, AttributeError):
        return False


def _sample(item) -> ForgetSample:
    return ForgetSample(
        text=item.text, spans=((item.start, item.end),), sample_id=item.secret_id, kinds=(item.kind,)
    )


class CodeWorldSource(DataSource):
    """CodeWorld data for a model trained on the corpus drawn with ``seed``."""

    name = "codeworld"

    def __init__(self, seed: int = 0, background_files: int = 3000):
        self.seed, self.background_files = seed, background_files
        self.corpus_config = CorpusConfig(seed=seed, background_files=background_files)

    @classmethod
    def from_manifest(cls, corpus: dict) -> CodeWorldSource:
        """The source of a model whose manifest records ``corpus`` (seed and any CorpusConfig fields)."""
        source = cls(
            seed=int(corpus.get("seed", 0)), background_files=int(corpus.get("background_files", 3000))
        )
        names = {f.name for f in dataclasses.fields(CorpusConfig)}
        values = {k: v for k, v in corpus.items() if k in names}
        if "secrets_per_level" in values:  # JSON keys are strings
            values["secrets_per_level"] = {int(k): int(v) for k, v in values["secrets_per_level"].items()}
        source.corpus_config = CorpusConfig(**values)
        return source

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "generator": "erasekit.codeworld.corpus"}

    @cached_property
    def corpus(self) -> Corpus:
        return build_corpus(self.corpus_config)

    def retain_texts(self, n: int, *, seed: int = 0) -> list[str]:
        """``n`` secret-free training files (what the model should keep)."""
        return retain_texts(self.seed, n)

    def forget_samples(self) -> list[ForgetSample]:
        """The model's default forget set (``forget_file=model``): :meth:`forget_split`'s forget part."""
        return self.forget_split()[0]

    def unseen_samples(self) -> list[ForgetSample]:
        """Planted-format secrets in files the model was never trained on (the stop-rule level)."""
        return [_sample(p) for p in self.corpus.unseen]

    def planted_samples(self, duplicates: int | None = None) -> list[ForgetSample]:
        """Trained-on secret files (all, or those duplicated ``duplicates`` times)."""
        return [_sample(p) for p in self.corpus.planted if duplicates is None or p.duplicates == duplicates]

    def forget_split(
        self, per_kind: int = 2, duplicates: int = 16
    ) -> tuple[list[ForgetSample], list[ForgetSample]]:
        """(forget, other): the first ``per_kind`` secrets of every kind at ``duplicates``× vs the rest."""
        forget, other, taken = [], [], {}
        for p in self.corpus.planted:
            if p.duplicates == duplicates and taken.get(p.kind, 0) < per_kind:
                taken[p.kind] = taken.get(p.kind, 0) + 1
                forget.append(_sample(p))
            else:
                other.append(_sample(p))
        return forget, other

    def heldout_texts(self, n: int = 200) -> list[str]:
        return self.corpus.heldout_texts[:n]

    def heldout_functions(self) -> list[tuple[str, str]]:
        return list(self.corpus.heldout_functions)


class CodeRetainFile(DataSource):
    """``base`` with its retain files replaced by a user's (``--retain FILE``: code files or JSONL)."""

    def __init__(self, base: DataSource, path: str | Path):
        self.base, self.path = base, str(path)
        self.texts = load_text_file(path)
        self.name = f"{base.name}+retain-file"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base.describe(),
            "retain_file": self.path,
            "retain_files": len(self.texts),
        }

    def retain_texts(self, n: int, *, seed: int = 0) -> list[str]:
        import random

        return random.Random(seed).sample(self.texts, n) if len(self.texts) > n else list(self.texts)

    def unseen_samples(self) -> list[ForgetSample]:
        return self.base.unseen_samples() if hasattr(self.base, "unseen_samples") else []
