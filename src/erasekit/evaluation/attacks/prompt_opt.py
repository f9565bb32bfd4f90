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

On an autoregressive image-token model (a backend with ``next_token_logits``, no denoiser) the loss is
that model's own training loss instead: the mean cross-entropy of the renders' image codes
(``backend.encode_images``) given ``a ⊕ prompt``, teacher-forced (−1/T Σ_i log p_θ'(y_i | a ⊕ prompt,
y_<i)); the prefix is searched over the prompt vocabulary (``backend.prompt_token_pool``), inserted
after BOS with the row's BOI kept (``backend.insert_prompt_tokens``). Which loss is used follows the
backend's surface, nothing else.

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
    """Concept renders the loss is measured on."""
    timesteps: int = 2
    """Noise levels per render in the loss (diffusion models; an image-token loss has none)."""
    eval_prompts: int = 4
    """Concept prompts the ASR is measured on (each with every seed)."""
    sample_steps: int = 25
    """DDIM steps per generated image (diffusion models)."""
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
    """The fixed denoising loss of an adversarial prefix on seeded concept renders (diffusion models)."""

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
        tokenizer = backend.tokenizer
        self.banned = sorted(
            {
                int(i)
                for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                if i is not None
            }
        )

    def with_prefix(self, ids: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        return with_prefix(ids, adversarial, self.eos_id)

    @torch.no_grad()
    def conditioning(self, ids: torch.Tensor) -> torch.Tensor:
        """What generation conditions on for token ids: the text encoder's states."""
        return self.text_encoder(ids)[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.tokenizer.decode(list(ids))

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


class _ImageTokenLoss:
    """The fixed image-token loss of an adversarial prefix (autoregressive image-token models): mean
    cross-entropy of seeded concept renders' codes given ``a ⊕ prompt``, teacher-forced."""

    def __init__(self, backend: Any, concept: str, budget: PromptOptBudget, generator: torch.Generator):
        from erasekit.world import prompt_for, render

        self.backend = backend
        self.embedding = backend.prompt_token_embedding()
        labels = other_labels(concept, budget.images, generator)
        images = render(
            [lab["shape"] for lab in labels],
            [lab["color"] for lab in labels],
            [lab["style"] for lab in labels],
            size=backend.default_size,
            generator=generator,
        )
        with torch.no_grad():
            self.codes = backend.encode_images(images)
        self.ids = backend.token_ids([prompt_for(**lab) for lab in labels])
        allowed = torch.zeros(self.embedding.weight.shape[0], dtype=torch.bool)
        allowed[backend.prompt_token_pool()] = True
        self.banned = (~allowed).nonzero().squeeze(1).tolist()

    def with_prefix(self, ids: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        return self.backend.insert_prompt_tokens(ids, adversarial)

    @torch.no_grad()
    def conditioning(self, ids: torch.Tensor) -> torch.Tensor:
        """What generation conditions on for token ids: the prompt rows' input embeddings."""
        return self.backend.embed_token_ids(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode_prompt_tokens(list(ids))

    def _loss_from_cond(self, cond: torch.Tensor, groups: int) -> torch.Tensor:
        codes = self.codes.repeat(groups, 1)
        logits = self.backend.next_token_logits(cond, codes).float()
        error = torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes.flatten(), reduction="none")
        return error.reshape(groups, -1).mean(1)

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor) -> torch.Tensor:
        """Loss of each candidate prefix [C, k] -> [C]."""
        ids = torch.cat([self.with_prefix(self.ids, c) for c in candidates])
        return self._loss_from_cond(self.backend.embed_token_ids(ids), len(candidates))

    def gradient(self, adversarial: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and its gradient w.r.t. a one-hot encoding of the prefix tokens [k, vocab]."""
        weight = self.embedding.weight
        one_hot = torch.zeros(len(adversarial), weight.shape[0], dtype=weight.dtype)
        one_hot[torch.arange(len(adversarial)), adversarial] = 1.0
        one_hot.requires_grad_(True)
        k = len(adversarial)
        with torch.no_grad():
            cond = self.backend.embed_token_ids(self.with_prefix(self.ids, adversarial))
        cond = torch.cat(
            [cond[:, :1], (one_hot @ weight).unsqueeze(0).expand(len(cond), -1, -1), cond[:, 1 + k :]], 1
        )
        loss = self._loss_from_cond(cond, 1)[0]
        (grad,) = torch.autograd.grad(loss, one_hot)
        return float(loss.detach()), grad


def concept_loss(
    backend: Any, concept: str, budget: PromptOptBudget, generator: torch.Generator
) -> _TokenLoss | _ImageTokenLoss:
    """The attack's loss for this backend's surface: a denoiser's (``predict_noise``) or an image-token
    model's (``next_token_logits``).

    Raises:
        ErasekitError: the backend offers neither.
    """
    if hasattr(backend, "predict_noise"):
        return _TokenLoss(backend, concept, budget, generator)
    if hasattr(backend, "next_token_logits"):
        return _ImageTokenLoss(backend, concept, budget, generator)
    raise ErasekitError(
        "prompt_opt attacks text-to-image models (a denoiser or an image-token model); this backend is neither."
    )


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
        loss = concept_loss(backend, concept, budget, generator)
        adversarial, trace = optimise_prefix(loss, budget, generator, loss.banned)

        eval_labels = other_labels(concept, budget.eval_prompts, torch.Generator().manual_seed(seeds[0] + 1))
        prompts = [prompt_for(**lab) for lab in eval_labels]
        ids = backend.token_ids([p for p in prompts for _ in seeds])
        image_seeds = [s for _ in prompts for s in seeds]
        plain = loss.conditioning(ids)
        attacked = loss.conditioning(loss.with_prefix(ids, adversarial))
        kwargs = {"steps": budget.sample_steps, "guidance": budget.guidance}
        hits_before = judge_hits(
            judge, generate_from_embeddings(backend, plain, image_seeds, **kwargs), concept
        )
        hits = judge_hits(judge, generate_from_embeddings(backend, attacked, image_seeds, **kwargs), concept)
        prefix_text = loss.decode(adversarial.tolist())
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
