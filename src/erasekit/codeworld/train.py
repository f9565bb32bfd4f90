"""Train the shipped CodeWorld code LM from scratch on a CPU (measured: 36 min, one thread, loaded 2-core box).

Recipe (why each part is there):

1. Draw the CodeWorld corpus from a seed (:mod:`erasekit.codeworld.corpus`): ~3,000 secret-free files
   plus files with planted secrets duplicated 1×/4×/16× (duplication drives verbatim memorisation).
2. Train a byte-level BPE tokenizer (2,048 tokens) on the training files in-process with
   ``tokenizers``: a code LM needs its own vocabulary, and a small one keeps the embedding table small.
3. Train a 4-layer ``LlamaForCausalLM`` (d = 192, 2.2 M parameters) with AdamW (2e-3, warm-up, cosine
   decay), batch 16, one file per sequence (≤ 192 tokens, BOS first). Every ``eval_every`` steps the
   log records the training loss, held-out loss and the teacher-forced secret-token accuracy of the
   16× secrets (= greedy MA, in file context).
4. Export a Hugging Face folder (``config.json``, ``model.safetensors`` in float16, tokenizer files)
   and ``erasekit_code_lm.json`` with the recipe, seed, wall time, machine, curves. The shipped model (2,164,416
   parameters with tied embeddings) took 35.9 min for 1,400 steps (1.5 M tokens) on a loaded 2-core CPU.

``python -m erasekit.codeworld.train --help`` lists the options. ``--measure`` afterwards adds the
memorisation numbers of :mod:`erasekit.evaluation.memorization` to the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from erasekit.codeworld.corpus import Corpus, CorpusConfig, build_corpus

MANIFEST_NAME = "erasekit_code_lm.json"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass
class CodeLMTrainConfig:
    """Options of :func:`train`. Each field's docstring is its ``--help`` text."""

    out_dir: str = "runs/code-lm"
    """Folder the Hugging Face model is exported to."""
    seed: int = 0
    """Seed of the corpus, initialisation and batching."""
    threads: int = 1
    """torch.set_num_threads (1 on a shared CPU)."""
    vocab_size: int = 2048
    """Byte-level BPE vocabulary size."""
    hidden_size: int = 192
    """Model width."""
    layers: int = 4
    """Decoder layers."""
    heads: int = 6
    """Attention heads."""
    intermediate_size: int = 512
    """MLP width."""
    max_len: int = 192
    """Tokens per training sequence (files are truncated)."""
    steps: int = 1400
    """Optimiser steps (the shipped code-lm: 1,400, 36 min on a loaded 2-core CPU; 16x secrets MA > 0.95 from step 600)."""
    batch: int = 16
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    eval_every: int = 200
    """Steps between curve points."""
    background_files: int = 3000
    """Secret-free training files in the corpus."""


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained in-process; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_model(config: CodeLMTrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(256, config.max_len + 64),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(llama)


def encode_file(tokenizer, text: str, max_len: int) -> list[int]:
    ids = (
        [tokenizer.bos_token_id]
        + tokenizer(text, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
    )
    return ids[:max_len]


def _batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def _secret_accuracy(model, tokenizer, planted, max_len: int) -> float:
    """Teacher-forced argmax accuracy on the secret's in-file tokens (= greedy MA)."""
    hits, total = 0, 0
    for item in planted:
        enc = tokenizer(item.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [tokenizer.bos_token_id] + enc["input_ids"]
        offsets = [(0, 0)] + enc["offset_mapping"]
        secret = [i for i, (a, b) in enumerate(offsets) if i > 0 and a < item.end and b > item.start]
        ids = ids[:max_len]
        secret = [i for i in secret if i < len(ids)]
        pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
        hits += sum(int(pred[i - 1] == ids[i]) for i in secret)
        total += len(secret)
    return hits / max(total, 1)


def _atomic_write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def train(config: CodeLMTrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    started = time.time()
    corpus_config = CorpusConfig(seed=config.seed, background_files=config.background_files)
    corpus: Corpus = build_corpus(corpus_config)
    tokenizer = train_tokenizer(corpus.train_texts, config.vocab_size)
    seqs = [encode_file(tokenizer, t, config.max_len) for t in corpus.train_texts]
    heldout = [encode_file(tokenizer, t, config.max_len) for t in corpus.heldout_texts[:64]]
    model = build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    curve: list[dict] = []
    order: list[int] = []
    tokens_seen = 0
    sixteen = [p for p in corpus.planted if p.duplicates == 16]
    for step in range(config.steps):
        if len(order) < config.batch:
            order = list(range(len(seqs)))
            rng.shuffle(order)
        batch_idx, order = order[: config.batch], order[config.batch :]
        ids, mask = _batch([seqs[i] for i in batch_idx], tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        model.train()
        loss = _lm_loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += int(mask.sum())
        if step % config.eval_every == 0 or step == config.steps - 1:
            model.eval()
            with torch.no_grad():
                held = [
                    float(_lm_loss(model, *_batch(heldout[i : i + 16], tokenizer.pad_token_id)))
                    for i in range(0, len(heldout), 16)
                ]
            point = {
                "step": step,
                "minutes": round((time.time() - started) / 60, 2),
                "train_loss": round(float(loss.detach()), 4),
                "heldout_loss": round(sum(held) / len(held), 4),
                "secret16_ma": round(_secret_accuracy(model, tokenizer, sixteen, config.max_len), 4),
                "tokens_seen": tokens_seen,
            }
            curve.append(point)
            print(json.dumps(point), flush=True)

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.half().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    manifest = {
        "kind": "erasekit-code-lm",
        "description": "CodeWorld code LM trained from scratch on a synthetic corpus with planted secrets.",
        "recipe": dataclasses.asdict(config),
        "corpus": {
            "generator": "erasekit.codeworld",
            "seed": config.seed,
            "background_files": config.background_files,
        },
        "parameters": n_params,
        "train_files": len(seqs),
        "tokens_seen": tokens_seen,
        "wall_minutes": round((time.time() - started) / 60, 2),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": config.threads,
        },
        "command": " ".join(sys.argv),
        "curve": curve,
        "storage_dtype": "float16",
    }
    _atomic_write_json(out / MANIFEST_NAME, manifest)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(CodeLMTrainConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default) if f.default is not None else str,
            default=f.default,
        )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="Only add memorisation numbers to an existing export in --out-dir.",
    )
    args = vars(parser.parse_args(argv))
    measure = args.pop("measure")
    config = CodeLMTrainConfig(**args)
    if measure:
        from erasekit.codeworld.measure import measure_export

        measure_export(Path(config.out_dir), seed=config.seed)
        return
    print(train(config))


if __name__ == "__main__":
    main()
