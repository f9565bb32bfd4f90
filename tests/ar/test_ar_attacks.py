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
