"""ItD: the SAE, feature selection, the zero-shot gate, bit-exact pass-through, concept unions."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.methods import run_method
from erasekit.methods.itd import ItD, ItDConfig, calibrate_threshold, train_sae

UNRELATED = ["a photo of a dog", "a red circle", "a green square on a plain background", ""]


def _erase(backend, tmp_path, concepts=("star",), overrides=()):
    overrides = [*ItD.smoke_overrides, "threshold=min_target", f"cache_dir={tmp_path}", *overrides]
    config = build_config(ItD.config_cls, None, overrides)
    return run_method(ItD(), backend, ConceptSpec.from_lists(list(concepts)), config, seed=0)


def _encode(backend, prompts):
    with torch.no_grad():
        return backend.encode_prompts(prompts)


def test_topk_sae_learns_a_sparse_dictionary_with_unit_norm_decoder():
    generator = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(32, 16, generator=generator), dim=1)
    codes = torch.rand(4000, 32, generator=generator) * (torch.rand(4000, 32, generator=generator) < 0.08)
    data = codes @ atoms
    config = ItDConfig(sae_steps=300, sae_batch=256, sae_lr=3e-3)
    sae, stats = train_sae(data, 64, 4, config, torch.Generator().manual_seed(1))
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)
    assert stats["fraction_variance_unexplained"] < 0.35
    assert int((sae.encode(data[:10]) > 0).sum(-1).max()) <= 4


def _live_hook(backend):
    from erasekit.methods.itd import ItDHook

    for module in backend.named_modules().values():
        for hook in module._forward_hooks.values():
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, ItDHook):
                return owner
    raise AssertionError("no ItD hook attached")


def test_unrelated_prompts_bit_equal_and_target_prompts_changed(tiny_backend, tmp_path):
    artifact = _erase(tiny_backend, tmp_path)
    targets = ConceptSpec.from_lists(["star"]).prompts("star")
    base_targets, base_unrelated = _encode(tiny_backend, targets), _encode(tiny_backend, UNRELATED)
    # min_target gates every calibration prompt whose features fire at all (a score of 0 cannot be gated)
    assert artifact.manifest["training"]["target_gated"] >= 0.5
    tau = artifact.manifest["hooks"][0]["config"]["threshold"]
    apply(artifact, tiny_backend)
    try:
        after_targets = _encode(tiny_backend, targets)
        target_scores = _live_hook(tiny_backend).last_scores
        after_unrelated = _encode(tiny_backend, UNRELATED)
        scores = _live_hook(tiny_backend).last_scores
        # in a mixed batch too: rows are gated independently
        mixed = _encode(tiny_backend, [targets[1], UNRELATED[0]])
    finally:
        revert(tiny_backend)
    for after, before, score in zip(after_targets, base_targets, target_scores):
        assert torch.equal(after, before) == bool(score <= tau)
    assert sum(bool(s > tau) for s in target_scores) >= len(targets) // 2
    # the random tiny encoder has no semantics, so which unrelated prompt scores low is arbitrary;
    # the property: every prompt at or under τ passes bit-exactly, every one above is edited
    for after, before, score in zip(after_unrelated, base_unrelated, scores):
        assert torch.equal(after, before) == bool(score <= tau)
    assert any(bool(s <= tau) for s in scores)
    assert torch.equal(mixed[0], after_targets[1]) and torch.equal(mixed[1], after_unrelated[0])
    assert torch.equal(_encode(tiny_backend, UNRELATED), base_unrelated)


def test_gate_threshold_decides_and_reconstruction_error_is_kept(tiny_backend, tmp_path):
    artifact = _erase(tiny_backend, tmp_path)
    prompts = ["a star", "a photo of a dog"]
    base = _encode(tiny_backend, prompts)
    config = artifact.manifest["hooks"][0]["config"]
    for threshold, expect_changed in ((float("inf"), False), (-1.0, True)):
        config["threshold"] = threshold
        apply(artifact, tiny_backend)
        try:
            out = _encode(tiny_backend, prompts)
        finally:
            revert(tiny_backend)
        assert (not torch.equal(out[0], base[0])) == expect_changed
    # λ = 1 leaves the codes as they are: with the error term added back, gated prompts are unchanged
    config["threshold"], config["feature_scale"] = -1.0, 1.0
    apply(artifact, tiny_backend)
    try:
        assert torch.equal(_encode(tiny_backend, prompts), base)
    finally:
        revert(tiny_backend)


def test_threshold_between_distributions_is_below_the_public_minimum():
    target = torch.tensor([5.0, 6.0, 9.0])
    retain = torch.tensor([0.0, 0.5, 1.0])
    between = calibrate_threshold(
        target, retain, ItDConfig(threshold="between", threshold_position=0.25, retain_quantile=1.0)
    )
    public = calibrate_threshold(target, retain, ItDConfig(threshold="min_target"))
    assert between == 1.0 + 0.25 * 4.0
    assert 1.0 < between < public < 5.0
    # overlapping distributions: the fewest-errors threshold; ties go to the lower one (recall first)
    overlap = calibrate_threshold(torch.tensor([1.5, 3.0, 4.0]), torch.tensor([0.0, 2.0, 1.0]), ItDConfig())
    assert overlap == 1.0


def test_multi_concept_is_the_union_of_feature_sets_and_the_sae_is_cached(tiny_backend, tmp_path):
    from erasekit.world.source import ShapesWorldSource

    # With a data source that knows the concepts, the SAE corpus is the source's captions, which do
    # not depend on the erased concept: one SAE serves every erasure of this encoder.
    previous, tiny_backend.data_source = getattr(tiny_backend, "data_source", None), ShapesWorldSource()
    try:
        star = _erase(tiny_backend, tmp_path, ["star"])
        red = _erase(tiny_backend, tmp_path, ["red"])
        both = _erase(tiny_backend, tmp_path, ["star", "red"])
    finally:
        tiny_backend.data_source = previous
    assert star.manifest["training"]["sae"]["corpus"] == "shapesworld"
    assert not star.manifest["training"]["sae"]["cached"]
    assert red.manifest["training"]["sae"]["cached"] and both.manifest["training"]["sae"]["cached"]
    assert torch.equal(star.tensors["hooks/0/W_dec"], both.tensors["hooks/0/W_dec"])
    # the artifact edits the union of the per-concept feature sets
    single = set(star.manifest["training"]["features"]["star"]) | set(
        red.manifest["training"]["features"]["red"]
    )
    union = set(both.manifest["training"]["features"]["star"]) | set(
        both.manifest["training"]["features"]["red"]
    )
    assert {int(i) for i in both.tensors["hooks/0/features"]} == {int(i) for i in union}
    assert len(union) >= max(len(star.manifest["training"]["features"]["star"]), 1)
    assert single  # both concepts found features


def test_layer_rule_public_fraction_for_deep_encoders_last_layer_for_shallow_ones():
    from types import SimpleNamespace

    method = ItD()
    clip_l, shapes = SimpleNamespace(n_text_layers=12), SimpleNamespace(n_text_layers=3)
    assert method.resolve_layer(clip_l, ItDConfig()) == 7  # hidden state 8 of 12, as published
    assert method.resolve_layer(shapes, ItDConfig()) == 2  # shallower than shallow_depth: the last
    assert method.resolve_layer(shapes, ItDConfig(shallow_depth=0)) == 1  # the fraction rule
    assert method.resolve_layer(shapes, ItDConfig(layer=0)) == 0  # an explicit layer wins


def test_gate_scores_the_top_features_and_the_edit_uses_all(tiny_backend, tmp_path):
    from erasekit.errors import ErasekitError
    from erasekit.methods.itd import _layer_states, edit_delta

    artifact = _erase(tiny_backend, tmp_path, overrides=["n_features=6", "gate_features=2"])
    stats = artifact.manifest["training"]["features"]["star"]  # ordered by contrast, highest first
    hook = artifact.manifest["hooks"][0]
    tensors = {name.split("/")[-1]: t for name, t in artifact.tensors.items() if name.startswith("hooks/0/")}
    features, gate = tensors["features"], tensors["gate_features"]
    assert len(stats) > 2, "the tiny SAE found too few features to split"
    assert {int(i) for i in gate} == {int(i) for i in list(stats)[:2]}
    assert {int(i) for i in features} == {int(i) for i in stats}
    # the live gate's score is the norm of the edit of the gate features alone, whatever the rest do
    prompts = ConceptSpec.from_lists(["star"]).prompts("star") + UNRELATED
    scale = tensors["input_scale"]
    sae = {k: tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    x = _layer_states(tiny_backend, hook["target"], prompts)[:, 1:] / scale
    k, lam = hook["config"]["k"], hook["config"]["feature_scale"]
    expected = (scale * edit_delta(x, sae, gate, k, lam)).norm(dim=-1).amax(dim=1)
    everything = (scale * edit_delta(x, sae, features, k, lam)).norm(dim=-1).amax(dim=1)
    assert not torch.allclose(expected, everything)  # the subset is a different score
    apply(artifact, tiny_backend)
    try:
        _encode(tiny_backend, prompts)
        torch.testing.assert_close(_live_hook(tiny_backend).last_scores, expected)
    finally:
        revert(tiny_backend)
    with pytest.raises(ErasekitError, match="gate_features"):
        build_config(ItDConfig, None, ["n_features=4", "gate_features=5"])
