"""The causal_lm backend: named targets, tokenisation, batched generation, apply/revert exact, bad artifacts."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.artifacts import Artifact
from erasekit.errors import ErasekitError


def _logits(backend):
    batch = backend.encode(["def scale_x(x, factor):\n    return x * factor\n"])
    with torch.no_grad():
        return backend.logits(batch.input_ids, batch.attention_mask)


def test_targets_select_by_role(tiny_lm):
    mlp, attn, every = (tiny_lm.parameters_for(t) for t in ("lm_mlp", "lm_attn", "lm_all"))
    assert mlp and all(".mlp." in n for n in mlp)
    assert attn and all(".self_attn." in n for n in attn)
    assert set(mlp) | set(attn) < set(every) == set(tiny_lm.named_parameters())
    assert set(tiny_lm.parameters_for("lm_mlp+lm_attn")) == set(mlp) | set(attn)
    with pytest.raises(ErasekitError):
        tiny_lm.parameters_for("cross_attn_kv")


def test_encode_offsets_point_into_the_text(tiny_lm):
    text = "API_URL = 'https://x.io'\n"
    batch = tiny_lm.encode([text, "x"])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert ids[0] == tiny_lm.bos_id and batch.offsets[0][0] == (0, 0)
    assert tiny_lm.decode(ids[1:]) == text
    assert "".join(text[a:b] for a, b in batch.offsets[0][1 : len(ids)]) == text
    assert batch.attention_mask[1].sum() < batch.attention_mask[0].sum()  # right-padded


def test_left_padded_batch_generation_equals_one_by_one(tiny_lm):
    prompts = [
        tiny_lm.encode([t]).input_ids[0].tolist()
        for t in ("import json\n", "def get_user(self):\n    return")
    ]
    together = tiny_lm.generate(prompts, 6)
    alone = [tiny_lm.generate([p], 6)[0] for p in prompts]
    assert together == alone


def test_full_delta_and_adapter_artifacts_apply_and_revert_exactly(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.named_parameters().items()}
    out_before = _logits(tiny_lm)
    g = torch.Generator().manual_seed(0)
    delta = Artifact(method="test", manifest={"backend": "causal_lm"})
    for name, p in tiny_lm.parameters_for("lm_mlp").items():
        delta.add_weight(name, 0.01 * torch.randn(p.shape, generator=g))
    adapter = Artifact(method="test-lora", manifest={"backend": "causal_lm"})
    for name, module in tiny_lm.modules_for("lm_attn").items():
        r = 2
        adapter.add_adapter(
            name,
            torch.randn(r, module.in_features, generator=g),
            torch.randn(module.out_features, r, generator=g),
            0.1,
        )
    for artifact in (delta, adapter):
        try:
            apply(artifact, tiny_lm)
            assert not torch.allclose(_logits(tiny_lm), out_before)
        finally:
            revert(tiny_lm)
        after = tiny_lm.named_parameters()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert torch.equal(_logits(tiny_lm), out_before)


def test_diffusion_artifact_on_an_lm_raises(tiny_lm):
    sd = Artifact(method="uce", manifest={"backend": "sd"})
    sd.add_weight("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", torch.zeros(4, 4))
    with pytest.raises(ErasekitError, match="kind"):
        apply(sd, tiny_lm)


def test_tokenizer_larger_than_the_embedding_raises(tiny_lm):
    from erasekit.backends.causal_lm import CausalLMBackend, build_tiny_causal_lm

    small, _ = build_tiny_causal_lm(["abc def"], vocab_size=280)
    with pytest.raises(ErasekitError, match="Tokenizer mismatch"):
        CausalLMBackend(small, tiny_lm.tokenizer)
