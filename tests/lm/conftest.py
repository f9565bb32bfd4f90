"""Fixtures for the code-LM tests: a tiny random Llama on a small CodeWorld corpus, built in code.

``memorised`` trains a copy of it on four planted-secret files until it reproduces them, so tests can
check that unlearning really removes something (a random model memorises nothing).
"""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_lm():
    from erasekit.codeworld.tiny import build_tiny_code_lm_backend

    return build_tiny_code_lm_backend(seed=0)


def _train(backend, texts, steps: int, lr: float) -> None:
    model = backend.model
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    batch = backend.encode(texts)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        labels = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in params:
        p.requires_grad_(False)


@pytest.fixture(scope="session")
def memorised(tiny_lm):
    """(backend, forget samples, other samples): a copy of ``tiny_lm`` that memorised 4 + 4 secret files."""
    from erasekit.backends.causal_lm import CausalLMBackend, fresh_copy

    backend = CausalLMBackend(fresh_copy(tiny_lm.model), tiny_lm.tokenizer, name="tiny-memorised")
    backend.data_source = tiny_lm.data_source
    planted = backend.data_source.planted_samples(16)
    forget, other = planted[0:8:2], planted[1:8:2]
    torch.manual_seed(0)
    _train(backend, [s.text for s in forget + other], steps=100, lr=1e-2)
    return backend, forget, other


@pytest.fixture
def forget_jsonl(tmp_path, memorised):
    _backend, forget, _other = memorised
    path = tmp_path / "forget.jsonl"
    path.write_text("".join(json.dumps({"id": s.sample_id, "text": s.text}) + "\n" for s in forget))
    return path
