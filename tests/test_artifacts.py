"""Artifact format and apply/revert/stack semantics on the tiny pipeline."""

from __future__ import annotations

import torch

from erasekit.artifacts import Artifact, applied_artifacts, apply, revert


def _snapshot(backend):
    return {k: v.detach().clone() for k, v in backend.named_parameters().items()}


def _delta_artifact(backend, target="cross_attn_kv", scale=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    artifact = Artifact("test", manifest={"base_fingerprint": backend.fingerprint()})
    for name, param in backend.parameters_for(target).items():
        artifact.add_weight(name, torch.randn(param.shape, generator=gen) * scale)
    return artifact


def test_apply_revert_bit_exact_and_stack_any_order(tiny_backend, tmp_path):
    before = _snapshot(tiny_backend)
    a = _delta_artifact(tiny_backend, seed=1)
    b = _delta_artifact(tiny_backend, target="text_mlp", seed=2)
    a.save(tmp_path / "a")
    a = Artifact.load(tmp_path / "a.safetensors")
    apply(a, tiny_backend)
    apply(b, tiny_backend)
    after = _snapshot(tiny_backend)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(tiny_backend.parameters_for("cross_attn_kv")) | set(
        tiny_backend.parameters_for("text_mlp")
    )
    revert(tiny_backend, a)  # out of order: b stays applied
    assert [x.method for x in applied_artifacts(tiny_backend)] == ["test"]
    for name in tiny_backend.parameters_for("cross_attn_kv"):
        assert torch.equal(tiny_backend.named_parameters()[name], before[name])
    revert(tiny_backend)
    final = _snapshot(tiny_backend)
    assert all(torch.equal(before[k], final[k]) for k in before)
