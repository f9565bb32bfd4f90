"""EAR: Erasing Concepts from Unified Autoregressive Models (Fan et al. 2025, arXiv 2506.20151).

ESD moved to next-token image generation. For an (unsafe, safe) prompt pair (u, s) and a token history
y = (y_1 .. y_T), the student's last hidden state before the image head at every image position i is
regressed onto the frozen teacher's negatively guided state (the paper's eq. 4 principle
P_θ(x) ∝ P_θ*(x) / P_θ*(c|x)^η, realised on hidden states as in the public code)::

    h_θ(u ⊕ y_<i)  →  h*(s ⊕ y_<i) − η · (h*(u ⊕ y_<i) − h*(s ⊕ y_<i))          (ESD eq. 3 with ∅ := s)

trained with the MSE. Two mechanisms of the paper:

* **Windowed Gradient Accumulation (WGA).** The T image positions are cut into windows of W; each
  window's loss (the mean of its per-token MSEs) is one optimizer step, taken in raster order, and the
  next window is computed with the updated weights (as the paper's loop does).
* **Thresholded Loss Masking (TLM).** A window whose loss is ≤ τ is skipped. The public code uses an
  absolute τ = 0.05 on a sum of W MSEs of Janus-Pro-7B states — a number tied to that model's hidden
  scale and W. We default to a **relative** threshold: skip when loss ≤ τ · ℓ_ref, with ℓ_ref the first
  window's loss of the first iteration (the initial discrepancy); ``tlm="absolute"`` keeps the paper's.
  On ShapesWorld-AR the windows' losses stay at 0.3–0.7 × ℓ_ref, so the default τ = 0.05 masks none;
  τ = 0.5 masks 25–60 of 80 and trades retention between concepts (benchmarks/README.md, TLM sweep).

What we do differently from the public code (immc-lab/ear, see the prototype notes §1.2), on purpose:

1. **The cached causal context.** The public loop feeds one new token with no ``past_key_values``
   after step 0, so teacher and student train on context-free single tokens while inference uses the
   KV cache. We sample the history once and run teacher and student on ``[prompt ⊕ y]`` in one causal
   forward (teacher forcing), which gives exactly the states of the KV-cached loop.
   ``context="none"`` reproduces the public behaviour for the ablation.
2. **One shared history** for all streams (ESD shares x_t), sampled on-policy from the student on u
   with classifier-free guidance. ``history="separate"`` draws u's and s's histories independently
   from the teacher, as the public code does.
3. **The inference prompt layout** (``backend.prompt_rows``: template + BOI), with the CFG
   unconditional rows included; on those rows h*(u) = h*(s), so their target is the teacher's own
   state — a free preservation term for the unconditional branch.
4. **Preservation anchors** (on by default): prompts of the replacement concepts (the pairs' safe
   prompts) and retain prompts (naming no target), each with its own sampled history, pinned to the
   teacher's own states: h_θ(a ⊕ y_a) → h*(a ⊕ y_a). The prototype measured other-shape accuracy
   0.84 → 1.00 with them.

Pairs come from ``pairs=FILE`` or are generated from the spec's templates: each template filled with
the concept (and its synonyms) is u, the same template filled with a replacement is s. Replacements are
the target's anchor if given, else other concepts of the same kind from the model's data source.

Trained: q/k/v/o of the first k decoder layers (paper: layers 0–4 of Janus-Pro-7B's 30;
``target="lm_attn_first_2"`` of the 4-layer ShapesWorld-AR). The artifact holds weight deltas.

ESD-AR (:class:`ESDAR`) is the baseline EAR extends: ∅ is the unconditional row
(h_θ(c) → h*(∅) − η (h*(c) − h*(∅))), one step per iteration over all tokens, no TLM, no anchors.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec, fix_articles
from erasekit.errors import ErasekitError
from erasekit.methods.base import require
from erasekit.methods.training import TrainedParameters
from erasekit.sources import source_of

# Key pairs a pair file may use: ours, and the two spellings of the EAR repository's data files
# (train_church.json: original/modified; train_nudity.json: unsafe_prompt/safe_prompt).
_PAIR_KEYS = (("unsafe", "safe"), ("original_prompt", "modified_prompt"), ("unsafe_prompt", "safe_prompt"))


@dataclass(frozen=True)
class EARConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, paper (the public code's W=48-of-576 share, absolute τ=0.05, lr 1e-4, first 5 layers)."""
    target: str = "lm_attn_first_2"
    """Parameters trained (AR backend target; paper: q/k/v/o of the first 5 of 30 layers)."""
    iterations: int = 20
    """Iterations; each draws a batch of pairs, one token history, and takes one step per window."""
    pairs_per_iteration: int = 8
    """(unsafe, safe) pairs per iteration."""
    lr: float = 3e-4
    """Adam learning rate (paper: 1e-4 on Janus-Pro-7B)."""
    negative_guidance: float = 1.0
    """η: how far the target is pushed past the safe state (paper: 1.0)."""
    window: int = 16
    """W: image tokens per optimizer step (WGA); 0 = all tokens in one step. Paper: 48 of 576 (church)."""
    tlm: Literal["relative", "absolute", "off"] = "relative"
    """Thresholded loss masking: relative (skip if loss ≤ τ·first-window loss), absolute (loss ≤ τ, the paper's), off."""
    tau: float = 0.05
    """τ of TLM (paper: 0.05 absolute)."""
    context: Literal["full", "none"] = "full"
    """full: teacher forcing over the cached causal context (= the KV-cached inference states); none: the public code's single-token training (ablation)."""
    history: Literal["shared", "separate"] = "shared"
    """shared: one history sampled from the student on the unsafe prompt for all streams; separate: independent teacher histories per stream (public code)."""
    sample_guidance: float = 0.0
    """Classifier-free guidance scale for sampling the token history (0 = the model's own default, as at inference)."""
    temperature: float = -1.0
    """Sampling temperature for the token history (-1 = the model's own default, as at inference)."""
    uncond_rows: bool = True
    """Include the CFG unconditional rows (target: the teacher's own state)."""
    anchors_per_iteration: int = 8
    """Anchor prompts per iteration pinned to the teacher's own states (preservation); 0 = none."""
    anchors: Literal["both", "safe", "retain"] = "both"
    """Anchor pool: the pairs' safe prompts (the replacement concepts), the spec's retain prompts, or both."""
    anchor_weight: float = 4.0
    """Weight of the unconditional-row and anchor terms relative to the erase term (4: other shapes kept best of 1/4 on a ShapesWorld-AR checkpoint)."""
    synonyms: bool = True
    """Also erase the target's synonyms (from the concept spec) in the unsafe prompts."""
    pairs: str = ""
    """A pair file (JSON list of {unsafe, safe} objects or {unsafe: [...], safe: [...]}; CSV with unsafe,safe columns); replaces the template pairs."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"window": 5, "tlm": "absolute", "tau": 0.05, "lr": 1e-4, "target": "lm_attn_first_5"},
    }

    def __post_init__(self) -> None:
        require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}.")
        require(
            self.pairs_per_iteration >= 1,
            f"pairs_per_iteration must be >= 1, got {self.pairs_per_iteration}.",
        )
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}.")
        require(
            self.negative_guidance >= 0, f"negative_guidance (η) must be >= 0, got {self.negative_guidance}."
        )
        require(self.window >= 0, f"window must be >= 0 (0 = all tokens), got {self.window}.")
        require(self.tau >= 0, f"tau must be >= 0, got {self.tau}.")
        require(self.sample_guidance >= 0, f"sample_guidance must be >= 0, got {self.sample_guidance}.")
        require(
            self.temperature >= 0 or self.temperature == -1,
            f"temperature must be >= 0 (or -1 = model default), got {self.temperature}.",
        )
        require(
            self.anchors_per_iteration >= 0,
            f"anchors_per_iteration must be >= 0, got {self.anchors_per_iteration}.",
        )
        require(self.anchor_weight >= 0, f"anchor_weight must be >= 0, got {self.anchor_weight}.")


@dataclass(frozen=True)
class ESDARConfig(EARConfig):
    """ESD for AR models: ∅ is the unconditional row; one step per iteration; no TLM, no anchors."""

    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default."""
    window: int = 0
    """Image tokens per optimizer step; 0 = all tokens (ESD: one step per sample)."""
    tlm: Literal["relative", "absolute", "off"] = "off"
    """Thresholded loss masking (off for ESD)."""
    anchors_per_iteration: int = 0
    """Retain prompts per iteration pinned to the teacher (ESD has none)."""
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}


# ---- the math (torch only) --------------------------------------------------------------------------
def ear_target(h_unsafe: torch.Tensor, h_safe: torch.Tensor, eta: float) -> torch.Tensor:
    """h*(s) − η (h*(u) − h*(s)): the regression target of the student's h_θ(u)."""
    return h_safe - eta * (h_unsafe - h_safe)


def windows(num_tokens: int, window: int) -> list[tuple[int, int]]:
    """WGA windows [start, end) over T image positions (window 0 = one window of all tokens)."""
    w = num_tokens if window <= 0 else window
    return [(a, min(a + w, num_tokens)) for a in range(0, num_tokens, w)]


def tlm_keep(loss: float, reference: float, tau: float, mode: str) -> bool:
    """TLM: whether a window with ``loss`` takes its optimizer step (False = masked)."""
    if mode == "off":
        return True
    if mode == "absolute":
        return loss > tau
    return loss > tau * reference


# ---- pairs -----------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(unsafe, safe) pairs from a JSON or CSV file (see ``EARConfig.pairs``).

    Raises:
        ErasekitError: missing or empty file, unknown keys, or unsafe/safe lists of unequal length.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErasekitError(f"Pair file {path} not found; pass a JSON or CSV file of unsafe/safe prompts.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ErasekitError(f"Pair file {path} is empty; add unsafe/safe prompt pairs.")
    if path.suffix.lower() == ".csv":
        rows: list[Any] = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ErasekitError(
                f"Pair file {path} is not valid JSON (line {error.lineno}); fix it."
            ) from None
    if isinstance(rows, dict):
        keys = next((k for k in _PAIR_KEYS if k[0] in rows and k[1] in rows), None)
        if keys is None or not all(isinstance(rows[k], list) for k in keys):
            raise ErasekitError(f"Pair file {path}: expected lists under 'unsafe' and 'safe'.")
        unsafe, safe = rows[keys[0]], rows[keys[1]]
        if len(unsafe) != len(safe):
            raise ErasekitError(
                f"Pair file {path} has {len(unsafe)} unsafe but {len(safe)} safe prompts; give one safe prompt per unsafe prompt."
            )
        pairs = list(zip(unsafe, safe))
    elif isinstance(rows, list):
        pairs = []
        for i, row in enumerate(rows):
            keys = next(
                (k for k in _PAIR_KEYS if isinstance(row, dict) and k[0] in row and k[1] in row), None
            )
            if keys is None:
                raise ErasekitError(f"Pair file {path}, entry {i}: needs 'unsafe' and 'safe' keys.")
            pairs.append((row[keys[0]], row[keys[1]]))
    else:
        raise ErasekitError(f"Pair file {path}: expected a list of pairs or an object of two lists.")
    pairs = [(str(u).strip(), str(s).strip()) for u, s in pairs]
    if not pairs:
        raise ErasekitError(f"Pair file {path} holds no pairs; add unsafe/safe prompt pairs.")
    if any(not u for u, _ in pairs):
        raise ErasekitError(f"Pair file {path} has an empty unsafe prompt; fill it or drop the pair.")
    return pairs


def template_pairs(
    concepts: ConceptSpec, replacements: dict[str, list[str]], synonyms: bool
) -> list[tuple[str, str]]:
    """ECGVF-style pairs: each template with the concept (or a synonym) vs. with a replacement."""
    pairs: list[tuple[str, str]] = []
    for target in concepts.targets:
        words = [target.text] + (list(concepts.synonyms.get(target.text, ())) if synonyms else [])
        for template in concepts.templates:
            for i, word in enumerate(words):
                options = replacements[target.text]
                other = options[(i + len(pairs)) % len(options)]
                pairs.append((fix_articles(template.format(word)), fix_articles(template.format(other))))
    return list(dict.fromkeys(pairs))


def _replacements(backend: Any, concepts: ConceptSpec) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    erased = {t.text for t in concepts.targets}
    for target in concepts.targets:
        if target.anchor:
            out[target.text] = [target.anchor]
            continue
        same = [c for c in source_of(backend).same_kind_concepts(target.text) if c not in erased]
        if not same:
            raise ErasekitError(
                f"EAR needs a safe replacement for {target.text!r}; pass --anchor WORD or -o pairs=FILE."
            )
        out[target.text] = same
    return out


def _anchor_pool(pairs: list[tuple[str, str]], concepts: ConceptSpec, config: EARConfig) -> list[str]:
    """The preservation prompts an iteration draws its anchors from (deduplicated, in order)."""
    anchors: list[str] = []
    if config.anchors_per_iteration > 0:
        if config.anchors in ("safe", "both"):  # the replacements' own prompts keep their images
            anchors += [safe for _, safe in pairs if safe]
        if config.anchors in ("retain", "both"):  # the model's retain prompts (naming no target)
            anchors += list(concepts.retain)
    return list(dict.fromkeys(anchors))


def _uncond_pairs(concepts: ConceptSpec, synonyms: bool) -> list[tuple[str, str]]:
    """ESD-AR's pairs: each template with the concept (and its synonyms) against the empty prompt."""
    words = [
        w
        for t in concepts.targets
        for w in [t.text, *concepts.synonyms.get(t.text, ())][: None if synonyms else 1]
    ]
    pairs = [(fix_articles(tpl.format(w)), "") for tpl in concepts.templates for w in words]
    return list(dict.fromkeys(pairs))


class _Components(nn.ModuleDict):
    """The backend's components under their qualified names, for ``functional_call`` (references only)."""

    def forward(self, call):  # noqa: D102
        return call()


@dataclass
class _Batch:
    """One iteration's rows and histories, and the frozen teacher's targets for them."""

    rows_u: Any
    codes_u: torch.Tensor
    target: torch.Tensor
    keep_rows: list[tuple[Any, torch.Tensor]]
    keep_targets: list[torch.Tensor]


class _Trainer:
    """EAR's training loop on ``backend``: the frozen teacher θ* (``originals``) and the student in place."""

    def __init__(
        self, backend: Any, config: EARConfig, originals: dict[str, torch.Tensor], safe_is_uncond: bool
    ):
        self.backend, self.config, self.originals = backend, config, originals
        self.safe_is_uncond = safe_is_uncond
        self.teacher = _Components(backend.components)
        self.steps = self.skipped = 0
        self.reference: float | None = None  # ℓ_ref of relative TLM: the first window's loss

    def frozen(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the original weights θ* (the frozen teacher)."""
        return torch.func.functional_call(
            self.teacher, self.originals, (lambda: fn(*args, **kwargs),), strict=False
        )

    def states(self, rows: Any, codes: torch.Tensor) -> torch.Tensor:
        if self.config.context == "full":
            return self.backend.hidden_states(rows, codes)
        return self.backend.hidden_states_no_context(rows, codes)

    def draw(self, pairs, anchors, generator) -> tuple[list[str], list[str], list[str], list[int]]:
        """This iteration's unsafe and safe prompts, anchor prompts, and one history seed per stream."""
        config = self.config
        pick = torch.randint(len(pairs), (config.pairs_per_iteration,), generator=generator).tolist()
        unsafe = [pairs[i][0] for i in pick]
        safe = [pairs[i][1] for i in pick]
        anchor: list[str] = []
        if anchors:
            chosen = torch.randint(len(anchors), (config.anchors_per_iteration,), generator=generator)
            anchor = [anchors[i] for i in chosen.tolist()]
        seeds = torch.randint(0, 2**31 - 1, (len(unsafe) + len(anchor),), generator=generator).tolist()
        return unsafe, safe, anchor, seeds

    @torch.no_grad()
    def batch(self, unsafe: list[str], safe: list[str], anchor: list[str], seeds: list[int]) -> _Batch:
        """Sample the token histories and compute the teacher's targets (ear_target and the keep states)."""
        backend, config, frozen, states = self.backend, self.config, self.frozen, self.states
        sample = dict(
            guidance=config.sample_guidance or None,  # None: the model's default
            temperature=None if config.temperature == -1 else config.temperature,
        )
        n = len(unsafe)
        if config.history == "shared":
            codes = backend.sample_tokens(unsafe + anchor, seeds, **sample)  # student, on-policy
            codes_u, codes_a = codes[:n], codes[n:]
            codes_s = codes_u
        else:  # public code: independent teacher streams
            codes_u = frozen(backend.sample_tokens, unsafe, seeds[:n], **sample)
            codes_s = frozen(backend.sample_tokens, safe, seeds[:n], **sample)
            codes_a = frozen(backend.sample_tokens, anchor, seeds[n:], **sample) if anchor else None
        rows_u = backend.prompt_rows(unsafe)
        if self.safe_is_uncond:
            rows_s = backend.prompt_rows(unsafe, uncond=True)
        else:
            rows_s = backend.prompt_rows(safe)
        rows_0 = backend.prompt_rows(unsafe, uncond=True)
        target = ear_target(
            frozen(states, rows_u, codes_u), frozen(states, rows_s, codes_s), config.negative_guidance
        )
        keep_rows = [(rows_0, codes_u)] if config.uncond_rows else []
        if anchor:
            keep_rows.append((backend.prompt_rows(anchor), codes_a))
        keep_targets = [frozen(states, r, c) for r, c in keep_rows]
        return _Batch(rows_u, codes_u, target, keep_rows, keep_targets)

    def window_steps(self, batch: _Batch, spans: list[tuple[int, int]], optimizer) -> list[float]:
        """WGA: one optimizer step per window in raster order, each window's loss with the updated θ; TLM
        skips a window whose loss is at or under the threshold. Returns the windows' losses."""
        config = self.config
        losses = []
        for start, end in spans:
            h = self.states(batch.rows_u, batch.codes_u[:, :end])[:, start:end]  # student h_θ(u)
            loss = nn.functional.mse_loss(h, batch.target[:, start:end])
            for (rows, codes), kept in zip(batch.keep_rows, batch.keep_targets):
                h_keep = self.states(rows, codes[:, :end])[:, start:end]
                loss = loss + config.anchor_weight * nn.functional.mse_loss(h_keep, kept[:, start:end])
            value = float(loss.detach())
            if self.reference is None:
                self.reference = value
            losses.append(round(value, 6))
            if tlm_keep(value, self.reference, config.tau, config.tlm):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.steps += 1
            else:
                self.skipped += 1
        return losses


class EAR:
    """EAR: per-image-token ESD on the hidden states of an autoregressive image model, with WGA and TLM."""

    name: ClassVar[str] = "ear"
    paper: ClassVar[str] = (
        "Fan et al., EAR: Erasing Concepts from Unified Autoregressive Models, 2025 (arXiv 2506.20151)"
    )
    takes_preserve: ClassVar[bool] = False  # anchors come from retain prompts, not preserve concepts
    backend_kind: ClassVar[str] = "ar"
    config_cls: ClassVar[type] = EARConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "iterations=2",
        "pairs_per_iteration=2",
        "window=8",
        "lr=1e-3",
    )
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"], "anchors": ["square"]}
    safe_is_uncond: ClassVar[bool] = False

    def erase(
        self, backend: Any, concepts: ConceptSpec, config: EARConfig, generator: torch.Generator | None = None
    ) -> Artifact:
        if getattr(backend, "kind", None) != "ar":
            raise ErasekitError(
                f"{self.name} erases autoregressive image-token models; load one (e.g. --model shapes-ar)."
            )
        generator = generator or torch.Generator().manual_seed(0)
        pairs = self._pairs(backend, concepts, config)
        anchors = _anchor_pool(pairs, concepts, config)
        for prompt in [p for pair in pairs for p in pair if p] + anchors:
            backend.prompt_rows([prompt])  # one-line error now for a prompt the model cannot take
        spans = windows(backend.num_image_tokens, config.window)
        window_loss: list[list[float]] = []
        with TrainedParameters(backend.parameters_for(config.target)) as trained:
            trainer = _Trainer(backend, config, trained.originals, self.safe_is_uncond)
            optimizer = torch.optim.Adam(trained.params.values(), lr=config.lr)
            for _ in tqdm(range(config.iterations), desc=self.name, disable=None):
                batch = trainer.batch(*trainer.draw(pairs, anchors, generator))
                window_loss.append(trainer.window_steps(batch, spans, optimizer))
            artifact = trained.delta_artifact(self.name)
        artifact.manifest["training"] = {
            "target": config.target,
            "trained_parameters": int(sum(p.numel() for p in trained.params.values())),
            "pairs": len(pairs),
            "pair_examples": pairs[:4],
            "anchors": len(anchors),
            "optimizer_steps": trainer.steps,
            "tlm_skipped_windows": trainer.skipped,
            "tlm_reference_loss": trainer.reference,
            "windows_per_iteration": len(spans),
            "iteration_loss": [round(sum(w) / len(w), 6) for w in window_loss],
            "window_loss": window_loss,
        }
        return artifact

    def _pairs(self, backend: Any, concepts: ConceptSpec, config: EARConfig) -> list[tuple[str, str]]:
        """The (unsafe, safe) prompt pairs: ESD-AR's against ∅, a pair file's, or the templates'."""
        if self.safe_is_uncond:
            if any(t.anchor for t in concepts.targets) or config.pairs:
                raise ErasekitError(
                    "esd_ar erases towards the unconditional state; drop --anchor and pairs (or use ear)."
                )
            return _uncond_pairs(concepts, config.synonyms)
        if config.pairs:
            return read_pairs(config.pairs)
        return template_pairs(concepts, _replacements(backend, concepts), config.synonyms)


class ESDAR(EAR):
    """ESD for autoregressive image models (the baseline EAR extends): erase towards the unconditional state."""

    name: ClassVar[str] = "esd_ar"
    paper: ClassVar[str] = (
        "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023 (arXiv 2303.07345), "
        "on AR hidden states as in Fan et al., EAR (arXiv 2506.20151)"
    )
    config_cls: ClassVar[type] = ESDARConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = ("iterations=2", "pairs_per_iteration=2", "lr=1e-3")
    smoke_concepts: ClassVar[dict] = {"concepts": ["star"]}
    safe_is_uncond: ClassVar[bool] = True
