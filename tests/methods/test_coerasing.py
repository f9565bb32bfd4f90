"""Co-Erasing properties: the refinement is a convex combination of the prompt's embeddings, text-only
calls are bit-exactly the adapter-free UNet, the artifact holds UNet deltas only (stage 1 + stage 2)
and applies/reverts exactly on a stock pipeline, and bad inputs raise one-line errors."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import run_method
from erasekit.methods.coerasing import CoErasing, CoErasingConfig, gaussian_blur, refine_image_tokens
from erasekit.methods.esd import ESD, ESDConfig

STAR = ConceptSpec.from_lists(["star"])
SMOKE = list(CoErasing.smoke_overrides)


@pytest.mark.parametrize("seed", range(5))
def test_refined_tokens_are_convex_combinations_of_the_prompt_embeddings(seed):
    g = torch.Generator().manual_seed(seed)
    length, dim = 6, 16  # dim > length: E has full row rank, so the coefficients are unique
    prompt = torch.randn(1, length, dim, generator=g)
    v = 3 * torch.randn(2, 4, dim, generator=g)
    refined = refine_image_tokens(v, prompt)
    assert refined.shape == v.shape
    # solve refined = W E for W and check W is a stochastic matrix (non-negative rows summing to one)
    weights = torch.linalg.lstsq(prompt[0].T.double(), refined.reshape(-1, dim).T.double()).solution.T
    torch.testing.assert_close(weights @ prompt[0].double(), refined.reshape(-1, dim).double())
    assert (weights > -1e-6).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights), dtype=torch.double))
    # a token equal to a huge multiple of one embedding selects (almost only) that embedding
    sharp = refine_image_tokens(50 * prompt[:, 2:3], prompt)
    torch.testing.assert_close(sharp[0, 0], prompt[0, 2], atol=1e-3, rtol=0)


def test_blur_keeps_constants_and_spreads_a_delta():
    constant = torch.full((1, 4, 8, 8), 0.7)
    torch.testing.assert_close(gaussian_blur(constant, 3), constant)
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 4, 4] = 1
    blurred = gaussian_blur(delta, 5)
    assert blurred.shape == delta.shape and abs(float(blurred.sum()) - 1) < 1e-5
    assert blurred[0, 0, 4, 4] < 1 and blurred[0, 0, 4, 3] > 0 and blurred[0, 0, 0, 0] < blurred[0, 0, 4, 3]
    torch.testing.assert_close(blurred[0, 0], blurred[0, 0].T)  # separable and symmetric


def test_text_only_calls_with_the_adapter_loaded_equal_the_adapter_free_unet(tiny_backend):
    latents = tiny_backend.initial_latents([3, 4])
    cond = tiny_backend.encode_prompts(["a star", "a circle"])
    with torch.no_grad():
        plain = tiny_backend.predict_noise(latents, 500, cond)
        with tiny_backend.image_prompts() as adapter:
            text_only = tiny_backend.predict_noise(latents, 500, cond)
            tokens = torch.randn(2, adapter.num_tokens, adapter.context_dim)
            scale_zero = tiny_backend.predict_noise(latents, 500, cond, image_tokens=tokens, image_scale=0.0)
            with_image = tiny_backend.predict_noise(latents, 500, cond, image_tokens=tokens, image_scale=1.0)
        after = tiny_backend.predict_noise(latents, 500, cond)
    assert torch.equal(text_only, plain) and torch.equal(scale_zero, plain) and torch.equal(after, plain)
    assert not torch.allclose(with_image, plain)
    assert tiny_backend.unet.encoder_hid_proj is None  # unloaded on exit
    with pytest.raises(ErasekitError, match="image_prompts"):
        tiny_backend.predict_noise(latents, 500, cond, image_tokens=tokens)


def test_artifact_is_unet_deltas_that_apply_and_revert_exactly_on_a_stock_pipeline(
    tiny_backend, tiny_pipeline
):
    before = {k: v.detach().clone() for k, v in tiny_backend.named_parameters().items()}
    artifact = run_method(CoErasing(), tiny_backend, STAR, build_config(CoErasingConfig, None, SMOKE), seed=0)
    after = tiny_backend.named_parameters()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    names = set(artifact.weight_edits)
    assert names and all(n.startswith("unet.") and ".attn2." in n for n in names)
    assert not any("processor" in n or "encoder_hid_proj" in n for n in names)
    training = artifact.manifest["training"]
    assert len(training["loss"]) == 2 and len(training["text_stage_loss"]) == 2
    stock = {k: v.detach().clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    apply(artifact, tiny_pipeline)
    changed = [k for k, v in tiny_pipeline.unet.state_dict().items() if not torch.equal(v, stock[k])]
    assert changed
    revert(tiny_pipeline, artifact)
    assert all(torch.equal(v, stock[k]) for k, v in tiny_pipeline.unet.state_dict().items())


def test_stage_one_from_a_text_artifact_is_kept_under_the_image_stage(tiny_backend, tmp_path):
    esd = run_method(
        ESD(),
        tiny_backend,
        STAR,
        build_config(ESDConfig, None, ["iterations=2", "ddim_steps=2", "lr=1e-3"]),
        seed=0,
    )
    path = esd.save(tmp_path / "esd")
    overrides = [*SMOKE, f"text_artifact={path}", "lr=1e-9"]  # a negligible image stage: Δ ≈ stage 1
    artifact = run_method(
        CoErasing(), tiny_backend, STAR, build_config(CoErasingConfig, None, overrides), seed=0
    )
    stage1, combined = esd.weight_edits, artifact.weight_edits
    assert set(stage1) <= set(combined)
    for name, (_, delta) in stage1.items():
        torch.testing.assert_close(combined[name][1], delta, atol=1e-6, rtol=0)
    assert artifact.manifest["training"]["text_stage"] == "esd"


def test_inputs_are_checked(tiny_backend, tmp_path):
    with pytest.raises(ErasekitError, match="blur_factor"):
        CoErasingConfig(blur_factor=4)
    with pytest.raises(ErasekitError, match="anchor"):
        CoErasing().erase(tiny_backend, ConceptSpec.from_lists(["star"], ["circle"]), CoErasingConfig())
    hooked = Artifact("spm")  # an adapter artifact: not weight edits
    hooked.add_adapter("unet.conv_in", torch.zeros(2, 4, 3, 3), torch.zeros(4, 2, 1, 1))
    hooked.save(tmp_path / "hooked")
    config = build_config(CoErasingConfig, None, [*SMOKE, f"text_artifact={tmp_path / 'hooked'}"])
    with pytest.raises(ErasekitError, match="weight-editing"):
        CoErasing().erase(tiny_backend, STAR, config)
    assert CoErasingConfig.PRESETS["paper"]["blur_factor"] == 5
    tiny_backend.image_adapter_source = None  # a model without an IP-Adapter: refused before any training
    with pytest.raises(ErasekitError, match="IP-Adapter"):
        CoErasing().erase(tiny_backend, STAR, build_config(CoErasingConfig, None, SMOKE))


class _SaysStar:
    version = "stub"

    def predict(self, images):
        return {"shape": ["star" if float(x.mean()) > 0.5 else "circle" for x in images]}


def test_image_prompt_attack_at_scale_zero_is_the_text_only_generation(tiny_backend):
    from erasekit.evaluation.attacks import run_attack
    from erasekit.evaluation.attacks.image_prompt import concept_images, generate_from_image_prompts

    images = concept_images(tiny_backend, "star", 2, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, tiny_backend.default_size, tiny_backend.default_size)
    seeds = [5, 6]
    off = generate_from_image_prompts(tiny_backend, images, seeds, image_scale=0.0, steps=2)
    on = generate_from_image_prompts(tiny_backend, images, seeds, image_scale=1.0, steps=2)
    with torch.no_grad():
        cond = tiny_backend.encode_prompts(["", ""])
        text_only = tiny_backend.decode_latents(
            tiny_backend.denoise(tiny_backend.initial_latents(seeds), cond, cond, steps=2, guidance=3.0)
        )
    assert torch.equal(off, text_only) and not torch.equal(on, text_only)
    record = run_attack(
        "image_prompt",
        tiny_backend,
        "star",
        budget={"images": 2, "steps": 2},
        seeds=[0, 1],
        judge=_SaysStar(),
    )
    assert record["attempts"] == 4 and record["prompt_images"] == 2 and 0 <= record["asr"] <= 1
    assert "asr_text_only" in record and record["budget"]["images"] == 2
