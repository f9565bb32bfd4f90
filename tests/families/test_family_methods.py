"""SDXL, SD3.5-style and FLUX backends: every supported method on each tiny family, refusals elsewhere.

For each family and method: the artifact changes the denoiser's output for the concept's prompts,
leaves every other weight bit-equal, and applies to / reverts from the family's *stock* diffusers
pipeline exactly (the stock pipeline's own sampling output changes under it and comes back after).
"""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.backends.tiny_families import TINY_BUILDERS
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import get_method, run_method
from erasekit.zoo import load_model

FAMILIES = ("sdxl", "sd3", "flux")
SUPPORTED = {
    "sdxl": ("uce", "esd", "fewshot", "spm", "itd"),
    "sd3": ("uce", "esd", "fewshot", "spm"),
    "flux": ("uce", "esd", "fewshot", "spm"),
}
CASES = [(family, method) for family in FAMILIES for method in SUPPORTED[family]]


@pytest.fixture(scope="module")
def backends():
    return {family: load_model(f"tiny-{family}") for family in FAMILIES}


@pytest.fixture(scope="module")
def stock():
    """The stock diffusers pipeline of each family, built with the same seed (same weights)."""
    return {family: TINY_BUILDERS[family]() for family in FAMILIES}


def _params(model) -> dict[str, torch.Tensor]:
    from erasekit.applying import pipeline_components
    from erasekit.backends.base import named_parameters_of

    return {k: v.detach().clone() for k, v in named_parameters_of(pipeline_components(model)).items()}


def _denoiser_output(backend, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        latents = backend.initial_latents([7] * len(prompts))
        return backend.predict_noise(latents, 500, backend.encode_prompts(prompts))


def _stock_latents(pipe, prompt: str) -> torch.Tensor:
    out = pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    return out.images


def _erase(backend, method_name: str, **overrides):
    method = get_method(method_name)
    if "relax_steps" in getattr(method.config_cls, "__dataclass_fields__", {}):
        overrides.setdefault("relax_steps", 0)  # few-shot's extra steps past the cap: not needed here
    spec = ConceptSpec.from_lists(**getattr(method, "smoke_concepts", {"concepts": ["star"]}))
    settings = list(method.smoke_overrides) + [f"{k}={v}" for k, v in overrides.items()]
    config = build_config(method.config_cls, None, settings)
    return run_method(method, backend, spec, config, seed=0), spec


@pytest.mark.parametrize(("family", "method_name"), CASES)
def test_method_erases_and_applies_exactly_on_the_stock_pipeline(backends, stock, family, method_name):
    backend, pipe = backends[family], stock[family]
    before = _params(backend)
    artifact, spec = _erase(backend, method_name)
    assert artifact.manifest["backend"] == family
    assert all(torch.equal(before[k], v) for k, v in _params(backend).items()), "the method moved the model"
    prompts = spec.prompts(spec.targets[0].text)
    output_before = _denoiser_output(backend, prompts)
    try:
        apply(artifact, backend)
        changed = {k for k, v in _params(backend).items() if not torch.equal(before[k], v)}
        output_after = _denoiser_output(backend, prompts)
    finally:
        revert(backend)
    assert changed <= set(artifact.weight_edits), "a weight outside the artifact changed"
    assert not torch.allclose(output_before, output_after, rtol=0, atol=1e-7), "erasure changed nothing"
    assert torch.equal(_denoiser_output(backend, prompts), output_before)

    # the same artifact on the family's stock diffusers pipeline
    stock_before = _params(pipe)
    latents_before = _stock_latents(pipe, prompts[0])
    with torch.no_grad():
        apply(artifact, pipe)
    try:
        applied = _params(pipe)
        latents_applied = _stock_latents(pipe, prompts[0])
    finally:
        revert(pipe)
    assert {k for k in stock_before if not torch.equal(stock_before[k], applied[k])} <= set(
        artifact.weight_edits
    )
    assert not torch.equal(latents_before, latents_applied), "the artifact did nothing on the stock pipeline"
    assert all(torch.equal(stock_before[k], v) for k, v in _params(pipe).items()), "revert is not exact"
    assert torch.equal(_stock_latents(pipe, prompts[0]), latents_before), "hooks survived revert"


@pytest.mark.parametrize("family", ("sd3", "flux"))
def test_itd_is_refused_where_the_prompt_goes_through_t5(backends, family):
    with pytest.raises(ErasekitError, match="T5"):
        _erase(backends[family], "itd")


def test_uce_token_modes_need_clip_positions_on_flow_models(backends):
    with pytest.raises(ErasekitError, match="tokens=all"):
        _erase(backends["flux"], "uce", tokens="last")


def test_artifact_of_one_family_is_refused_on_another(backends, stock):
    artifact, _ = _erase(backends["sdxl"], "uce")
    with pytest.raises(ErasekitError, match="kind"):
        apply(artifact, stock["flux"])
    flux_artifact, _ = _erase(backends["flux"], "uce")
    with pytest.raises(ErasekitError, match="kind"):
        apply(flux_artifact, stock["sd3"])


def test_uce_on_sdxl_edits_the_pooled_text_columns_only(backends):
    backend = backends["sdxl"]
    artifact, _ = _erase(backend, "uce")
    mode, delta = artifact.weight_edits["unet.add_embedding.linear_1.weight"]
    pooled = backend.pooled_dim
    assert mode == "delta"
    assert delta[:, :pooled].abs().max() > 0, "the pooled text_embeds columns were not edited"
    assert torch.equal(delta[:, pooled:], torch.zeros_like(delta[:, pooled:])), "time-id columns moved"
    kv = [n for n in artifact.weight_edits if n.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))]
    assert len(kv) == len(backend.parameters_for("cross_attn_kv"))
    assert set(artifact.manifest["edit"]["streams"]) == {"context", "pooled"}


def test_uce_keeps_biased_layers_bias_once():
    """FLUX's context_embedder has a bias: a preserved prompt's output must stay put (the UCE reference
    solves against module(c) = W c + b and so doubles b on preserved concepts)."""
    from erasekit.methods.uce import UCEConfig, collect_streams

    backend = load_model("tiny-flux")  # its own: the bias below is changed before anything is applied
    layer = backend.transformer.context_embedder
    spec = ConceptSpec.from_lists(["star"], ["square"], ["circle"])
    with torch.no_grad():
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    config = build_config(UCEConfig, None, [])
    artifact = run_method(get_method("uce"), backend, spec, config, seed=0, complete=False)
    _context, (erase, anchor, preserve) = collect_streams(backend, spec, config)[0]
    with torch.no_grad():
        preserved_before, anchor_out, erase_before = layer(preserve), layer(anchor), layer(erase)
        apply(artifact, backend)
        try:
            preserved_after, erase_after = layer(preserve), layer(erase)
        finally:
            revert(backend)
    assert "transformer.context_embedder.bias" not in artifact.weight_edits
    error = (preserved_after - preserved_before).norm() / preserved_before.norm()
    assert error < 0.05, f"preserved outputs moved by {error:.3f} (the bias counted twice?)"
    assert (erase_after - anchor_out).norm() < 0.5 * (erase_before - anchor_out).norm()


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_identical_artifacts(backends, family):
    for name in ("esd", "spm"):
        first, _ = _erase(backends[family], name)
        again, _ = _erase(backends[family], name)
        assert set(first.tensors) == set(again.tensors)
        assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors), name


def test_uce_on_sdxl_maps_the_pooled_concept_onto_its_anchor(backends):
    from erasekit.methods.uce import UCEConfig, collect_streams

    backend = backends["sdxl"]
    spec = ConceptSpec.from_lists(["star"], ["square"], ["circle"])
    config = build_config(UCEConfig, None, [])
    artifact = run_method(get_method("uce"), backend, spec, config, seed=0, complete=False)
    pooled_stream = [s for s in collect_streams(backend, spec, config) if s[0].name == "pooled"]
    (_stream, (erase, anchor, preserve)), pooled = pooled_stream[0], backend.pooled_dim
    weight = backend.unet.add_embedding.linear_1.weight.detach()[:, :pooled]
    edited = weight + artifact.weight_edits["unet.add_embedding.linear_1.weight"][1][:, :pooled]
    before, target = erase @ weight.T, anchor @ weight.T
    assert (erase @ edited.T - target).norm() < 0.5 * (before - target).norm()
    kept = (preserve @ edited.T - preserve @ weight.T).norm() / (preserve @ weight.T).norm()
    assert kept < 0.2, float(kept)
