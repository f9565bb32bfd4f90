"""A Hugging Face Janus folder (tiny ``JanusForConditionalGeneration`` built in code, saved, reloaded
offline) loads as an AR backend by its config: KV cache = recompute, teacher forcing = the cached loop,
the Janus module names behind the named targets, EAR runs and reverts exactly, folder errors."""

from __future__ import annotations

import json

import pytest
import torch

from erasekit.errors import ErasekitError

WORDS = ["<pad>", "<bos>", "<begin_of_image>", "<unk>", "<|User|>:", "<|Assistant|>:"]
WORDS += "a an red blue green star square circle on plain striped background".split()


def _save_tiny_janus(folder, *, generation: bool = True) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    text = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    vision = JanusVisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=32, mlp_ratio=2.0, num_image_tokens=16,
    )  # fmt: skip
    vq = JanusVQVAEConfig(
        embed_dim=4, num_embeddings=32, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, projection_dim=32, image_token_embed_dim=32,
    )  # fmt: skip
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=3)
    JanusForConditionalGeneration(config).save_pretrained(folder)
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=word_level, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    if generation:
        GenerationConfig(
            bos_token_id=1, pad_token_id=0, guidance_scale=3.0, generation_kwargs={"boi_token_id": 2}
        ).save_pretrained(folder)
    else:  # the model's save writes a generation config without the image-generation ids
        (folder / "generation_config.json").unlink()


@pytest.fixture(scope="module")
def janus_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("janus")
    _save_tiny_janus(folder)
    return folder


@pytest.fixture(scope="module")
def janus(janus_folder):
    from erasekit.zoo import backend_kind, load_model

    assert backend_kind(str(janus_folder)) == "ar"  # by its config.json, no erasekit layout file
    return load_model(str(janus_folder))


def test_janus_folder_loads_offline_and_samples_with_the_cache(janus):
    assert type(janus.family).__name__ == "JanusFamily"
    assert janus.num_image_tokens == 16 and janus.codebook_size == 32 and janus.default_size == 8
    assert janus.default_guidance == 3.0
    rows = janus.prompt_rows(["a red star"])
    assert rows[0, 0] == 1 and rows[0, -1] == 2  # BOS ... BOI
    assert rows[0, 1:6].tolist() == [4, 6, 8, 11, 5]  # the SFT template around the prompt
    prompts, seeds = ["a red star", "a blue circle on plain background"], [1, 2]
    cached = janus.sample_tokens(prompts, seeds)
    assert torch.equal(cached, janus.sample_tokens(prompts, seeds, use_cache=False))
    images = janus.sample(prompts, seeds)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    codes = janus.encode_images(images)
    assert codes.shape == (2, 16) and int(codes.max()) < 32


def test_janus_teacher_forcing_equals_the_loop_and_uses_the_generation_head(janus):
    from transformers import DynamicCache

    prompts = ["a red star", "a green square"]
    codes = janus.sample_tokens(prompts, [3, 4])
    rows = janus.prompt_rows(prompts)
    forced = janus.hidden_states(rows, codes)
    cache, inputs, loop = DynamicCache(), janus.embed_token_ids(rows), []
    with torch.no_grad():
        for i in range(codes.shape[1]):
            h, cache = janus.family.forward(inputs, cache)
            loop.append(h[:, -1])
            inputs = janus.model.prepare_embeddings_for_image_generation(codes[:, i : i + 1])
    torch.testing.assert_close(forced, torch.stack(loop, 1), rtol=1e-5, atol=1e-5)
    logits = janus.next_token_logits(rows, codes)
    torch.testing.assert_close(logits, janus.model.model.generation_head(forced))


def test_janus_named_targets(janus):
    first = janus.parameters_for("lm_attn_first_1")
    assert sorted(first) == [f"model.model.language_model.layers.0.self_attn.{p}_proj.weight" for p in "koqv"]
    head = janus.parameters_for("image_head")
    assert head and all(n.startswith("model.model.generation_head.") for n in head)
    assert not any("vision_model" in n or "vqmodel" in n for n in janus.parameters_for("lm"))


def test_ear_on_the_janus_folder_changes_only_its_target_and_reverts_exactly(janus):
    from erasekit.applying import apply, revert
    from erasekit.concepts import ConceptSpec
    from erasekit.methods import run_method
    from erasekit.methods.ear import EAR, EARConfig

    before = {k: v.clone() for k, v in janus.named_parameters().items()}
    spec = ConceptSpec.from_lists(concepts=["star"], anchors=["square"], templates=["a red {}"])
    config = EARConfig(iterations=2, pairs_per_iteration=2, window=8, lr=1e-3, anchors_per_iteration=1)
    art = run_method(EAR(), janus, spec, config, seed=0)
    assert set(art.weight_edits) == set(janus.parameters_for("lm_attn_first_2"))
    try:
        apply(art, janus)
        changed = {k for k, v in janus.named_parameters().items() if not torch.equal(v, before[k])}
        assert changed == set(art.weight_edits)
    finally:
        revert(janus)
    assert all(torch.equal(v, before[k]) for k, v in janus.named_parameters().items())


def test_janus_folder_errors(tmp_path):
    from erasekit.backends.ar import load_ar_backend

    folder = tmp_path / "no-generation-config"
    folder.mkdir()
    _save_tiny_janus(folder, generation=False)
    with pytest.raises(ErasekitError, match="boi_token_id"):
        load_ar_backend(folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ErasekitError, match="not an AR"):
        load_ar_backend(other)


def test_erasekit_generate_and_erase_run_on_the_janus_folder(janus_folder, tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    _register()
    runner = CliRunner()
    model = ["--model", str(janus_folder)]
    gen = runner.invoke(
        app, ["generate", *model, "--prompt", "a red star", "--n", "2", "--out", str(tmp_path / "g")]
    )
    assert gen.exit_code == 0, gen.output
    assert len(list((tmp_path / "g").glob("*.png"))) == 2
    erase = runner.invoke(
        app,
        ["erase", "ear", *model, "--concept", "star", "--anchor", "square", "-o", "iterations=1",
         "-o", "pairs_per_iteration=1", "-o", "window=8", "--out", str(tmp_path / "a")],
    )  # fmt: skip
    assert erase.exit_code == 0, erase.output
