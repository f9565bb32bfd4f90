"""UCE parity: erasekit's edit against the released paper script's update, re-derived from its equations.

The reference here is ``train-scripts/train_erase.py`` of rohitgandikota/unified-concept-editing (the
script released with the paper; commit bd5fb51), written again from its documented behaviour, not
copied: for every cross-attention K/V projection W (eq. 7 with the script's λ term)

    W* = (λ W + η_e Σ_i (W a_i) c_iᵀ + η_p Σ_j (W p_j) p_jᵀ) (λ I + η_e Σ_i c_i c_iᵀ + η_p Σ_j p_j p_jᵀ)⁻¹

where, per (concept, anchor) pair, the c_i are the concept prompt's token embeddings from its last
word token on and the a_i the anchor prompt's from its last word token on (the empty anchor's "last
word" is its start token), both cut to L − max(f_c, f_a) rows (f = index of the last word token, the
attention-mask length − 2), and the p_j are every position of every preserved prompt, the empty prompt
always among them. Here the products are summed literally and the inverse is explicit (float64),
unlike erasekit's factorised solve, and token positions come from the tokenizer's attention mask, not
from erasekit's end-token search.

Printed per case: the parity of erasekit's ``paper`` preset with this update (relative error of W*
over all K/V matrices), how far erasekit's default alignment (``tokens=all``) is from it (ΔW), and how
much each moves the unconditional prompt's keys/values (drift, all positions of "").

    python benchmarks/parity/uce.py --model shapes        # the shipped ShapesWorld model
    python benchmarks/parity/uce.py --model tiny          # the test pipeline (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from erasekit.artifacts import environment_versions
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.files import atomic_write_text
from erasekit.methods.uce import UCE, UCEConfig
from erasekit.zoo import load_model

# (concepts, anchor or None, preserve): one word / two words, with and without an anchor and a preserve set
CASES = [
    (["star"], None, []),
    (["red star"], None, []),
    (["star"], "circle", []),
    (["red star"], "blue circle", ["square"]),
    (["star", "heart"], None, ["circle"]),
]


def last_word_index(tokenizer, text: str) -> int:
    """attention_mask.sum() − 2: the last word token (0, the start token, for the empty prompt)."""
    mask = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return int(sum(mask["attention_mask"])) - 2


@torch.no_grad()
def reference_update(backend, concepts, anchor, preserve, lamb=0.5, erase_scale=1.0, preserve_scale=1.0):
    """W* of every K/V matrix, as train_erase.py's edit_model computes it (technique 'replace')."""
    tokenizer = backend.tokenizer
    guides = [" " if not anchor else anchor] * len(concepts)  # the script turns the empty guide into " "
    retain = [""] + list(preserve)  # retain_texts = [''] + preserve_concepts
    weights = backend.parameters_for("cross_attn_kv")
    pairs = []
    for old, new in zip(concepts, guides):
        emb_old, emb_new = backend.encode_prompts([old, new]).double()
        f_old, f_new = last_word_index(tokenizer, old), last_word_index(tokenizer, new)
        farthest = max(f_old, f_new)
        length = emb_old.shape[0]
        pairs.append(
            (
                emb_old[f_old : length - max(0, farthest - f_old)],
                emb_new[f_new : length - max(0, farthest - f_new)],
            )
        )
    kept = [backend.encode_prompts([text])[0].double() for text in retain]
    result = {}
    for name, weight in weights.items():
        w = weight.detach().double().cpu()
        mat1 = lamb * w.clone()
        mat2 = lamb * torch.eye(w.shape[1], dtype=torch.float64)
        for context, guide in pairs:
            values = guide @ w.T  # the layer applied to the guide's rows
            for c, v in zip(context, values):  # Σ v cᵀ and Σ c cᵀ, one token at a time
                mat1 += erase_scale * torch.outer(v, c)
                mat2 += erase_scale * torch.outer(c, c)
        for context in kept:
            values = context @ w.T
            for c, v in zip(context, values):
                mat1 += preserve_scale * torch.outer(v, c)
                mat2 += preserve_scale * torch.outer(c, c)
        result[name] = mat1 @ torch.inverse(mat2)
    return result


def erasekit_update(backend, spec, overrides):
    config = build_config(UCEConfig, None, overrides)
    artifact = UCE().erase(
        backend, spec, config
    )  # erase directly: no spec completion from the model's source
    weights = backend.parameters_for("cross_attn_kv")
    return {
        name: weights[name].detach().double().cpu() + artifact.tensors[f"weights/{name}"].double().cpu()
        for name in weights
    }


def relative(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over all matrices together."""
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in b)
    den = sum(float(b[k].norm() ** 2) for k in b)
    return (num / den) ** 0.5


@torch.no_grad()
def unconditional_drift(backend, edited: dict) -> float:
    """‖W* E_∅ − W E_∅‖ / ‖W E_∅‖ over every position of "" and every K/V matrix."""
    empty = backend.encode_prompts([""])[0].double()
    weights = backend.parameters_for("cross_attn_kv")
    old = {k: empty @ w.detach().double().cpu().T for k, w in weights.items()}
    new = {k: empty @ edited[k].T for k in weights}
    return relative(new, old)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backend = load_model(args.model)
    old = {k: w.detach().double().cpu() for k, w in backend.parameters_for("cross_attn_kv").items()}
    rows = []
    start = time.perf_counter()
    for concepts, anchor, preserve in CASES:
        spec = ConceptSpec.from_lists(concepts, [anchor] if anchor else [], preserve)
        reference = reference_update(backend, concepts, anchor, preserve)
        paper = erasekit_update(backend, spec, ["preset=paper"])
        default = erasekit_update(backend, spec, [])
        all_with_empty = erasekit_update(backend, spec, ["preserve_unconditional=true"])
        delta = {k: reference[k] - old[k] for k in old}
        rows.append(
            {
                "concepts": concepts,
                "anchor": anchor or "",
                "preserve": preserve,
                "paper_preset_vs_reference_W": relative(paper, reference),
                "paper_preset_vs_reference_dW": relative({k: paper[k] - old[k] for k in old}, delta),
                "default_vs_reference_dW": relative({k: default[k] - old[k] for k in old}, delta),
                "all_tokens_with_empty_preserved_vs_reference_dW": relative(
                    {k: all_with_empty[k] - old[k] for k in old}, delta
                ),
                "uncond_drift_reference": unconditional_drift(backend, reference),
                "uncond_drift_paper_preset": unconditional_drift(backend, paper),
                "uncond_drift_default": unconditional_drift(backend, default),
            }
        )
    seconds = time.perf_counter() - start
    header = f"{'case':<40} {'paper vs ref W':>14} {'ΔW rel':>9} {'default ΔW':>11} {'all+∅ ΔW':>10} {'drift ref':>10} {'paper':>8} {'default':>8}"
    print(f"UCE parity on {args.model} ({len(old)} K/V matrices); ΔW errors relative to the reference's ΔW")
    print(header)
    for r in rows:
        case = f"{'+'.join(r['concepts'])} -> {r['anchor'] or '∅'}" + (
            f" keep {','.join(r['preserve'])}" if r["preserve"] else ""
        )
        print(
            f"{case:<40} {r['paper_preset_vs_reference_W']:>14.2e} {r['paper_preset_vs_reference_dW']:>9.2e} "
            f"{r['default_vs_reference_dW']:>11.1%} {r['all_tokens_with_empty_preserved_vs_reference_dW']:>10.1%} "
            f"{r['uncond_drift_reference']:>10.2%} {r['uncond_drift_paper_preset']:>8.2%} {r['uncond_drift_default']:>8.2%}"
        )
    result = {
        "benchmark": "parity_uce",
        "model": args.model,
        "reference": "rohitgandikota/unified-concept-editing train-scripts/train_erase.py (bd5fb51), re-derived",
        "rows": rows,
        "seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "versions": environment_versions(),
        "platform": platform.platform(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
