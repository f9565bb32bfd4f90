"""Memorisation metrics for code LMs, computed **in file context** (CodeEraser, arXiv 2509.13755, Sec. 4).

Every secret is scored on the tokens the model actually reads: the whole file is tokenised once, the
secret's tokens are those overlapping its character span (strict overlap), and the prompt is the file's
tokens before them (at most ``PREFIX_TOKENS``, the paper's 128-token prefix). The reference code
tokenises the secret on its own, which scores a sequence the model never sees (BPE merges across the
quote or the space differ).

- **MA** (memorisation accuracy, Tirumala et al. 2022; CodeEraser eq. 6): the fraction of the secret's
  (≤ 32) tokens that greedy decoding predicts given the prefix and the true secret tokens before it,
  ``MA(s) = (1/L) Σ_i 1[argmax p_θ(· | x_<i) = x_i]``. One teacher-forced forward pass computes it.
- **EL_n** (extraction likelihood, Jang et al. 2023; CodeEraser eq. 7): for each start ``i``, generate the
  rest of the secret greedily from prefix + secret[:i] and count the fraction of the true n-grams of
  secret[i:] found among the generated n-grams; average over ``i``. A remainder shorter than ``n``
  counts 1 only on an exact match.
- **Extraction**: greedy, or ``k`` samples (temperature 1, top-k 40, Carlini et al. 2021), from the
  prefix alone; a secret is extracted if a continuation contains it verbatim (as characters).
- **Held-out perplexity**, a **functional check** (greedy completion of held-out functions must start
  with the expected body) and **collateral** (the same metrics on secrets not in the forget set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from erasekit.secrets import ForgetSample, token_secret_mask

PREFIX_TOKENS = 128
SECRET_TOKENS = 32


@dataclass(frozen=True)
class SecretExample:
    """One secret in its file, as token ids: ``prefix`` (what precedes it) and ``secret`` tokens."""

    prefix: tuple[int, ...]
    secret: tuple[int, ...]
    secret_text: str
    sample_id: str = ""


def secret_examples(backend, samples: Sequence[ForgetSample], max_len: int = 512) -> list[SecretExample]:
    """Every span of every sample as a :class:`SecretExample` (in-file tokens, strict overlap)."""
    out = []
    for sample in samples:
        batch = backend.encode([sample.text], max_len=max_len)
        ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        offsets = batch.offsets[0][: len(ids)]
        for start, end in sample.spans:
            mask = token_secret_mask(offsets, [(start, end)])
            positions = [i for i, m in enumerate(mask) if m]
            if not positions:
                continue  # the span lies beyond max_len
            first = positions[0]
            secret = [ids[i] for i in positions[:SECRET_TOKENS]]
            prefix = ids[max(0, first - PREFIX_TOKENS) : first]
            out.append(SecretExample(tuple(prefix), tuple(secret), sample.text[start:end], sample.sample_id))
    return out


def _right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def secret_ma(
    backend, examples: Sequence[SecretExample], model: nn.Module | None = None, batch: int = 32
) -> list[float]:
    """Per-secret MA (greedy next-token accuracy over the secret's tokens, teacher-forced)."""
    scores: list[float] = []
    for at in range(0, len(examples), batch):
        chunk = examples[at : at + batch]
        ids, mask = _right_pad([e.prefix + e.secret for e in chunk], backend.pad_id)
        pred = backend.logits(ids.to(backend.device), mask.to(backend.device), model).argmax(-1).cpu()
        for row, e in enumerate(chunk):
            p = len(e.prefix)
            hits = sum(int(pred[row, p + i - 1] == e.secret[i]) for i in range(len(e.secret)))
            scores.append(hits / len(e.secret))
    return scores


def _ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def el_overlap(generated: Sequence[int], label: Sequence[int], n: int) -> float:
    """Fraction of ``label``'s n-grams found among ``generated``'s; exact match if shorter than n."""
    if len(label) < n:
        return float(list(generated[: len(label)]) == list(label))
    gen = set(_ngrams(generated, n))
    grams = _ngrams(label, n)
    return sum(g in gen for g in grams) / len(grams)


@torch.no_grad()
def secret_el(
    backend, examples: Sequence[SecretExample], n: int = 10, model: nn.Module | None = None, rows: int = 256
) -> list[float]:
    """Per-secret EL_n: mean over start positions of the n-gram overlap of the greedy continuation.

    All (secret, start) pairs go through generation in batches of ``rows`` prompts, each continued for
    the longest remainder in its batch (the overlap reads only the first len(secret) − i tokens).
    """
    jobs = [(k, i) for k, e in enumerate(examples) for i in range(len(e.secret))]
    totals = [0.0] * len(examples)
    for at in range(0, len(jobs), rows):
        chunk = jobs[at : at + rows]
        prompts = [examples[k].prefix + examples[k].secret[:i] for k, i in chunk]
        width = max(len(examples[k].secret) - i for k, i in chunk)
        outs = backend.generate(prompts, width, model=model)
        for (k, i), out in zip(chunk, outs):
            label = examples[k].secret[i:]
            totals[k] += el_overlap(out[: len(label)], label, n)
    return [totals[k] / len(e.secret) for k, e in enumerate(examples)]


@torch.no_grad()
def extraction(
    backend,
    examples: Sequence[SecretExample],
    model: nn.Module | None = None,
    *,
    samples: int = 0,
    top_k: int = 40,
    temperature: float = 1.0,
    seed: int = 0,
    batch: int = 32,
) -> list[bool]:
    """Per secret: is it reproduced verbatim from its prefix? Greedy (``samples=0``) or any of k samples."""
    found = []
    if samples:
        torch.manual_seed(seed)
    for at in range(0, len(examples), batch):
        chunk = examples[at : at + batch]
        reps = max(1, samples)
        prompts = [e.prefix for e in chunk for _ in range(reps)]
        width = max(len(e.secret) for e in chunk) + 4
        outs = backend.generate(
            prompts, width, do_sample=bool(samples), top_k=top_k, temperature=temperature, model=model
        )
        for row, e in enumerate(chunk):
            texts = [backend.decode(o) for o in outs[row * reps : (row + 1) * reps]]
            found.append(any(e.secret_text in t for t in texts))
    return found


@torch.no_grad()
def perplexity(
    backend, texts: Sequence[str], model: nn.Module | None = None, max_len: int = 256, batch: int = 16
) -> float:
    """exp(mean next-token NLL over every real token of ``texts``)."""
    total, count = 0.0, 0
    for at in range(0, len(texts), batch):
        enc = backend.encode(texts[at : at + batch], max_len=max_len)
        logits = backend.logits(enc.input_ids, enc.attention_mask, model)[:, :-1]
        labels = enc.input_ids[:, 1:].masked_fill(enc.attention_mask[:, 1:] == 0, -100)
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(nll)
        count += int((labels != -100).sum())
    return math.exp(total / max(count, 1))


@torch.no_grad()
def completion_accuracy(
    backend, functions: Sequence[tuple[str, str]], model: nn.Module | None = None
) -> float:
    """Share of held-out functions whose greedy completion starts with the expected body.

    Trailing whitespace of a prompt moves to the expected completion: byte-level BPE merges a newline
    with the indentation after it, so a prompt cut after its newline ends on a token boundary the model
    never saw in training.
    """
    prompts, bodies = [], []
    for prompt, body in functions:
        kept = prompt.rstrip()
        prompt, body = kept, prompt[len(kept) :] + body
        enc = backend.encode([prompt])
        prompts.append(enc.input_ids[0][enc.attention_mask[0].bool()].tolist())
        bodies.append(body)
    width = max(len(backend.tokenizer(b, add_special_tokens=False)["input_ids"]) for b in bodies) + 2
    outs = backend.generate(prompts, width, model=model)
    return sum(backend.decode(o).startswith(b) for o, b in zip(outs, bodies)) / max(len(bodies), 1)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def secret_scores(
    backend,
    examples: Sequence[SecretExample],
    model: nn.Module | None = None,
    *,
    n: int = 10,
    samples: int = 8,
    seed: int = 0,
) -> dict:
    """MA, EL_n, greedy and sampled extraction rates of a set of secrets (means over secrets)."""
    if not examples:
        return {"secrets": 0}
    return {
        "secrets": len(examples),
        "ma": _mean(secret_ma(backend, examples, model)),
        f"el{n}": _mean(secret_el(backend, examples, n, model)),
        "greedy_extraction": _mean([float(x) for x in extraction(backend, examples, model)]),
        f"sampled_extraction_at{samples}": _mean(
            [float(x) for x in extraction(backend, examples, model, samples=samples, seed=seed)]
        )
        if samples
        else None,
    }


def memorization_report(
    backend,
    model: nn.Module | None = None,
    *,
    forget: Sequence[ForgetSample],
    other: Sequence[ForgetSample] = (),
    unseen: Sequence[ForgetSample] = (),
    heldout_texts: Sequence[str] = (),
    functions: Sequence[tuple[str, str]] = (),
    n: int = 10,
    samples: int = 8,
    seed: int = 0,
) -> dict:
    """All memorisation numbers of ``model`` (default: the backend's): forget set, other secrets
    (collateral), unseen secrets (the 'never trained on' level), held-out perplexity, completion."""
    report = {
        "forget": secret_scores(
            backend, secret_examples(backend, forget), model, n=n, samples=samples, seed=seed
        ),
        "other_secrets": secret_scores(
            backend, secret_examples(backend, other), model, n=n, samples=samples, seed=seed
        ),
        "unseen_secrets": secret_scores(
            backend, secret_examples(backend, unseen), model, n=n, samples=samples, seed=seed
        ),
    }
    if heldout_texts:
        report["heldout_perplexity"] = round(perplexity(backend, heldout_texts, model), 4)
    if functions:
        report["completion_accuracy"] = round(completion_accuracy(backend, functions, model), 4)
    return report
