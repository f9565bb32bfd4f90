"""White-box prompt optimisation in the spirit of UnlearnDiffAtk (Zhang et al., ECCV 2024).

The attacker holds the erased model and images of the concept. It prepends ``n_tokens`` adversarial
tokens to a prompt that names the concept and searches, over the discrete vocabulary, for the tokens
that make the erased model's denoising of those images best again (UnlearnDiffAtk eq. 3):

    min_{a}  E_{x0, t, ε} || ε_θ'(x_t, t, c(a ⊕ prompt)) − target(x0, ε, t) ||²

with the model's own training target (ε or v). The search is GCG-style (Zou et al. 2023): the
gradient of the loss with respect to a one-hot encoding of each adversarial token ranks ``top_k``
replacement tokens per position; each step evaluates ``candidates`` random single-token swaps exactly
and keeps the best if it lowers the loss. The concept images are ShapesWorld renders
(:func:`erasekit.world.render`) of the concept with seeded other attributes, each paired with its
canonical prompt; the noise and timesteps are drawn once, so the loss is a fixed function of the tokens.

ASR is measured before (the plain prompts) and after (the same prompts, seeds and noise with the
adversarial prefix). Generation conditions on the optimised token ids directly, as a white-box attacker
would; the decoded text is recorded too (re-tokenising it may not give the same ids).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.attacks.common import (
    Judge,
    check_seeds,
    generate_from_embeddings,
    judge_hits,
    other_labels,
    resolve_budget,
    result,
)
from erasekit.methods.base import require


@dataclass(frozen=True)
class PromptOptBudget:
    """Search and evaluation budget of the prompt-optimisation attack."""

    steps: int = 20
    """Search steps (each evaluates ``candidates`` token swaps)."""
    n_tokens: int = 3
    """Adversarial tokens prepended to the prompt."""
    candidates: int = 16
    """Single-token swaps evaluated per step."""
    top_k: int = 64
    """Replacement tokens per position ranked by the one-hot gradient."""
    images: int = 4
    """Concept renders the denoising loss is measured on."""
    timesteps: int = 2
    """Noise levels per render in the loss."""
    eval_prompts: int = 4
    """Concept prompts the ASR is measured on (each with every seed)."""
    sample_steps: int = 25
    """DDIM steps per generated image."""
    guidance: float = 3.0
    """Classifier-free guidance scale."""

    def __post_init__(self) -> None:
        for name in (
            "n_tokens",
            "candidates",
            "top_k",
            "images",
            "timesteps",
            "eval_prompts",
            "sample_steps",
        ):
            require(getattr(self, name) >= 1, f"Budget field {name} must be at least 1.")
        require(self.steps >= 0, "Budget field steps must be at least 0.")


BUDGETS = {"small": {}, "full": {"steps": 100, "candidates": 64, "images": 8, "eval_prompts": 8}}


def with_prefix(ids: torch.Tensor, adversarial: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Insert adversarial token ids right after BOS: [BOS, a_1..a_k, prompt…, EOS, pad…] (length kept).

    Raises:
        ErasekitError: the prompt plus the prefix would not fit the tokenizer's length.
    """
    k, length = len(adversarial), ids.shape[1]
    eos_positions = (ids == eos_id).int().argmax(1)
    if int(eos_positions.max()) + k >= length:
        raise ErasekitError(f"A prompt is too long for {k} adversarial tokens; shorten it or lower n_tokens.")
    prefix = adversarial.to(ids.device).unsqueeze(0).expand(len(ids), k)
    return torch.cat([ids[:, :1], prefix, ids[:, 1 : length - k]], dim=1)


class _TokenLoss:
    """The fixed denoising loss of an adversarial prefix on seeded concept renders."""

    def __init__(self, backend: Any, concept: str, budget: PromptOptBudget, generator: torch.Generator):
        from erasekit.world import prompt_for, render

        self.backend = backend
        self.text_encoder = backend.components["text_encoder"]
        self.embedding = self.text_encoder.get_input_embeddings()
        self.eos_id = int(backend.tokenizer.eos_token_id)
        labels = other_labels(concept, budget.images, generator)
        images = render(
            [lab["shape"] for lab in labels],
            [lab["color"] for lab in labels],
            [lab["style"] for lab in labels],
            size=backend.default_size,
            generator=generator,
        )
        with torch.no_grad():
            x0 = backend.encode_images(images).repeat_interleave(budget.timesteps, 0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = torch.randint(0, backend.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
        self.x_t, self.t = backend.add_noise(x0, noise, t), t
        self.target = backend.training_target(x0, noise, t)
        self.ids = backend.token_ids([prompt_for(**lab) for lab in labels])
        self.repeats = budget.timesteps

    def _loss_from_cond(self, cond: torch.Tensor, groups: int) -> torch.Tensor:
        cond = cond.repeat_interleave(self.repeats, 0)
        x_t, t, target = (v.repeat(groups, *([1] * (v.ndim - 1))) for v in (self.x_t, self.t, self.target))
        error = (self.backend.predict_noise(x_t, t, cond) - target).float().pow(2)
        return error.reshape(groups, -1).mean(1)

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor) -> torch.Tensor:
        """Loss of each candidate prefix [C, k] -> [C]."""
        ids = torch.cat([with_prefix(self.ids, c, self.eos_id) for c in candidates])
        return self._loss_from_cond(self.text_encoder(ids)[0], len(candidates))

    def gradient(self, adversarial: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and its gradient w.r.t. a one-hot encoding of the prefix tokens [k, vocab]."""
        weight = self.embedding.weight
        one_hot = torch.zeros(len(adversarial), weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot[torch.arange(len(adversarial)), adversarial.to(weight.device)] = 1.0
        one_hot.requires_grad_(True)
        k = len(adversarial)

        def replace(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            out = output.clone()
            out[:, 1 : 1 + k] = (one_hot @ weight).unsqueeze(0).expand(len(out), -1, -1)
            return out

        handle = self.embedding.register_forward_hook(replace)
        try:
            ids = with_prefix(self.ids, adversarial, self.eos_id)
            loss = self._loss_from_cond(self.text_encoder(ids)[0], 1)[0]
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(loss, one_hot)
        return float(loss.detach()), grad


def optimise_prefix(
    loss: _TokenLoss, budget: PromptOptBudget, generator: torch.Generator, banned: Sequence[int]
) -> tuple[torch.Tensor, list[float]]:
    """GCG search: returns the best prefix and the loss after every step (index 0 = initial)."""
    vocab = loss.embedding.weight.shape[0]
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(banned)] = False
    pool = allowed.nonzero().squeeze(1)
    adversarial = pool[torch.randint(len(pool), (budget.n_tokens,), generator=generator)]
    current, grad = loss.gradient(adversarial)
    trace = [current]
    for _ in range(budget.steps):
        grad[:, ~allowed.to(grad.device)] = float("inf")
        top = (-grad).topk(min(budget.top_k, len(pool)), dim=1).indices  # [k, top_k]
        positions = torch.randint(budget.n_tokens, (budget.candidates,), generator=generator)
        choices = torch.randint(top.shape[1], (budget.candidates,), generator=generator)
        candidates = adversarial.unsqueeze(0).repeat(budget.candidates, 1)
        candidates[torch.arange(budget.candidates), positions] = top[positions, choices].cpu()
        values = loss.losses(candidates)
        best = int(values.argmin())
        if float(values[best]) < current:
            adversarial = candidates[best]
            current, grad = loss.gradient(adversarial)  # the gradient at the new prefix
        trace.append(current)
    return adversarial, trace


class PromptOptAttack:
    name: ClassVar[str] = "prompt_opt"
    budget_cls: ClassVar[type] = PromptOptBudget
    budgets: ClassVar[dict] = BUDGETS

    def run(self, backend: Any, concept: str, *, budget: Any, seeds: Sequence[int], judge: Judge) -> dict:
        from erasekit.world import prompt_for

        started = time.perf_counter()
        budget = resolve_budget(PromptOptBudget, BUDGETS, budget)
        seeds = check_seeds(seeds)
        generator = torch.Generator().manual_seed(seeds[0])
        loss = _TokenLoss(backend, concept, budget, generator)
        tokenizer = backend.tokenizer
        banned = {
            int(i)
            for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
            if i is not None
        }
        adversarial, trace = optimise_prefix(loss, budget, generator, sorted(banned))

        eval_labels = other_labels(concept, budget.eval_prompts, torch.Generator().manual_seed(seeds[0] + 1))
        prompts = [prompt_for(**lab) for lab in eval_labels]
        ids = backend.token_ids([p for p in prompts for _ in seeds])
        image_seeds = [s for _ in prompts for s in seeds]
        with torch.no_grad():
            plain = backend.components["text_encoder"](ids)[0]
            attacked = backend.components["text_encoder"](with_prefix(ids, adversarial, loss.eos_id))[0]
        kwargs = {"steps": budget.sample_steps, "guidance": budget.guidance}
        hits_before = judge_hits(
            judge, generate_from_embeddings(backend, plain, image_seeds, **kwargs), concept
        )
        hits = judge_hits(judge, generate_from_embeddings(backend, attacked, image_seeds, **kwargs), concept)
        prefix_text = tokenizer.decode(adversarial.tolist())
        return result(
            self.name,
            backend,
            concept,
            judge,
            budget,
            seeds,
            hits,
            started,
            asr_before=sum(hits_before) / len(hits_before),
            adversarial_token_ids=adversarial.tolist(),
            adversarial_prefix=prefix_text,
            example_prompt=f"{prefix_text} {prompts[0]}",
            loss_before=trace[0],
            loss_after=trace[-1],
            loss_trace=[round(v, 6) for v in trace],
        )
