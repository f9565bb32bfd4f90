"""ItD — Interpret then Deactivate: erase concepts by switching off sparse-autoencoder features.

*Concept Steerers / Interpret then Deactivate* (arXiv 2503.09446). Nothing of the diffusion model is
trained. What is implemented:

* **SAE** (trained once per text encoder and layer, cached as a reusable asset). A top-k sparse
  autoencoder (Gao et al. 2024) on the text encoder's residual stream h ∈ R^d at layer ℓ
  (the output of encoder layer ℓ; public: hidden state 8 of 12, i.e. ℓ = round(2/3 · depth) − 1;
  an encoder shallower than ``shallow_depth`` uses its last layer, where synonyms have merged with
  the concept — on ShapesWorld's 3-layer encoder layer 1 gave striped a synonym UA of 0.625):
  ``x = h / s`` (s a fixed input scale so that E‖x‖² ≈ d),
  ``z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc))``, ``x̂ = W_dec z + b_dec``, decoder columns kept at
  unit norm; loss ``‖x − x̂‖² + α_aux ‖e − W_dec z_aux‖²`` where e = x − x̂ and z_aux are the top
  k_aux pre-activations of latents dead for ``dead_steps`` steps (the auxiliary loss). k scales with
  width (public k = 64 at d = 768). The BOS position is excluded (it is the same for every prompt).
* **Interpret** (training-free, per concept). Prompt-level activation a_pj = max over positions of
  z_j. "Active on target minus active on retain" is made contrastive: each target prompt is paired
  with counterfactuals (the concept swapped for its domain's other concepts, or generic words), and
  features are ranked by contrast_j = mean_p (a_pj − mean_a a_paj) — what the concept itself adds,
  with the prompt's other words cancelled — among those that fire on ≥ ``min_target_rate`` of the
  target prompts and ≤ ``max_retain_rate`` of the retain prompts; the top ``n_features``. (A small
  text encoder's SAE has few features that are both frequent on the concept and silent elsewhere;
  rate thresholds alone found 2–3 features on ShapesWorld.) Several concepts: F = ∪ F_c.
* **Deactivate** (inference). z_F ← λ z_F (public λ = −8; default −24, measured on ShapesWorld) and decode *with the SAE's error added
  back*: ``h' = h + s W_dec[:, F] (λ − 1) z_F`` — gated prompts change only by the edit.
* **Gate** (the zero-shot classifier). score(p) = max over positions of ‖h' − h‖ (h' from each
  concept's top ``gate_features`` features only when that is set: more edit features widen the score
  distributions until they overlap; the ``shapesworld`` preset edits 24 and gates on 8); the edit is applied
  to a prompt only when score(p) > τ, otherwise its hidden states pass through bit-exactly. Public τ is
  the minimum score over the training prompts, which lets weaker paraphrases (synonyms) slip under it.
  Default here (``threshold="between"``): τ between the two score distributions, a fraction ρ of the
  way from a high quantile of the retain scores to the lowest target score (closer to retain: a
  paraphrase that activates the concept features more than nearly all retain prompts do is gated);
  when the distributions overlap, the threshold with the fewest errors on the two sets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from erasekit.artifacts import Artifact, InferenceHook, register_hook_kind
from erasekit.backends.base import fingerprint_components
from erasekit.concepts import ConceptSpec, swap_word
from erasekit.files import atomic_write
from erasekit.methods.base import require
from erasekit.sources import DataSource, source_of

# ---- config ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItDConfig:
    """Hyper-parameters of ItD (SAE asset, feature selection, gate)."""

    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, or another name listed by `erasekit methods` (paper: the paper's / reference code's values; shapesworld: tuned on the shipped ShapesWorld model)."""
    layer: int | None = None
    """Text-encoder layer whose output the SAE reads (0-based); None = from layer_fraction, or the last layer of an encoder shallower than shallow_depth."""
    layer_fraction: float = 2 / 3
    """Layer as a fraction of depth when layer is None: round(fraction · depth) − 1 (public: 8 of 12)."""
    shallow_depth: int = 6
    """Encoders with fewer layers use their last layer when layer is None (at layer 1 of ShapesWorld's 3, synonyms share no feature with the concept: synonym UA 0.625 for striped, 0.875 at layer 2)."""
    expansion: int = 8
    """SAE latents = expansion · hidden width."""
    k: int | None = None
    """Top-k active latents; None = 64 · width / 768 (public k = 64 on CLIP ViT-L), at least 4."""
    sae_steps: int = 600
    """SAE optimizer steps (batches of sae_batch token states)."""
    sae_batch: int = 1024
    """Token states per SAE step."""
    sae_lr: float = 1e-3
    """Adam learning rate of the SAE."""
    aux_weight: float = 1 / 32
    """α_aux: weight of the dead-latent auxiliary loss (Gao et al. 2024)."""
    dead_steps: int = 100
    """A latent that has not fired for this many steps counts as dead for the auxiliary loss."""
    corpus: Literal["auto", "source", "templates"] = "auto"
    """SAE / retain prompt corpus: the model's data source (its own captions, e.g. ShapesWorld's), or templates × concepts + a generic list; auto uses the source when it knows the concepts."""
    corpus_size: int = 3000
    """Prompts in the SAE corpus."""
    cache_dir: str = "~/.cache/erasekit/sae"
    """Where trained SAEs are kept (keyed by text-encoder fingerprint, layer and SAE settings)."""
    feature_scale: float = -24.0
    """λ: the selected features' codes are multiplied by this (public −8; on ShapesWorld's last layer −8 left 2 of 16 striped targets striped, −24 one)."""
    n_features: int = 8
    """At most this many features per concept (the edit)."""
    gate_features: int = 0
    """The gate scores only each concept's top this many features by contrast (0 = all n_features): more edit features cover more of the concept (on a small encoder some are tied to token positions), while the gate keeps to the most specific ones."""
    min_target_rate: float = 0.1
    """A feature must fire on at least this share of the target prompts."""
    max_retain_rate: float = 0.3
    """A feature may fire on at most this share of the retain prompts."""
    threshold: Literal["between", "min_target"] = "between"
    """Gate threshold: between the retain and target score distributions, or the public minimum over target prompts."""
    threshold_position: float = 0.25
    """ρ for threshold=between: τ = r + ρ (min target − r), r the retain_quantile of retain scores."""
    retain_quantile: float = 0.99
    """Quantile of the retain scores the between-threshold starts from (1 = their maximum)."""
    n_target_prompts: int = 200
    """Target prompts per concept for interpretation and calibration (ShapesWorld captions); templates are always added."""

    # Named presets (-o preset=NAME). paper: the public code's choices (layer 8 of 12 by the depth
    # fraction whatever the depth, λ = −8, the gate threshold at the minimum target score).
    # shapesworld: tuned on the shipped model (last layer of its 3, λ = −24, the
    # between-distributions threshold: the defaults), and 24 edit features of which the gate scores
    # the top 8: this encoder's SAE has features tied to token positions, so "striped" one token
    # later ("a cyan diamond on a striped background") fires none of the top 8 at its own token.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "shallow_depth": 0,
            "layer_fraction": 2 / 3,
            "feature_scale": -8.0,
            "threshold": "min_target",
        },
        "shapesworld": {
            "shallow_depth": 6,
            "feature_scale": -24.0,
            "threshold": "between",
            "threshold_position": 0.25,
            "n_features": 24,
            "gate_features": 8,
        },
    }

    def __post_init__(self) -> None:
        require(self.expansion >= 1, "expansion must be at least 1.")
        require(self.k is None or self.k >= 1, "k must be at least 1 (or none to scale with width).")
        require(0 < self.layer_fraction <= 1, "layer_fraction must be in (0, 1]; try 0.667.")
        require(self.shallow_depth >= 0, "shallow_depth cannot be negative; 0 always uses layer_fraction.")
        require(self.sae_steps >= 1 and self.sae_batch >= 1, "sae_steps and sae_batch must be positive.")
        require(self.n_features >= 1, "n_features must be at least 1.")
        require(
            0 <= self.gate_features <= self.n_features,
            f"gate_features must be between 0 (= all) and n_features ({self.n_features}), got {self.gate_features}.",
        )
        require(0 <= self.threshold_position <= 1, "threshold_position must be in [0, 1].")
        require(0 < self.retain_quantile <= 1, "retain_quantile must be in (0, 1].")


# ---- the sparse autoencoder ----------------------------------------------------------------------------


class TopKSAE(nn.Module):
    """Top-k sparse autoencoder on (scaled) residual-stream vectors; decoder columns have unit norm."""

    def __init__(self, width: int, n_latents: int, k: int, generator: torch.Generator | None = None):
        super().__init__()
        self.k = k
        decoder = torch.randn(width, n_latents, generator=generator)
        decoder = decoder / decoder.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(width))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return topk_codes(self.pre_activation(x), self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.T + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8))


def topk_codes(pre: torch.Tensor, k: int) -> torch.Tensor:
    """z = TopK_k(ReLU(pre)) along the last dimension."""
    values, indices = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def train_sae(
    states: torch.Tensor, n_latents: int, k: int, config: ItDConfig, generator: torch.Generator
) -> tuple[TopKSAE, dict]:
    """Fit a top-k SAE to ``states`` [N, d] (already scaled). Returns the SAE and training stats."""
    width = states.shape[1]
    sae = TopKSAE(width, n_latents, k, generator)
    with torch.no_grad():
        sae.b_dec.copy_(states.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.sae_lr)
    last_fired = torch.zeros(n_latents, dtype=torch.long)
    k_aux = min(max(2 * k, 1), n_latents // 2)
    variance = (states - states.mean(0)).pow(2).sum(-1).mean()
    for step in range(config.sae_steps):
        batch = states[torch.randint(states.shape[0], (config.sae_batch,), generator=generator)]
        pre = sae.pre_activation(batch)
        z = topk_codes(pre, k)
        reconstruction = sae.decode(z)
        error = batch - reconstruction
        loss = error.pow(2).sum(-1).mean() / variance
        fired = (z > 0).any(0)
        last_fired[fired] = step
        dead = (step - last_fired) >= config.dead_steps
        if config.aux_weight > 0 and int(dead.sum()) > 0:
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            n_aux = min(k_aux, int(dead.sum()))
            values, indices = dead_pre.topk(n_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, indices, values.relu())
            aux = (error.detach() - z_aux @ sae.W_dec.T).pow(2).sum(-1).mean() / variance
            loss = loss + config.aux_weight * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalise_decoder()
    with torch.no_grad():
        sample = states[: min(states.shape[0], 20000)]
        z = sae.encode(sample)
        fvu = float(
            (sample - sae.decode(z)).pow(2).sum(-1).mean() / (sample - sample.mean(0)).pow(2).sum(-1).mean()
        )
        alive = int(((z > 0).any(0)).sum())
    return sae, {"fraction_variance_unexplained": fvu, "alive_latents": alive, "n_latents": n_latents}


# ---- prompt corpora ----------------------------------------------------------------------------------

GENERIC_WORDS: tuple[str, ...] = (
    "dog", "cat", "car", "house", "tree", "mountain", "river", "city", "flower", "bird", "horse",
    "boat", "chair", "table", "book", "cup", "person", "child", "forest", "beach", "bridge", "castle",
    "robot", "apple", "guitar", "train", "street", "garden", "lake", "sky", "portrait", "landscape",
    "red", "blue", "green", "yellow", "old", "small", "large", "bright", "dark", "wooden",
)  # fmt: skip
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}", "a painting of a {}", "a {} in the sun", "a close-up of a {}",
    "a drawing of a {}", "an image of a {}", "a {} at night", "a picture of the {}",
)  # fmt: skip


def corpus_source(concepts: ConceptSpec, backend, corpus: str) -> DataSource | None:
    """The model's data source when ItD should draw its prompts from it, else None (templates).

    ``auto`` uses the source when it knows every target concept (it has related concepts for them):
    on the shipped ShapesWorld model that is the world's captions; a real model's caption set knows no
    concepts, so ItD keeps to its templates there.
    """
    if corpus == "templates":
        return None
    source = source_of(backend)
    if corpus == "source":
        return source
    known = all(source.related_concepts(t.text) for t in concepts.targets)
    return source if known else None


def sae_corpus(source: DataSource | None, concepts: ConceptSpec, size: int, seed: int) -> list[str]:
    """The prompts whose token states train the SAE (independent of the erased concept with a source)."""
    if source is not None:
        return source.corpus(size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    words = list(GENERIC_WORDS) + concepts.erase_texts + list(concepts.preserve)
    templates = list(GENERIC_TEMPLATES) + list(concepts.templates)
    prompts = [t.format(w) for t in templates for w in words]
    order = torch.randperm(len(prompts), generator=generator).tolist()
    return [prompts[i] for i in order][:size] if size < len(prompts) else prompts


def target_prompts(
    source: DataSource | None, concepts: ConceptSpec, concept: str, n: int, seed: int
) -> list[str]:
    """Prompts that contain ``concept``: the spec's templates (+ the source's captions naming it)."""
    prompts = concepts.prompts(concept) + [t.format(concept) for t in GENERIC_TEMPLATES[:4]]
    if source is not None and len(prompts) < n:
        prompts += source.concept_prompts(concept, n - len(prompts), seed=seed)
    return prompts


def counterfactuals(prompts: list[str], concept: str, alternatives: list[str]) -> list[list[str]]:
    """Each prompt with the concept word swapped for every alternative: [P][A] (same order)."""
    return [[swap_word(p, concept, a) for a in alternatives] for p in prompts]


def alternatives_for(source: DataSource | None, concepts: ConceptSpec, concept: str, n: int = 6) -> list[str]:
    """Concepts to contrast ``concept`` with: the source's of its kind, else the preserve set or generic words."""
    erased = set(concepts.erase_texts)
    pool = [c for c in source.same_kind_concepts(concept) if c not in erased] if source is not None else []
    if not pool:
        pool = [c for c in concepts.preserve if c not in erased] or [
            w for w in GENERIC_WORDS if w not in erased
        ]
    return pool[:n] if len(pool) > n else pool


def retain_prompts(source: DataSource | None, concepts: ConceptSpec, n: int, seed: int) -> list[str]:
    """Prompts without any erased concept: preserved concepts, the spec's retain prompts, then the
    source's retain prompts (or the generic list without a source)."""
    erased = concepts.erase_texts
    prompts = [p for c in concepts.preserve for p in concepts.prompts(c)] + list(concepts.retain)
    if source is not None:
        if len(prompts) < n:
            prompts += source.retain_prompts(n - len(prompts), avoid=erased, seed=seed)
    else:
        words = [w for w in GENERIC_WORDS if w not in erased]
        prompts += [t.format(w) for t in GENERIC_TEMPLATES for w in words]
    return prompts


# ---- interpretation and the gate ---------------------------------------------------------------------


def sae_codes(x: torch.Tensor, sae_tensors: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc)) for scaled states x [..., d]."""
    return topk_codes((x - sae_tensors["b_dec"]) @ sae_tensors["W_enc"].T + sae_tensors["b_enc"], k)


def feature_edit(
    z: torch.Tensor, sae_tensors: dict[str, torch.Tensor], features: torch.Tensor, feature_scale: float
) -> torch.Tensor:
    """Δx = W_dec[:, F] (λ − 1) z_F from codes z (the SAE error is kept: h' = h + s Δx)."""
    return ((feature_scale - 1.0) * z[..., features]) @ sae_tensors["W_dec"][:, features].T


def edit_delta(
    x: torch.Tensor,
    sae_tensors: dict[str, torch.Tensor],
    features: torch.Tensor,
    k: int,
    feature_scale: float,
) -> torch.Tensor:
    """Δx = W_dec[:, F] (λ − 1) z_F for scaled states x [..., d] (the SAE error is kept: h' = h + s Δx)."""
    return feature_edit(sae_codes(x, sae_tensors, k), sae_tensors, features, feature_scale)


def select_features(
    target_codes: torch.Tensor,
    counterfactual_codes: torch.Tensor,
    retain_codes: torch.Tensor,
    config: ItDConfig,
) -> tuple[torch.Tensor, dict]:
    """F_c from prompt-level activations: target [P, n], counterfactual [P, A, n], retain [R, n].

    Counterfactuals are the target prompts with the concept swapped for each alternative (its
    domain's other concepts, or generic words): contrast_j = mean_p (a_pj − mean_a a_paj) is what the
    concept itself adds to feature j in its context, so colour/background features of the same
    prompts cancel. Eligible: fires on ≥ min_target_rate of target prompts and ≤ max_retain_rate of
    retain prompts; the top ``n_features`` by contrast (positive only).
    """
    rate_t = (target_codes > 0).float().mean(0)
    rate_r = (retain_codes > 0).float().mean(0)
    contrast = (target_codes - counterfactual_codes.mean(1)).mean(0)
    eligible = (rate_t >= config.min_target_rate) & (rate_r <= config.max_retain_rate)
    score = torch.where(eligible, contrast, torch.full_like(contrast, -1.0))
    chosen = score.argsort(descending=True)[: config.n_features]
    chosen = chosen[score[chosen] > 0]
    stats = {
        int(j): {
            "contrast": round(float(contrast[j]), 3),
            "target_rate": round(float(rate_t[j]), 3),
            "retain_rate": round(float(rate_r[j]), 3),
        }
        for j in chosen
    }
    return chosen, stats


def calibrate_threshold(target_scores: torch.Tensor, retain_scores: torch.Tensor, config: ItDConfig) -> float:
    """τ of the zero-shot gate from gate scores of target and retain prompts."""
    low_target = float(target_scores.min())
    if config.threshold == "min_target":
        # Public rule, applied strictly (score > τ): nudge just below the minimum so it is gated itself.
        return low_target * (1 - 1e-6)
    high_retain = float(retain_scores.quantile(config.retain_quantile)) if retain_scores.numel() else 0.0
    if low_target > high_retain:
        return high_retain + config.threshold_position * (low_target - high_retain)
    # Overlap: the candidate with the fewest errors (target missed + retain gated); unique() sorts, so
    # argmin breaks ties towards the lower threshold (recall first).
    candidates = torch.cat([target_scores, retain_scores]).unique()
    errors = torch.stack([(target_scores <= c).sum() + (retain_scores > c).sum() for c in candidates])
    return float(candidates[int(errors.argmin())])


# ---- the inference hook ---------------------------------------------------------------------------------


@register_hook_kind("itd_sae")
class ItDHook(InferenceHook):
    """Forward hook on one CLIP encoder layer: deactivate SAE features of gated prompts, pass the rest.

    Tensors: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` (the SAE), ``features`` (F), ``input_scale`` (s),
    optionally ``gate_features`` (the subset of F the gate scores; absent: all of F).
    Config: ``k``, ``feature_scale`` (λ), ``threshold`` (τ), ``skip_positions`` (leading positions
    left alone: the BOS token).
    """

    def attach(self) -> list:
        self.last_scores: torch.Tensor | None = None
        return [self.module.register_forward_hook(self._edit)]

    def _edit(self, module: nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        skip = int(self.config.get("skip_positions", 1))
        scale = self.tensors["input_scale"].to(hidden.device, torch.float32)
        sae = {
            k: self.tensors[k].to(hidden.device, torch.float32) for k in ("W_enc", "b_enc", "W_dec", "b_dec")
        }
        features = self.tensors["features"].to(hidden.device, torch.int64)
        k, feature_scale = int(self.config["k"]), float(self.config["feature_scale"])
        with torch.no_grad():
            z = sae_codes(hidden[:, skip:].float() / scale, sae, k)  # encoded once for edit and gate
            delta = scale * feature_edit(z, sae, features, feature_scale)
            if "gate_features" in self.tensors:  # the gate reads a subset of the edited features
                gate = self.tensors["gate_features"].to(hidden.device, torch.int64)
                scores = (scale * feature_edit(z, sae, gate, feature_scale)).norm(dim=-1).amax(dim=1)
            else:
                scores = delta.norm(dim=-1).amax(dim=1)
            self.last_scores = scores
            gated = scores > float(self.config["threshold"])
        if not bool(gated.any()):
            return None  # every prompt passes through bit-exactly
        edited = hidden.clone()
        edited[gated, skip:] = (hidden[gated, skip:].float() + delta[gated]).to(hidden.dtype)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited


# ---- the method ---------------------------------------------------------------------------------------


def _layer_states(backend, layer_name: str, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """Output of the text-encoder layer ``layer_name`` for ``prompts``: [P, L, d] float32."""
    module = backend.named_modules()[layer_name]
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach().float().cpu())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                backend.encode_prompts(prompts[i : i + batch])
    finally:
        handle.remove()
    return torch.cat(captured)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


class ItD:
    """ItD (arXiv 2503.09446): SAE features of the text encoder switched off behind a zero-shot gate."""

    name: ClassVar[str] = "itd"
    paper: ClassVar[str] = (
        "Interpret then Deactivate: concept erasure with sparse autoencoders (arXiv 2503.09446)"
    )
    config_cls: ClassVar[type] = ItDConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "sae_steps=20",
        "sae_batch=128",
        "corpus_size=64",
        "n_target_prompts=8",
        "min_target_rate=0.1",
        "max_retain_rate=0.5",
        # A random encoder's features are not concept-specific (retain prompts outscore the targets),
        # so the between-threshold gates nothing there; the public minimum-over-targets gate acts.
        "threshold=min_target",
    )

    def resolve_layer(self, backend, config: ItDConfig) -> int:
        n = backend.n_text_layers
        if config.layer is not None:
            require(
                0 <= config.layer < n,
                f"layer {config.layer} does not exist; this text encoder has {n} layers (0..{n - 1}).",
            )
            return config.layer
        if n < config.shallow_depth:
            return n - 1
        return min(max(round(config.layer_fraction * n) - 1, 0), n - 1)

    def sae_for(self, backend, concepts: ConceptSpec, config: ItDConfig, layer: int) -> tuple[dict, dict]:
        """The cached SAE for this text encoder and layer (trained and saved on first use)."""
        layer_name = backend.text_layer_module(layer)
        source = corpus_source(concepts, backend, config.corpus)
        settings = {
            "layer": layer,
            "expansion": config.expansion,
            "k": config.k,
            "steps": config.sae_steps,
            "batch": config.sae_batch,
            "lr": config.sae_lr,
            "aux_weight": config.aux_weight,
            "dead_steps": config.dead_steps,
            "corpus": source.name if source is not None else "templates",
            "corpus_size": config.corpus_size,
            # the template corpus depends on the concepts; a source's does not
            "words": [] if source is not None else sorted(concepts.erase_texts + list(concepts.preserve)),
        }
        encoder_fp = fingerprint_components({"text_encoder": backend.components["text_encoder"]})
        key = hashlib.sha256(json.dumps([encoder_fp, settings], sort_keys=True).encode()).hexdigest()[:20]
        path = Path(config.cache_dir).expanduser() / f"sae-L{layer}-{key}.safetensors"
        if path.is_file():
            tensors = load_file(os.fspath(path))
            return tensors, {"path": str(path), "cached": True, **settings}
        prompts = sae_corpus(source, concepts, config.corpus_size, seed=0)
        states = _layer_states(backend, layer_name, prompts)[:, 1:]
        states = states.reshape(-1, states.shape[-1])
        d = states.shape[1]
        input_scale = states.norm(dim=-1).mean() / math.sqrt(d)
        k = config.k if config.k is not None else max(4, round(64 * d / 768))
        sae, stats = train_sae(
            states / input_scale, config.expansion * d, k, config, torch.Generator().manual_seed(0)
        )
        tensors = {name: p.detach().clone() for name, p in sae.named_parameters()}
        tensors["input_scale"] = input_scale.reshape(1)
        tensors["k"] = torch.tensor([k])
        _atomic_save(tensors, path, {"settings": json.dumps(settings), "stats": json.dumps(stats)})
        return tensors, {"path": str(path), "cached": False, **settings, **stats}

    def erase(
        self, backend, concepts: ConceptSpec, config: ItDConfig, *, generator: torch.Generator | None = None
    ) -> Artifact:
        # The run's seed picks the interpretation/calibration prompts; the SAE itself is a per-encoder
        # asset (seeded 0, cached), so that every erasure of one encoder reads the same features.
        seed = generator.initial_seed() if generator is not None else 0
        layer = self.resolve_layer(backend, config)
        layer_name = backend.text_layer_module(layer)
        sae, sae_info = self.sae_for(backend, concepts, config, layer)
        k = int(sae["k"][0])
        scale = sae["input_scale"]
        sae_core = {name: sae[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        source = corpus_source(concepts, backend, config.corpus)

        def prompt_codes(prompts: list[str]) -> torch.Tensor:
            x = _layer_states(backend, layer_name, prompts)[:, 1:] / scale
            return sae_codes(x, sae_core, k).amax(dim=1)  # [P, n]

        def gate_scores(prompts: list[str], features: torch.Tensor) -> torch.Tensor:
            x = _layer_states(backend, layer_name, prompts)[:, 1:] / scale
            return (
                (scale * edit_delta(x, sae_core, features, k, config.feature_scale)).norm(dim=-1).amax(dim=1)
            )

        retain = retain_prompts(source, concepts, max(4 * config.n_target_prompts, 64), seed=seed + 2)
        retain_codes = prompt_codes(retain)
        features, gate_sets, per_concept, targets = [], [], {}, []
        for i, target in enumerate(concepts.targets):
            prompts = target_prompts(
                source, concepts, target.text, config.n_target_prompts, seed=seed + 1 + i
            )
            alternatives = alternatives_for(source, concepts, target.text)
            swapped = counterfactuals(prompts, target.text, alternatives)
            flat = [q for row in swapped for q in row]
            swapped_codes = prompt_codes(flat).reshape(len(prompts), len(alternatives), -1)
            chosen, stats = select_features(prompt_codes(prompts), swapped_codes, retain_codes, config)
            if chosen.numel() == 0:
                from erasekit.errors import ErasekitError

                raise ErasekitError(
                    f"ItD found no SAE feature specific to {target.text!r}; lower min_target_rate or raise max_retain_rate."
                )
            per_concept[target.text] = stats
            features.append(chosen)
            gate_sets.append(chosen[: config.gate_features or len(chosen)])  # chosen is by contrast
            targets += prompts
        union = torch.cat(features).unique()
        gate_union = torch.cat(gate_sets).unique()
        target_scores = gate_scores(targets, gate_union)
        retain_scores = gate_scores(retain, gate_union)
        tau = calibrate_threshold(target_scores, retain_scores, config)

        artifact = Artifact(method=self.name)
        artifact.add_hook(
            "itd_sae",
            layer_name,
            {
                **sae_core,
                "features": union.to(torch.int64),
                "input_scale": scale.reshape(1),
                **({"gate_features": gate_union.to(torch.int64)} if len(gate_union) < len(union) else {}),
            },
            {
                "k": k,
                "feature_scale": config.feature_scale,
                "threshold": tau,
                "skip_positions": 1,
                "layer": layer,
            },
        )
        artifact.manifest["training"] = {
            "sae": sae_info,
            "features": per_concept,
            "threshold": tau,
            "target_score_min": float(target_scores.min()),
            "target_gated": float((target_scores > tau).float().mean()),
            "retain_score_max": float(retain_scores.max()),
            "retain_gated": float((retain_scores > tau).float().mean()),
        }
        return artifact
