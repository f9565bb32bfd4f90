"""SPM: membrane arithmetic, latent anchoring, facilitated-transport gate, stacking, stock pipelines."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import _AdapterHook, apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.methods import run_method
from erasekit.methods.spm import (
    SPM,
    SPMGate,
    esd_target,
    reference_gamma,
    sample_anchors,
    token_share,
    transport_gamma,
)

SMOKE = list(SPM.smoke_overrides)


def _erase(backend, concepts=("star",), overrides=(), seed=0):
    config = build_config(SPM.config_cls, None, SMOKE + list(overrides))
    return run_method(SPM(), backend, ConceptSpec.from_lists(list(concepts)), config, seed=seed)


def _prediction(backend, prompts):
    with torch.no_grad():
        latents = backend.initial_latents([3] * len(prompts))
        return backend.predict_noise(latents, 400, backend.encode_prompts(prompts))


def _gates(components) -> list:
    """The live gate objects, found through the adapters' forward hooks."""
    gates = []
    for component in components.values():
        for module in component.modules():
            for hook in module._forward_hooks.values():
                if isinstance(hook, _AdapterHook) and hook.gate is not None and hook.gate not in gates:
                    gates.append(hook.gate)
    return gates


def test_anchors_all_distinct_at_the_target_norm():
    target = torch.randn(16, 32)
    anchors = sample_anchors(target, 4, torch.Generator().manual_seed(0))
    assert anchors.shape == (4, 16, 32)
    ratios = anchors.flatten(1).norm(dim=1) / target.norm()
    assert torch.all((ratios >= 0.8 - 1e-5) & (ratios <= 1.2 + 1e-5))
    # every anchor is its own direction (the public layout used only half of them)
    assert torch.linalg.matrix_rank(anchors.flatten(1)) == 4


def test_esd_target_and_gamma_formulas():
    pos, neu = torch.tensor([2.0]), torch.tensor([1.0])
    assert torch.equal(esd_target(pos, neu, 1.0), torch.tensor([0.0]))
    target = torch.randn(1, 4, 8)
    prompts = torch.stack([target[0], -target[0], torch.randn(4, 8)])
    gamma = transport_gamma(prompts, target, token_share([{5}, set(), {5, 6}], [{5, 6}]))
    assert gamma[0] == pytest.approx(1.0)  # same embedding
    assert gamma[1] == 0.0  # opposite embedding, no shared token: clamped to 0
    assert gamma[2] >= 1.0 - 1e-6  # all target tokens present


def test_gamma_zero_gives_the_base_model_exactly(tiny_backend):
    prompts = ["a photo of a cat"]
    base = _prediction(tiny_backend, prompts)
    artifact = _erase(tiny_backend)
    # point the gate's target at the negated prompt: cos = −1 → γ = 0, and no shared token
    artifact.tensors["hooks/0/target_embeddings"] = -tiny_backend.encode_prompts(prompts).detach()
    apply(artifact, tiny_backend)
    try:
        out = _prediction(tiny_backend, prompts)
        (gate,) = _gates(tiny_backend.components)
        assert torch.equal(gate.gamma, torch.zeros(1))
    finally:
        revert(tiny_backend)
    assert torch.equal(out, base)


def test_gamma_per_row_uses_tokens_and_cosine(tiny_backend):
    artifact = _erase(tiny_backend)
    apply(artifact, tiny_backend)
    try:
        prompts = ["a photo of a star", "a cat", "star"]
        cond = tiny_backend.encode_prompts(prompts)
        latents = tiny_backend.initial_latents([0, 1, 2])
        tiny_backend.predict_noise(latents, 300, cond)
        (gate,) = _gates(tiny_backend.components)
        target = artifact.tensors["hooks/0/target_embeddings"]
        cos = torch.nn.functional.cosine_similarity(cond.flatten(1), target.flatten(1))
        assert gate.gamma[0] == 1.0 and gate.gamma[2] == 1.0  # "star" token present
        assert gate.gamma[1] == pytest.approx(float(cos[1].clamp(0, 1)), abs=1e-5)  # cosine only
        # embeddings the gate did not see being encoded: cosine part only, never a crash
        tiny_backend.predict_noise(latents[:1], 300, cond[:1] * 1.5)
        assert gate.gamma[0] == pytest.approx(float(cos[0].clamp(0, 1)), abs=1e-5)
    finally:
        revert(tiny_backend)


def test_two_spms_stack_each_with_its_own_gate_and_revert_exactly(tiny_backend):
    prompts = ["a star", "a cat"]
    base = _prediction(tiny_backend, prompts)
    star = _erase(tiny_backend, ["star"], ["gate=always"], seed=1)
    cat = _erase(tiny_backend, ["cat"], ["gate=always"], seed=2)
    apply(star, tiny_backend)
    only_star = _prediction(tiny_backend, prompts)
    apply(cat, tiny_backend)
    both = _prediction(tiny_backend, prompts)
    assert len(_gates(tiny_backend.components)) == 2
    assert not torch.allclose(both, only_star, atol=1e-7) and not torch.allclose(only_star, base, atol=1e-7)
    revert(tiny_backend, cat)
    assert torch.equal(_prediction(tiny_backend, prompts), only_star)
    revert(tiny_backend)
    assert torch.equal(_prediction(tiny_backend, prompts), base)


def test_stock_diffusers_pipeline_gets_token_share_through_the_text_encoder(tiny_pipeline):
    from erasekit.backends.sd import SDBackend

    backend = SDBackend(tiny_pipeline, name="tiny")
    artifact = _erase(backend)
    seen = []
    apply(artifact, tiny_pipeline)
    try:
        (gate,) = _gates({"unet": tiny_pipeline.unet})
        tiny_pipeline.unet.register_forward_hook(lambda *a: seen.append(gate.gamma.clone()))
        tiny_pipeline("a star", num_inference_steps=2, guidance_scale=4.0, output_type="latent")
    finally:
        revert(tiny_pipeline)
    # CFG batch = [unconditional, conditional]: the prompt row carries the "star" token (γ = 1)
    assert len(seen) == 2 and seen[0].shape == (2,)
    assert seen[0][1] == 1.0 and seen[0][0] < 1.0


def test_training_moves_the_target_prediction_towards_the_esd_target(tiny_backend):
    # a longer run on the tiny model (no anchoring): the adapted model approaches ε* on the bare concept
    artifact = _erase(
        tiny_backend,
        overrides=["iterations=30", "lr=0.03", "anchors_per_step=0", "use_templates=false", "gate=always"],
    )
    x = tiny_backend.initial_latents([5])
    t = tiny_backend.sampling_timesteps(3)[1]
    with torch.no_grad():
        cond, neutral = tiny_backend.encode_prompts(["star"]), tiny_backend.encode_prompts([""])
        target = esd_target(
            tiny_backend.predict_noise(x, t, cond), tiny_backend.predict_noise(x, t, neutral), 1.0
        )
        before = torch.nn.functional.mse_loss(tiny_backend.predict_noise(x, t, cond), target)
        apply(artifact, tiny_backend)
        try:
            after = torch.nn.functional.mse_loss(tiny_backend.predict_noise(x, t, cond), target)
        finally:
            revert(tiny_backend)
    assert after < 0.8 * before


def test_gate_kind_is_registered():
    from erasekit.artifacts import HOOK_KINDS

    assert HOOK_KINDS["spm_gate"] is SPMGate


def test_neutral_prompt_leaves_only_the_concept_out():
    from erasekit.methods.spm import neutral_prompts

    templates = ["a {} square on a striped background", "an orange {}", "{}"]
    assert neutral_prompts(templates, None, "remove") == [
        "a square on a striped background",
        "an orange",
        "",  # the bare word: the paper's empty prompt
    ]
    assert neutral_prompts(templates, None, "empty") == ["", "", ""]
    assert neutral_prompts(["a {} square"], "orange", "remove") == ["an orange square"]  # anchor wins


def test_reference_gamma_squares_and_gives_uncond_rows_their_prompts_gamma():
    gamma = torch.tensor([0.9, 0.2, 0.5, 0.6])  # [uncond, uncond, prompt a, prompt b]
    out = reference_gamma(gamma, [True, True, False, False])
    torch.testing.assert_close(out, torch.tensor([0.25, 0.36, 0.25, 0.36]))
    # no CFG layout (or only prompts): each row keeps its own γ, squared
    torch.testing.assert_close(reference_gamma(gamma, [False] * 4), gamma**2)
    torch.testing.assert_close(reference_gamma(gamma[:3], [True, False, False]), gamma[:3] ** 2)


def test_reference_gate_on_a_stock_pipeline_is_the_prompts_gamma_squared_on_both_rows(tiny_pipeline):
    from erasekit.backends.sd import SDBackend

    backend = SDBackend(tiny_pipeline, name="tiny")
    artifact = _erase(backend)
    seen: dict[str, torch.Tensor] = {}
    for mode in ("facilitated", "reference"):
        artifact.manifest["hooks"][0]["config"]["mode"] = mode
        apply(artifact, tiny_pipeline)
        try:
            (gate,) = _gates({"unet": tiny_pipeline.unet})

            def record(*args, mode=mode, gate=gate) -> None:  # a forward hook returning None
                seen.setdefault(mode, gate.gamma.clone())

            handle = tiny_pipeline.unet.register_forward_hook(record)
            tiny_pipeline("a cat", num_inference_steps=1, guidance_scale=4.0, output_type="latent")
            handle.remove()
        finally:
            revert(tiny_pipeline)
    own = seen["facilitated"]  # [uncond's own γ, prompt's γ]
    assert 0 < own[1] < 1 and own[0] != own[1]
    torch.testing.assert_close(seen["reference"], torch.stack([own[1], own[1]]) ** 2)


def test_presets_hold_the_public_values_and_the_shapesworld_ones():
    paper = build_config(SPM.config_cls, None, ["preset=paper"])
    assert (paper.lr, paper.iterations, paper.anchor_weight, paper.gate) == (1e-4, 3000, 1000.0, "reference")
    assert (paper.preserve_anchors, paper.use_templates, paper.eta) == (0, False, 1.0)
    shapes = build_config(SPM.config_cls, None, ["preset=shapesworld"])
    assert shapes == build_config(SPM.config_cls, None, ["preset=default"]).__class__(preset="shapesworld")
