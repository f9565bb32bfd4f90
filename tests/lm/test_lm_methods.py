"""GA, constraint GA and CodeEraser on a tiny LM that memorised planted secrets (built in code)."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.evaluation.memorization import secret_examples, secret_ma
from erasekit.methods import get_method, run_method
from erasekit.secrets import token_secret_mask

SPEC = ConceptSpec.from_lists(["secrets"])


def _run(backend, name, forget_file, *overrides):
    method = get_method(name)
    retain = ["retain_samples=8"] if name != "ga" else []
    config = build_config(method.config_cls, None, [f"forget_file={forget_file}", *retain, *overrides])
    return run_method(method, backend, SPEC, config, seed=0)


def _accuracy(backend, samples):
    """(secret-token MA, context-token accuracy) over the forget files, teacher-forced."""
    batch = backend.encode([s.text for s in samples])
    with torch.no_grad():
        pred = backend.logits(batch.input_ids, batch.attention_mask).argmax(-1)[:, :-1]
    hit = pred == batch.input_ids[:, 1:]
    secret = torch.stack(
        [torch.tensor(token_secret_mask(o, s.spans)) for o, s in zip(batch.offsets, samples)]
    )[:, 1:]
    real = batch.attention_mask[:, 1:].bool()
    return float(hit[real & secret].float().mean()), float(hit[real & ~secret].float().mean())


def _with(backend, artifact, fn):
    try:
        apply(artifact, backend)
        return fn()
    finally:
        revert(backend)


def test_the_fixture_really_memorised(memorised):
    backend, forget, other = memorised
    assert sum(secret_ma(backend, secret_examples(backend, forget))) / len(forget) > 0.9


def test_ga_raises_the_forget_loss(memorised, forget_jsonl):
    backend, forget, _ = memorised
    batch = backend.encode([s.text for s in forget])

    def loss():
        with torch.no_grad():
            logits = backend.logits(batch.input_ids, batch.attention_mask)[:, :-1]
        labels = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
        return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100))

    artifact = _run(
        backend, "ga", forget_jsonl, "lr=1e-3", "max_epochs=3", "ma_threshold=0", "el_threshold=0"
    )
    assert _with(backend, artifact, loss) > loss() + 0.2


def test_codeeraser_forgets_secrets_keeps_context_and_stops_by_the_rule(memorised, forget_jsonl):
    backend, forget, other = memorised
    secret_before, context_before = _accuracy(backend, forget)
    artifact = _run(
        backend,
        "codeeraser",
        forget_jsonl,
        "lr=1e-3",
        "max_epochs=40",
        "ma_threshold=0.2",
        "el_threshold=0.05",
    )
    info = artifact.manifest["unlearning"]
    assert info["stop_reason"] != "max_epochs" and info["epochs"] < 40
    assert info["curve"][-1]["forget_ma"] < 0.2
    assert info["retain_source"]["name"] == "codeworld"
    secret_after, context_after = _with(backend, artifact, lambda: _accuracy(backend, forget))
    assert secret_before > 0.9 and secret_after < 0.3
    ga = _run(
        backend, "ga", forget_jsonl, "lr=1e-3", "max_epochs=40", "ma_threshold=0.2", "el_threshold=0.05"
    )
    _, context_ga = _with(backend, ga, lambda: _accuracy(backend, forget))
    # GA on whole files destroys the context too; CodeEraser keeps more of it (measured: 0.35 vs 0.15
    # of the context tokens with the paper's γ = 0.1 on this tiny model; γ = 1 keeps 0.67)
    assert context_after > context_ga + 0.1 and context_before > 0.9


def test_unlearning_methods_refuse_a_diffusion_model(tiny_backend, forget_jsonl):
    with pytest.raises(ErasekitError, match="causal language models"):
        _run(tiny_backend, "codeeraser", forget_jsonl)


def test_missing_retain_data_is_a_one_line_error(forget_jsonl, memorised):
    from erasekit.backends.causal_lm import CausalLMBackend

    backend, *_ = memorised
    bare = CausalLMBackend(backend.model, backend.tokenizer)  # no data source: no retain, no unseen
    with pytest.raises(ErasekitError, match="unseen"):
        _run(bare, "codeeraser", forget_jsonl)
    with pytest.raises(ErasekitError, match="--retain"):
        _run(bare, "codeeraser", forget_jsonl, "ma_threshold=0.1", "el_threshold=0.1")


def test_adapter_artifacts_unlearn_too_and_revert_exactly(memorised, forget_jsonl):
    backend, forget, _ = memorised
    before = {k: v.clone() for k, v in backend.named_parameters().items()}
    secret_before, _ = _accuracy(backend, forget)
    artifact = _run(
        backend,
        "codeeraser",
        forget_jsonl,
        "adapter_rank=4",
        "lr=3e-3",
        "max_epochs=40",
        "ma_threshold=0.2",
        "el_threshold=0.05",
    )
    assert artifact.manifest.get("adapters") and not artifact.manifest.get("weights")
    assert artifact.manifest["unlearning"]["stop_reason"] != "max_epochs"
    secret_after, _ = _with(backend, artifact, lambda: _accuracy(backend, forget))
    assert secret_before > 0.9 and secret_after < 0.3
    after = backend.named_parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _accuracy(backend, forget)[0] == secret_before
