"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761).

A closed-form edit of every cross-attention key and value projection W (target ``cross_attn_kv``).
Eq. 7 of the paper, with the erase/preserve scales and the λ regulariser of the released code::

    W* = (η_e Σ_{c_i∈E} v_i* c_iᵀ + η_p Σ_{c_j∈P} W_old c_j c_jᵀ + λ W_old)
         (η_e Σ_{c_i∈E} c_i c_iᵀ   + η_p Σ_{c_j∈P} c_j c_jᵀ       + λ I)⁻¹

with v_i* = W_old a_i, a_i the embedding of c_i's anchor (the guide concept; "" when none). The λ
terms keep W* = W_old in every direction the erase and preserve sets do not constrain and make the
inverse exist. Because every target is W_old times an embedding, eq. 7 factorises as

    W* = W_old (I + K),   K = η_e (A − C_E)ᵀ C_E M⁻¹,   M = η_e C_Eᵀ C_E + η_p C_Pᵀ C_P + λ I

(rows of C_E, A, C_P: erase, anchor and preserve embeddings). K depends only on the text embeddings,
so one d×d solve serves every K/V projection of the UNet, and K has rank ≤ n_e (the number of erase
vectors), so the artifact's ΔW = W_old K is computed as (W_old (A − C_E)ᵀ)(η_e C_E M⁻¹).

Which token embeddings: the UNet reads the whole padded context, and a causal text encoder spreads a
concept over its own token, the end-of-text token and the padding after it. The reference code has
aligned the concept prompt with its anchor prompt in three ways over time, and ``tokens`` offers each:

* ``"all"`` (the default; tuned on ShapesWorld) maps every position of the padded concept prompt onto
  the anchor prompt's embedding at the same position, as the June-2023 development script
  ``train-scripts/train-erasing-closed.py`` does.
* ``"from_last"`` is the alignment of the script released with the paper
  (``train-scripts/train_erase.py``, ``edit_model``): both prompts are read from their last word
  token on (for the empty anchor that is the start token), position by position, and both slices are
  cut to the same length L − max(f_c, f_a) (f = index of the last word token), so the concept's last
  word maps onto the anchor's last word, its end token onto the anchor's end token, and so on; when
  the prompts differ in length, the longer one's tail is dropped. Preserved prompts use every
  position. That script also always preserves the empty prompt (``retain_texts = [''] + preserve``):
  ``preserve_unconditional`` (or ``--preserve ""``) does the same here, and the ``paper`` preset
  turns both on. The start token is *not* added to the erase rows in this mode (the script does not);
  the preserved empty prompt pins it.
* ``"prompt"`` keeps to the concept's own tokens and its end token; ``"last"`` uses only the concept's
  last word token mapped onto the anchor's (the later reference script ``trainscripts/uce_sd_erase.py``;
  for the empty anchor that is the start token).

``"all"``, ``"prompt"`` and ``"last"`` also keep the start token: it is the same vector in every
prompt, the unconditional one included, so its row (mapped onto itself) pins its keys and values;
left out, the edit moves them and with them every prompt's output (``uce_sd_erase.py`` leaves it out).
To keep the anchor's own images too, list the anchor under the preserve concepts. How far the modes
differ, and how much each moves the unconditional prompt's keys and values, is measured by
``benchmarks/parity/uce.py`` (numbers in ``benchmarks/parity/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec
from erasekit.errors import ErasekitError
from erasekit.methods.base import require

TARGET = "cross_attn_kv"


@dataclass(frozen=True)
class UCEConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, or another name listed by `erasekit methods` (paper: the paper's / reference code's values; shapesworld: tuned on the shipped ShapesWorld model)."""
    erase_scale: float = 1.0
    """η_e: weight of the erase terms in eq. 7 (> 0)."""
    preserve_scale: float = 1.0
    """η_p: weight of the preserve terms in eq. 7 (≥ 0)."""
    lamb: float = 0.5
    """λ: regulariser pulling W* towards W_old in unconstrained directions (> 0; reference default 0.5)."""
    tokens: Literal["all", "from_last", "prompt", "last"] = "all"
    """Token positions edited: all (every position of the padded prompt, mapped position-wise onto the anchor prompt), from_last (both prompts from their last word token on, cut to one length: the script released with the paper), prompt (the concept's tokens and end token), last (the concept's last word token onto the anchor's); all but from_last also keep the start token in place."""
    use_templates: bool = False
    """Also edit each concept inside every prompt template of the concept spec ("a photo of a {}")."""
    preserve_unconditional: bool = False
    """Also preserve the unconditional prompt "" at every position (as --preserve ""; the script released with the paper always does)."""

    # Named presets (-o preset=NAME), applied under explicit settings. paper: the script released with
    # the paper (train-scripts/train_erase.py: lamb 0.5, erase_scale 1, no prompt expansion, the empty
    # prompt always preserved; its default preserve_scale is max(0.1, 1 / (1 + number of preserve
    # concepts)), i.e. 1 without preserve concepts: set -o preserve_scale to match it with some).
    # shapesworld: the values tuned on the shipped model (= the defaults).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "erase_scale": 1.0,
            "preserve_scale": 1.0,
            "lamb": 0.5,
            "tokens": "from_last",
            "use_templates": False,
            "preserve_unconditional": True,
        },
        "shapesworld": {
            "erase_scale": 1.0,
            "preserve_scale": 1.0,
            "lamb": 0.5,
            "tokens": "all",
            "use_templates": False,
            "preserve_unconditional": False,
        },
    }

    def __post_init__(self) -> None:
        require(
            self.erase_scale > 0,
            f"erase_scale must be > 0, got {self.erase_scale}; set e.g. -o erase_scale=1.",
        )
        require(
            self.preserve_scale >= 0,
            f"preserve_scale must be >= 0, got {self.preserve_scale}; set e.g. -o preserve_scale=1.",
        )
        require(
            self.lamb > 0,
            f"lamb (λ) must be > 0 so eq. 7 is well-posed, got {self.lamb}; set e.g. -o lamb=0.5.",
        )


# ---- the math (torch only) --------------------------------------------------------------------------
def uce_edit_factors(
    erase: torch.Tensor, anchor: torch.Tensor, preserve: torch.Tensor, config: UCEConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with K = U V, so that eq. 7 reads W* = W_old (I + U V) for targets v_i* = W_old a_i.

    U = (A − C_E)ᵀ and V = η_e C_E M⁻¹ have rank ≤ n_e, so ΔW = (W_old U) V costs 2·out·d·n_e flops per
    projection instead of out·d² for W_old K (a 30× saving on SD-1.4's 768-dim context).

    Args:
        erase: C_E, [n_e, d] embeddings c_i to move.
        anchor: A, [n_e, d] embeddings a_i whose projections the c_i must take (v_i* = W_old a_i).
        preserve: C_P, [n_p, d] embeddings c_j whose projections must stay (n_p may be 0).
        config: scales η_e, η_p and λ.

    Returns:
        U [d, n_e] and V [n_e, d], float64.
    """
    c_e, a, c_p = (x.to(torch.float64) for x in (erase, anchor, preserve))
    d = c_e.shape[1]
    m = (
        config.erase_scale * c_e.T @ c_e
        + config.preserve_scale * c_p.T @ c_p
        + config.lamb * torch.eye(d, dtype=torch.float64)
    )  # M: the matrix inverted in eq. 7 (symmetric positive definite because λ > 0)
    # C_E M⁻¹ = (M⁻¹ C_Eᵀ)ᵀ since M is symmetric; a solve is more accurate than an explicit inverse.
    c_e_m_inv = torch.linalg.solve(m, c_e.T).T
    return (a - c_e).T, config.erase_scale * c_e_m_inv


def uce_right_factor(
    erase: torch.Tensor, anchor: torch.Tensor, preserve: torch.Tensor, config: UCEConfig
) -> torch.Tensor:
    """K = η_e (A − C_E)ᵀ C_E M⁻¹ with W* = W_old (I + K) — eq. 7 in closed form, [d, d] float64."""
    u, v = uce_edit_factors(erase, anchor, preserve, config)
    return u @ v


def end_position(ids: torch.Tensor, end_token: int) -> int:
    """Index of the end-of-text token in one prompt's padded ids [L] (the last index if truncated)."""
    is_end = (ids[1:] == end_token).nonzero()
    return int(is_end[0]) + 1 if len(is_end) else ids.shape[0] - 1


def token_positions(ids: torch.Tensor, end_token: int, mode: str) -> list[int]:
    """Positions of one prompt's padded token ids ``ids`` [L] that ``mode`` edits (see module doc).

    Position 0, the start token, always comes first: it is the same in every prompt and is kept.
    ("from_last" pairs two prompts: see :func:`from_last_positions`.)
    """
    length = ids.shape[0]
    end = end_position(ids, end_token)
    if mode == "last":
        return [0, max(end - 1, 0)]
    if mode == "prompt":
        return list(range(0, end + 1))
    return list(range(0, length))


def from_last_positions(
    concept_ids: torch.Tensor, anchor_ids: torch.Tensor, end_token: int
) -> tuple[list[int], list[int]]:
    """Aligned positions of a concept prompt and its anchor prompt, as the released paper script does.

    With f_c, f_a the indices of each prompt's last word token (the end token's index − 1; 0, the
    start token, for the empty prompt) and f = max(f_c, f_a), the concept's positions
    f_c … L − 1 − (f − f_c) pair one to one with the anchor's f_a … L − 1 − (f − f_a).
    """
    length = concept_ids.shape[0]
    f_c = end_position(concept_ids, end_token) - 1
    f_a = end_position(anchor_ids, end_token) - 1
    farthest = max(f_c, f_a)
    return (
        list(range(f_c, length - (farthest - f_c))),
        list(range(f_a, length - (farthest - f_a))),
    )


# ---- glue to the backend --------------------------------------------------------------------------
def _pairs(concepts: ConceptSpec, use_templates: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(concept prompt, anchor prompt) pairs to erase and prompts to preserve."""

    def contexts(text: str) -> list[str]:
        return concepts.prompts(text) if use_templates else [text]

    erase_pairs = []
    for target in concepts.targets:
        if target.anchor is None:  # no anchor: the unconditional prompt, as in the reference
            erase_pairs += [(p, "") for p in contexts(target.text)]
        else:
            erase_pairs += list(zip(contexts(target.text), contexts(target.anchor)))
    # "" stands for the unconditional prompt and stays "" (ConceptSpec.prompts does not template it)
    preserve_prompts = [p for text in concepts.preserve for p in contexts(text)]
    return erase_pairs, preserve_prompts


@torch.no_grad()
def collect_embeddings(
    backend: Any, concepts: ConceptSpec, config: UCEConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C_E, A and C_P (rows: token embeddings) of the first stream the edited layers read (SD: the
    cross-attention context; see :func:`collect_streams`)."""
    return collect_streams(backend, concepts, config)[0][1]


@torch.no_grad()
def collect_streams(backend: Any, concepts: ConceptSpec, config: UCEConfig) -> list[tuple[Any, tuple]]:
    """Per stream of inputs the edited layers read (``backend.text_linear_inputs``): the stream and its
    (C_E, A, C_P). SD has one (the context); SDXL, SD3 and FLUX also a pooled text vector."""
    erase_pairs, preserve_prompts = _pairs(concepts, config.use_templates)
    if config.preserve_unconditional and "" not in preserve_prompts:
        preserve_prompts.append("")
    sources = [s for s, _ in erase_pairs]
    anchors = [a for _, a in erase_pairs]
    prompts = sources + anchors + preserve_prompts
    streams = backend.text_linear_inputs(prompts, backend.closed_form_target)
    out = []
    for stream in streams:
        if stream.token_ids is None:  # a pooled vector (one position) or a mixed-encoder stream
            if stream.inputs.shape[1] > 1 and config.tokens != "all":
                raise ErasekitError(
                    f"tokens={config.tokens} needs CLIP token positions, but this model's {stream.name} stream has none; use -o tokens=all."
                )
            rows = stream.inputs.float().cpu()
            n = len(sources)
            out.append(
                (stream, (rows[:n].flatten(0, 1), rows[n : 2 * n].flatten(0, 1), rows[2 * n :].flatten(0, 1)))
            )
        else:
            ids, embeddings = stream.token_ids.cpu(), stream.inputs.float().cpu()
            out.append(
                (stream, _token_rows(backend, ids, embeddings, len(sources), preserve_prompts, config))
            )
    return out


def _token_rows(backend, ids, embeddings, n, preserve_prompts, config):
    """(C_E, A, C_P) of one CLIP-token stream: ``n`` erase prompts, their anchors, then the preserved."""
    end_token = int(backend.token_ids([""])[0, 1])  # "" tokenises to [start, end, padding ...]
    erase_rows, anchor_rows, preserve_rows = [], [], []
    for i in range(n):
        if config.tokens == "from_last":
            concept_positions, anchor_positions = from_last_positions(ids[i], ids[n + i], end_token)
            erase_rows.append(embeddings[i, concept_positions])
            anchor_rows.append(embeddings[n + i, anchor_positions])
        elif config.tokens == "last":
            # the concept's last word token onto the anchor's last word token
            erase_rows.append(embeddings[i, token_positions(ids[i], end_token, "last")])
            anchor_rows.append(embeddings[n + i, token_positions(ids[n + i], end_token, "last")])
        else:
            # position-wise: what the UNet would read at each position had the anchor been prompted
            positions = token_positions(ids[i], end_token, config.tokens)
            erase_rows.append(embeddings[i, positions])
            anchor_rows.append(embeddings[n + i, positions])
    for j in range(len(preserve_prompts)):
        row = 2 * n + j
        # every position for the paper script's alignment and for the unconditional prompt (whose
        # padding positions the UNet reads in every CFG step)
        mode = "all" if config.tokens == "from_last" or preserve_prompts[j] == "" else config.tokens
        preserve_rows.append(embeddings[row, token_positions(ids[row], end_token, mode)])
    dim = embeddings.shape[-1]
    preserve = torch.cat(preserve_rows) if preserve_rows else torch.zeros(0, dim)
    return torch.cat(erase_rows), torch.cat(anchor_rows), preserve


class UCE:
    """Unified Concept Editing: closed-form erasure in the cross-attention K/V projections."""

    name: ClassVar[str] = "uce"
    paper: ClassVar[str] = (
        "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024 (arXiv 2308.14761)"
    )
    config_cls: ClassVar[type] = UCEConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = ()  # closed form: the defaults already take milliseconds
    # ConceptSpec.from_lists arguments for the conformance suite: UCE uses anchors and a preserve set.
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"], "anchors": ["square"], "preserve": ["circle"]}
    accepts_unconditional_preserve: ClassVar[bool] = True  # --preserve "" = the unconditional prompt
    takes_anchor: ClassVar[bool] = True  # a concept without an anchor gets the data source's default

    def erase(
        self,
        backend: Any,
        concepts: ConceptSpec,
        config: UCEConfig,
        *,
        generator: torch.Generator | None = None,  # closed form: nothing is drawn (kept for the protocol)
    ) -> Artifact:
        artifact = Artifact(self.name)
        params = backend.named_parameters()
        streams = collect_streams(backend, concepts, config)
        for stream, (erase, anchor, preserve) in streams:
            u, v = uce_edit_factors(erase, anchor, preserve, config)  # W* = W_old (I + U V)
            for name, columns in stream.weights.items():
                weight = params[name]
                start, stop = columns or (0, weight.shape[1])  # the columns that read this stream
                if stop - start != u.shape[0]:
                    raise ErasekitError(
                        f"{name} reads {stop - start}-dim context but the text encoder gives {u.shape[0]}; UCE needs matching sizes."
                    )
                # Only W changes: targets are W_old a (a biased layer keeps its bias b, counted once).
                w_old = weight.detach()[:, start:stop].to("cpu", torch.float64)
                delta = (w_old @ u) @ v  # ΔW = W* − W_old
                if columns is not None:
                    delta = torch.nn.functional.pad(delta, (start, weight.shape[1] - stop))
                artifact.add_weight(name, delta.to(weight.dtype), mode="delta")
        _first, (erase, _anchor, preserve) = streams[0]
        artifact.manifest["edit"] = {
            "target": backend.closed_form_target,
            "erase_vectors": int(erase.shape[0]),
            "preserve_vectors": int(preserve.shape[0]),
        }
        if len(streams) > 1:
            artifact.manifest["edit"]["streams"] = {
                s.name: {
                    "erase_vectors": int(e.shape[0]),
                    "preserve_vectors": int(p.shape[0]),
                    "weights": len(s.weights),
                }
                for s, (e, _a, p) in streams
            }
        return artifact
