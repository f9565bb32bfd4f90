"""A tiny random code LM on a small CodeWorld corpus, built in code in about a second (tests, smoke runs).

:func:`build_tiny_code_lm_backend` returns a :class:`CausalLMBackend` with a :class:`CodeWorldSource`
on a 200-file corpus, so every code-LM method runs end to end without the shipped weights.
"""

from __future__ import annotations

import dataclasses

from erasekit.codeworld.corpus import CorpusConfig
from erasekit.codeworld.source import CodeWorldSource


def tiny_corpus_manifest(seed: int = 0) -> dict:
    """The ``corpus`` record of the tiny model (what a trained folder's manifest holds)."""
    config = CorpusConfig(
        seed=seed,
        background_files=200,
        secrets_per_level={16: 2, 1: 1},
        unseen_per_kind=2,
        heldout_files=16,
        heldout_functions=8,
    )
    return {"generator": "erasekit.codeworld", **dataclasses.asdict(config)}


def build_tiny_code_lm_backend(seed: int = 0):
    from erasekit.backends.causal_lm import CausalLMBackend, build_tiny_causal_lm

    source = CodeWorldSource(seed=seed, background_files=200)
    source.corpus_config = CorpusConfig(
        seed=seed,
        background_files=200,
        secrets_per_level={16: 2, 1: 1},
        unseen_per_kind=2,
        heldout_files=16,
        heldout_functions=8,
    )
    corpus = source.corpus
    model, tokenizer = build_tiny_causal_lm(corpus.train_texts[:300], seed=seed)
    backend = CausalLMBackend(model, tokenizer, name="tiny-code-lm")
    backend.data_source = source
    return backend
