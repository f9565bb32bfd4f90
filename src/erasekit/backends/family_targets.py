"""Named parameter targets of SDXL, SD3/SD3.5 and FLUX, and what "cross-attention K/V" means in each.

A target name means the same *role* in every family, so a method's default target (UCE's closed-form
text layers, ESD-x's ``cross_attn``, SPM's ``unet_transformer``, few-shot's ``text_mlp``) resolves to
that role's layers here without the method knowing the architecture.

**What "cross-attention K/V" is, per family** (read in diffusers 0.42.1:
``models/unets/unet_2d_condition.py``, ``models/transformers/transformer_sd3.py``,
``models/transformers/transformer_flux.py``, ``models/attention.py`` ``JointTransformerBlock``; and
in the UCE reference ``rohitgandikota/unified-concept-editing`` ``trainscripts/uce_flux_edit.py``):

* **SDXL** has real cross-attention: every ``attn2`` of the UNet reads the 2048-dim context (CLIP-L ⊕
  CLIP-G penultimate states) through ``to_k``/``to_v``. The prompt also enters through the pooled
  CLIP-G ``text_embeds``, concatenated with the time-id embedding and read by
  ``add_embedding.linear_1``: the first 1280 (tiny: 32) input columns of that layer read text.
  ``pooled_text`` names that layer; UCE edits only those columns (see :mod:`erasekit.backends.sdxl`).
* **SD3 / SD3.5 / FLUX** have no cross-attention: *joint* attention concatenates text tokens and image
  tokens and attends over both (MMDiT, Esser et al. 2024, arXiv 2403.03206, Fig. 2). In each
  dual-stream block the text stream has its own projections ``attn.add_q_proj`` / ``add_k_proj`` /
  ``add_v_proj`` (and ``to_add_out``); image queries read text through ``add_k_proj`` / ``add_v_proj``,
  so those are the analogue of cross-attention K/V (``cross_attn_kv``) and the four context-stream
  projections that of the whole cross-attention (``cross_attn``, ESD-x). EraseAnything (Gao et al.,
  ICML 2025) fine-tunes these ``add_*`` projections of FLUX's dual-stream blocks. FLUX's
  single-stream blocks share ``to_q/k/v`` between text and image tokens, so no parameter there is
  text-only and none belongs to these targets.
* **The SD3.5 trap:** SD3.5's ``transformer_blocks.N.attn2`` (``use_dual_attention``, built with
  ``cross_attention_dim=None``) is a *second image self-attention*, not cross-attention: a regex
  ``attn2`` = cross-attention is wrong there. No target here matches ``attn2`` as cross-attention; it
  belongs to ``self_attn``.
* **Closed form (UCE):** ``add_k_proj`` inputs are the text stream after the block's AdaLN, which
  depends on the timestep, so no timestep-free input exists to solve against. The linear maps whose
  inputs are text alone are ``context_embedder`` (the T5 stream; SD3: CLIP-L ⊕ CLIP-G padded to the
  T5 width, then T5) and ``time_text_embed.text_embedder.linear_1`` (the pooled CLIP vector), which is
  what the UCE reference edits for FLUX (``uce_flux_edit.py``). ``text_projections`` names both. Both
  carry a bias; UCE edits W against targets W_old a, so the bias is not counted twice (the reference
  solves against ``module(c)``, bias included, and doubles it: the wave-2 notes measured a relative
  error of 0.75 on a preserved concept as written vs 0.007 without the bias).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from erasekit.backends.base import split_targets
from erasekit.errors import ErasekitError

# A rule sees the qualified name and the layer count of each text encoder component.
Rule = Callable[[str, dict[str, int]], bool]

_CLIP_LAYER = r"^(text_encoder(?:_\d)?)\.(?:text_model\.)?encoder\.layers\.(\d+)\."
_T5_LAYER = r"^(text_encoder(?:_\d)?)\.encoder\.block\.(\d+)\."


def _regex(pattern: str) -> Rule:
    compiled = re.compile(pattern)
    return lambda name, _layers: bool(compiled.search(name))


def _any(*rules: Rule) -> Rule:
    return lambda name, layers: any(rule(name, layers) for rule in rules)


def _text_layers(clip_sub: str, t5_sub: str, last_only: bool) -> Rule:
    """Text-encoder layers of CLIP (``clip_sub`` inside a layer) and T5 (``t5_sub`` inside a block)."""
    clip, t5 = re.compile(_CLIP_LAYER + clip_sub), re.compile(_T5_LAYER + t5_sub)

    def rule(name: str, layers: dict[str, int]) -> bool:
        match = clip.search(name) or t5.search(name)
        if not match:
            return False
        return not last_only or int(match.group(2)) == layers.get(match.group(1), -1) - 1

    return rule


_TEXT_TARGETS: dict[str, tuple[str, Rule]] = {
    "text_mlp": (
        "MLP of every layer of every text encoder (CLIP fc1/fc2, T5 DenseReluDense).",
        _text_layers(r"mlp\.fc[12]\.", r"layer\.1\.DenseReluDense\.", last_only=False),
    ),
    "text_attn": (
        "Self-attention of every layer of every text encoder.",
        _text_layers(r"self_attn\.", r"layer\.0\.SelfAttention\.", last_only=False),
    ),
    "text_attn_last": (
        "Self-attention of each text encoder's last layer.",
        _text_layers(r"self_attn\.", r"layer\.0\.SelfAttention\.", last_only=True),
    ),
    "text_token_embedding": (
        "The token-embedding tables of the text encoders.",
        _regex(r"^text_encoder(?:_\d)?\.(?:.*token_embedding\.|shared\.)"),
    ),
    "text_encoder": ("Every parameter of every text encoder.", _regex(r"^text_encoder(?:_\d)?\.")),
}

_SDXL_NON_CROSS = re.compile(r"\.attn2\.|^unet\.(?:time_embedding|add_embedding)\.")

SDXL_TARGETS: dict[str, tuple[str, Rule]] = {
    "cross_attn_kv": (
        "UNet cross-attention key/value projections (read the 2048-d CLIP-L ⊕ CLIP-G context).",
        _regex(r"^unet\..*\.attn2\.to_[kv]\.weight$"),
    ),
    "pooled_text": (
        "add_embedding.linear_1: reads the pooled CLIP-G text_embeds (first columns) and the time ids.",
        _regex(r"^unet\.add_embedding\.linear_1\.weight$"),
    ),
    "cross_attn": ("All UNet cross-attention parameters (q, k, v, out).", _regex(r"^unet\..*\.attn2\.")),
    "self_attn": ("All UNet self-attention parameters.", _regex(r"^unet\..*\.attn1\.")),
    "unet_non_cross": (
        "UNet without cross-attention and the time/added-conditioning embeddings (ESD-u).",
        lambda name, _l: name.startswith("unet.") and not _SDXL_NON_CROSS.search(name),
    ),
    "unet_transformer": (
        "Every parameter inside the UNet's transformer blocks (SPM).",
        _regex(r"^unet\..*\.attentions\.\d+\."),
    ),
    "unet": ("Every UNet parameter.", _regex(r"^unet\.")),
    **_TEXT_TARGETS,
}

# The context stream of the dual-stream (joint) blocks: add_{q,k,v}_proj, to_add_out, their norms.
_JOINT_TEXT = r"^transformer\.transformer_blocks\.\d+\.attn\.(?:add_[qkv]_proj|to_add_out|norm_added_[qk])\."
_FLOW_NON_CROSS = re.compile(_JOINT_TEXT + r"|^transformer\.(?:time_text_embed|context_embedder)\.")

FLOW_TARGETS: dict[str, tuple[str, Rule]] = {
    "cross_attn_kv": (
        "Joint attention's text-stream key/value projections add_{k,v}_proj (dual-stream blocks).",
        _regex(r"^transformer\.transformer_blocks\.\d+\.attn\.add_[kv]_proj\.weight$"),
    ),
    "cross_attn": (
        "Joint attention's text-stream projections (add_{q,k,v}_proj, to_add_out, norms) (ESD-x).",
        _regex(_JOINT_TEXT),
    ),
    "text_projections": (
        "The linear maps reading text alone: context_embedder and the pooled text_embedder (UCE).",
        _regex(r"^transformer\.(?:context_embedder|time_text_embed\.text_embedder\.linear_1)\.weight$"),
    ),
    "context_embedder": (
        "The T5-stream input projection context_embedder.",
        _regex(r"^transformer\.context_embedder\."),
    ),
    "self_attn": (
        "Image-stream attention of the joint blocks (to_{q,k,v}, to_out) and SD3.5's attn2.",
        _regex(r"^transformer\.transformer_blocks\.\d+\.(?:attn\.(?:to_[qkv]|to_out|norm_[qk])|attn2)\."),
    ),
    "unet_non_cross": (
        "Transformer without the text stream's projections and the time/text embeddings (ESD-u).",
        lambda name, _l: name.startswith("transformer.") and not _FLOW_NON_CROSS.search(name),
    ),
    "unet_transformer": (
        "Every parameter inside the transformer blocks, dual- and single-stream (SPM).",
        _regex(r"^transformer\.(?:single_)?transformer_blocks\.\d+\."),
    ),
    "transformer": ("Every transformer parameter.", _regex(r"^transformer\.")),
    **_TEXT_TARGETS,
}
FLOW_TARGETS["denoiser_non_cross"] = FLOW_TARGETS["unet_non_cross"]

FAMILY_TARGETS = {"sdxl": SDXL_TARGETS, "sd3": FLOW_TARGETS, "flux": FLOW_TARGETS}


def describe_family_targets(family: str) -> dict[str, str]:
    """Target name -> one-line description for ``family``."""
    return {name: desc for name, (desc, _rule) in FAMILY_TARGETS[family].items()}


def resolve_family_parameters(
    named_params: dict[str, nn.Parameter],
    target: str | Iterable[str],
    table: dict[str, tuple[str, Rule]],
    text_layers: dict[str, int],
) -> dict[str, nn.Parameter]:
    """Parameters selected by one or several targets of ``table`` (union), in model order."""
    rules = []
    for name in split_targets(target):
        if name not in table:
            raise ErasekitError(
                f"Unknown parameter target {name!r} for this model; choose from: {', '.join(table)}."
            )
        rules.append(table[name][1])
    selected = {n: p for n, p in named_params.items() if any(rule(n, text_layers) for rule in rules)}
    if not selected:
        raise ErasekitError(f"Target {target!r} matches no parameter of this model; pick another target.")
    return selected
