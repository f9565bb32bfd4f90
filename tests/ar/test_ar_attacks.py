"""Prompt-only attacks (synonym paraphrases) run on an autoregressive image-token model."""

from __future__ import annotations

import torch

from erasekit.evaluation.attacks import get_attack
from erasekit.evaluation.attacks.common import generate_from_prompts
from erasekit.world.judge import load_judge
from erasekit.zoo import load_model


def test_synonym_attack_samples_through_the_ar_backend():
    backend = load_model("tiny-ar")
    prompts, seeds = ["a red pentagram on a plain background", "a blue starburst"], [3, 4]
    images = generate_from_prompts(backend, prompts, seeds, steps=1, guidance=2.0)
    assert torch.equal(images, backend.sample(prompts, seeds, steps=1, guidance=2.0))  # its own loop
    record = get_attack("synonym").run(
        backend, "star", budget={"preset": "small", "prompts_per_synonym": 1}, seeds=[0], judge=load_judge()
    )
    assert record["attempts"] == 2 and 0.0 <= record["asr"] <= 1.0
    assert set(record["asr_by_synonym"]) == {"pentagram", "starburst"}


def test_embedding_generation_reproduces_sampling_on_the_ar_backend():
    from erasekit.evaluation.attacks.common import generate_from_embeddings

    backend = load_model("tiny-ar")
    prompts, seeds = ["a red star", "a blue circle on a plain background"], [3, 4]
    cond = backend.encode_prompts(prompts)
    assert cond.shape == (2, backend.prompt_len, backend.model.config.hidden_size)
    images = generate_from_embeddings(backend, cond, seeds, steps=1, guidance=2.0)
    assert torch.equal(images, backend.sample(prompts, seeds, guidance=2.0))
    shifted = generate_from_embeddings(backend, cond + 0.5, seeds, steps=1, guidance=2.0)
    assert not torch.equal(shifted, images)  # the embeddings are what the model reads


def test_inserted_prompt_tokens_keep_bos_words_and_boi():
    import pytest

    from erasekit.errors import ErasekitError

    backend = load_model("tiny-ar")
    ids = backend.token_ids(["a red star", "a blue circle on a background"])
    out = backend.insert_prompt_tokens(ids, torch.tensor([7, 8]))
    tok = backend.tokenizer
    assert out.shape == ids.shape and (out[:, 0] == tok.bos_id).all() and (out[:, -1] == tok.boi_id).all()
    assert out[:, 1:3].tolist() == [[7, 8], [7, 8]]
    assert torch.equal(out[0, 3:6], ids[0, 1:4])  # the prompt follows the inserted tokens
    assert torch.equal(out[1, 3:9], ids[1, 1:7])
    with pytest.raises(ErasekitError, match="too long"):
        backend.insert_prompt_tokens(ids, torch.arange(3))  # the second prompt has 6 of 8 words


def test_prompt_opt_on_the_ar_backend_uses_its_image_token_loss():
    from erasekit.evaluation.attacks.prompt_opt import PromptOptBudget, _ImageTokenLoss, concept_loss

    backend = load_model("tiny-ar")
    budget = PromptOptBudget(steps=3, n_tokens=1, candidates=4, top_k=8, images=2, eval_prompts=1)
    loss = concept_loss(backend, "star", budget, torch.Generator().manual_seed(0))
    assert isinstance(loss, _ImageTokenLoss) and loss.codes.shape == (2, backend.num_image_tokens)
    pool = set(backend.prompt_token_pool().tolist())
    assert pool and not pool & set(loss.banned) and backend.tokenizer.image_offset in loss.banned
    adversarial = torch.tensor([5])
    value, grad = loss.gradient(adversarial)
    assert abs(float(loss.losses(adversarial[None])[0]) - value) < 1e-5  # one-hot path = id path
    assert grad.shape == (1, loss.embedding.weight.shape[0])
    # the loss is the model's teacher-forced cross-entropy of the renders' codes
    ids = backend.insert_prompt_tokens(loss.ids, adversarial)
    logits = backend.next_token_logits(ids, loss.codes)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), loss.codes.flatten())
    assert abs(float(expected) - value) < 1e-5
    record = get_attack("prompt_opt").run(
        backend, "star", budget={**vars(budget), "guidance": 2.0}, seeds=[0, 1], judge=load_judge()
    )
    assert record["attempts"] == 2 and record["loss_after"] <= record["loss_before"]
    assert all(int(i) in pool for i in record["adversarial_token_ids"])


def test_concept_vector_on_the_ar_backend_moves_only_the_concept_position():
    from erasekit.evaluation.attacks.concept_vector import concept_direction

    backend = load_model("tiny-ar")
    with_c = ["a red star on a plain background", "a blue star"]
    without = ["a red circle on a plain background", "a blue square"]
    direction = concept_direction(backend, with_c, without)
    moved = direction.abs().sum(-1) > 0
    assert moved.tolist() == [i == 3 for i in range(backend.prompt_len)]  # position of star/circle/square
    record = get_attack("concept_vector").run(
        backend,
        "star",
        budget={"preset": "small", "pairs": 1, "prompts": 1, "guidance": 2.0},
        seeds=[0],
        judge=load_judge(),
    )
    assert record["attempts"] == 1 and set(record["asr_by_scale"]) == {"0.0", "1.5", "3.0"}
