"""The SDXL / SD3 / FLUX backends themselves: offline save and reload, packing, targets, flow matching, CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.backends.families import folder_family, pack, unpack
from erasekit.backends.tiny_families import TINY_BUILDERS, load_tiny_t5_tokenizer
from erasekit.errors import ErasekitError
from erasekit.zoo import backend_kind, load_model

FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def backends():
    return {family: load_model(f"tiny-{family}") for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pipeline_saves_and_reloads_offline(backends, family, tmp_path):
    TINY_BUILDERS[family]().save_pretrained(tmp_path)
    assert folder_family(tmp_path) == family and backend_kind(str(tmp_path)) == family
    reloaded = load_model(str(tmp_path))
    original = backends[family]
    assert reloaded.kind == family and reloaded.fingerprint() == original.fingerprint()
    prompts = ["a photo of a red star", ""]
    with torch.no_grad():
        latents = original.initial_latents([3, 4])
        cond = original.encode_prompts(prompts)
        assert torch.equal(reloaded.encode_prompts(prompts), cond)  # tokenizers (T5 too) survived
        assert torch.equal(
            reloaded.predict_noise(latents, 400, cond), original.predict_noise(latents, 400, cond)
        )


def test_t5_tokenizer_has_t5_layout_and_splits_words():
    tokenizer = load_tiny_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a photo of a red star").input_ids
    assert ids[-1] == 1 and tokenizer.unk_token_id not in ids and len(set(ids)) >= 5
    assert tokenizer("").input_ids == [1]


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_packs_context_and_pooled_and_batches_as_a_tensor(backends, family):
    backend = backends[family]
    a, b = backend.encode_prompts(["a star"]), backend.encode_prompts(["a cat", "a dog"])
    context, pooled = unpack(torch.cat([a, b]), backend.pooled_dim)
    assert pooled.shape == (3, backend.pooled_dim)
    assert torch.equal(pack(context, pooled), torch.cat([a, b]))
    assert torch.equal(backend.denoiser_context(b[1:]), context[2:])
    with pytest.raises(ErasekitError, match="Conditioning"):
        backend.predict_noise(backend.initial_latents([0]), 10, torch.zeros(1, 1, a.shape[-1]))


def test_pooled_prompt_reaches_the_denoiser(backends):
    """Changing only the pooled part of a packed conditioning changes the prediction (it is used)."""
    for family in FAMILIES:
        backend = backends[family]
        cond = backend.encode_prompts(["a star"])
        context, pooled = unpack(cond, backend.pooled_dim)
        latents = backend.initial_latents([0])
        with torch.no_grad():
            base = backend.predict_noise(latents, 500, cond)
            other = backend.predict_noise(latents, 500, pack(context, pooled + 1))
        assert not torch.allclose(base, other), family


def test_cross_attention_targets_per_family(backends):
    sdxl, sd3, flux = (backends[f] for f in FAMILIES)
    kv = sdxl.parameters_for("cross_attn_kv")
    assert kv and all(".attn2.to_" in n and n.startswith("unet.") for n in kv)
    assert list(sdxl.parameters_for("pooled_text")) == ["unet.add_embedding.linear_1.weight"]
    for backend in (sd3, flux):
        kv = backend.parameters_for("cross_attn_kv")
        assert kv and all(n.endswith(("add_k_proj.weight", "add_v_proj.weight")) for n in kv)
        cross = backend.parameters_for("cross_attn")
        assert not any("single_transformer_blocks" in n or ".attn2." in n for n in cross)
        assert set(backend.parameters_for("text_projections")) == {
            "transformer.context_embedder.weight",
            "transformer.time_text_embed.text_embedder.linear_1.weight",
        }
        esd_u = backend.parameters_for("unet_non_cross")
        assert not set(esd_u) & set(cross) and "transformer.context_embedder.weight" not in esd_u
    # SD3.5's attn2 is image self-attention: in self_attn, never in the cross-attention targets
    attn2 = [n for n in sd3.named_parameters() if ".attn2." in n]
    assert attn2 and set(attn2) <= set(sd3.parameters_for("self_attn"))
    # text targets cover every encoder (T5 included) and find each encoder's last layer
    last = sd3.parameters_for("text_attn_last")
    assert {n.split(".")[0] for n in last} == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    assert all(".layers.1." in n or ".block.1." in n for n in last)
    with pytest.raises(ErasekitError, match="Unknown parameter target"):
        flux.parameters_for("attn2_kv")


@pytest.mark.parametrize("family", ("sd3", "flux"))
def test_flow_matching_noising_and_velocity_target(backends, family):
    backend = backends[family]
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 1000])
    x_t = backend.add_noise(x0, noise, t)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    half = backend.add_noise(x0, noise, torch.tensor([500, 500]))
    assert torch.allclose(half, 0.5 * (x0 + noise))
    assert torch.equal(backend.training_target(x0, noise, t), noise - x0)
    assert backend.prediction_type == "flow"
    steps = backend.sampling_timesteps(4)
    assert len(steps) == 4 and steps[0] > steps[-1]


def test_cli_erases_uce_on_tiny_sdxl(tmp_path):
    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    _register()
    out = tmp_path / "star"
    result = CliRunner().invoke(
        app, ["erase", "uce", "--model", "tiny-sdxl", "--concept", "star", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    artifact = Artifact.load(summary["artifact"])
    assert artifact.manifest["backend"] == "sdxl" and artifact.manifest["base_model"] == "tiny-sdxl"
    assert "unet.add_embedding.linear_1.weight" in artifact.weight_edits


def test_docs_target_tables_match_the_code():
    from pathlib import Path

    from erasekit.backends.family_targets import describe_family_targets

    doc = (Path(__file__).resolve().parents[2] / "docs" / "families.md").read_text()
    section = doc.split("## Targets", 1)[1].split("\n## ", 1)[0]
    sdxl_part, flow_part = section.split("SD3 / SD3.5 and FLUX", 1)
    for part, family in ((sdxl_part, "sdxl"), (flow_part, "sd3")):
        rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", part, flags=re.M))
        assert rows == describe_family_targets(family), family


@pytest.mark.parametrize("family", FAMILIES)
def test_methods_without_a_meaning_here_refuse_in_one_line(backends, family):
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods import get_method, run_method

    for name in ("coerasing", "ear", "ga"):
        method = get_method(name)
        config = build_config(method.config_cls, None, list(method.smoke_overrides))
        with pytest.raises(ErasekitError):
            run_method(method, backends[family], ConceptSpec.from_lists(["star"]), config, seed=0)


def test_bench_families_tiny_runs_and_writes_json(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_families.py"
    spec = importlib.util.spec_from_file_location("bench_families", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "families_tiny.json"
    module.main(["--task", "tiny", "--out", str(out)])
    result = json.loads(out.read_text())
    runs = {(r["model"], r["method"]) for r in result["runs"]}
    assert runs == {(f"tiny-{f}", m) for f in FAMILIES for m in ("uce", "esd")}
    assert all(r["seconds"] > 0 for r in result["runs"]) and "diffusers" in result["versions"]


@pytest.mark.parametrize("family", FAMILIES)
def test_encoding_matches_the_stock_pipelines_encode_prompt(backends, family):
    backend, pipe = backends[family], backends[family].pipe
    prompts = ["a photo of a red star", "a cat"]
    context, pooled = unpack(backend.encode_prompts(prompts), backend.pooled_dim)
    with torch.no_grad():
        if family == "sdxl":
            embeds, _neg, pooled_embeds, _neg_pooled = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=False
            )
        elif family == "sd3":
            embeds, _neg, pooled_embeds, _neg_pooled = pipe.encode_prompt(
                prompts, None, None, do_classifier_free_guidance=False
            )
        else:
            embeds, pooled_embeds, _text_ids = pipe.encode_prompt(prompts, None)
    assert torch.equal(context, embeds) and torch.equal(pooled, pooled_embeds)


@pytest.mark.parametrize("family", ("sd3", "flux"))
def test_flow_sampling_matches_the_stock_pipeline(backends, family):
    """Same start latents and steps: the backend's loop lands where the stock pipeline's does."""
    from diffusers import FluxPipeline

    backend = backends[family]
    latents = backend.initial_latents([5])
    cond, uncond = backend.encode_prompts(["a red star"]), backend.encode_prompts([""])
    with torch.no_grad():
        ours = backend.denoise(latents, cond, uncond, steps=3, guidance=4.0)
        size = backend.default_size
        start = latents
        if family == "flux":
            start = FluxPipeline._pack_latents(latents, 1, latents.shape[1], *latents.shape[-2:])
        theirs = backend.pipe(
            "a red star", height=size, width=size, num_inference_steps=3, guidance_scale=4.0,
            latents=start, output_type="latent",
        ).images  # fmt: skip
        if family == "flux":
            scale = backend.vae_scale_factor
            theirs = FluxPipeline._unpack_latents(theirs, size, size, scale)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), float((ours - theirs).abs().max())


def test_sdxl_sampling_matches_the_stock_pipeline_with_the_same_scheduler(backends):
    from diffusers import DDIMScheduler

    backend = backends["sdxl"]
    pipe = TINY_BUILDERS["sdxl"]()
    pipe.scheduler = DDIMScheduler.from_config(backend.pipe.scheduler.config)  # our loop is DDIM
    latents = backend.initial_latents([5])
    cond, uncond = backend.encode_prompts(["a red star"]), backend.encode_prompts([""])
    size = backend.default_size
    with torch.no_grad():
        ours = backend.denoise(latents, cond, uncond, steps=3, guidance=4.0)
        theirs = pipe(
            "a red star", negative_prompt="", height=size, width=size, num_inference_steps=3,
            guidance_scale=4.0, latents=latents, output_type="latent",
        ).images  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), float((ours - theirs).abs().max())


def test_flux_without_guidance_embedding_runs_and_erases():
    """FLUX.1-schnell has no guidance embedding: the backend passes none and methods still run."""
    from erasekit.applying import apply, revert
    from erasekit.backends.flow import FlowBackend
    from erasekit.backends.tiny_families import build_tiny_flux_pipeline
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods import get_method, run_method

    backend = FlowBackend(build_tiny_flux_pipeline(guidance_embeds=False), "flux", name="tiny-schnell")
    assert not backend.transformer.config.guidance_embeds
    latents = backend.initial_latents([1])
    cond = backend.encode_prompts(["a star"])
    with torch.no_grad():
        before = backend.predict_noise(latents, 500, cond)
        assert torch.equal(before, backend.predict_noise(latents, 500, cond, guidance=9.0))  # ignored
    method = get_method("esd")
    config = build_config(method.config_cls, None, list(method.smoke_overrides))
    artifact = run_method(method, backend, ConceptSpec.from_lists(["star"]), config, seed=0)
    with torch.no_grad():
        apply(artifact, backend)
        try:
            after = backend.predict_noise(latents, 500, cond)
        finally:
            revert(backend)
    assert not torch.equal(before, after)
