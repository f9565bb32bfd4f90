"""Unlearning memorised secrets from code LMs: vanilla GA, constraint-based GA and CodeEraser.

Chu et al., "Scrub It Out! Erasing Sensitive Memorization in Code Language Models via Machine
Unlearning" (arXiv 2509.13755, 2025). Three gradient-ascent objectives over a forget set D_f of
files whose secret tokens carry a mask m (from :mod:`erasekit.secrets`), a frozen reference model
p_ref (the original) and the trained model p_θ; ℓ_t = −log p_θ(x_t | x_<t), KL_t = KL(p_ref ‖ p_θ) at
position t::

    vanilla GA        L = − mean_{t ∈ real} ℓ_t                                           (forget)
    constraint-based  L = − mean_{t ∈ real} ℓ_t − λ · mean_{t ∈ real} KL_t                 (forget)
                        + λα · mean_{t ∈ real} KL_t                                        (retain D_r)
    CodeEraser        L = − mean_{t ∈ m} ℓ_t + γ · mean_{t ∈ real∖m} ℓ_t − λ · mean_{t ∈ m} KL_t   (forget)
                        + λα · mean_{t ∈ real} KL_t                                        (retain D_r)

Paper values γ = 0.1, λ = 0.1, α = 1.0. Note the sign on the forget side: the KL on the *secret*
positions is maximised (pushed away from the reference); KL is minimised only on retain data.

Departures from the public code (Zhaoyang-Chu/code-unlearning), each a bug there:

- every mean is over real tokens only (pads excluded); the reference averages zero-loss pad positions
  into γ's term (its in-place ``target_ids`` edit), silently scaling γ by the share of real tokens;
- KL is a per-token mean on *both* branches; the reference divides by the number of secret tokens on
  the forget side but by the batch size on the retain side (a ~100× larger retain term, pads included);
- forget and retain batches are explicit arguments of the step, not told apart by ``batch_idx``
  arithmetic that only works for a forget set of exactly one batch;
- the secret mask uses strict character overlap (the reference's ``<=``/``>=`` also marks the quote);
- one forward pass of p_θ per batch (the reference runs two on forget batches).

Stopping (paper Sec. 5.1): after each epoch the forget set's mean secret MA is measured in file
context; training stops once it is below the MA of secrets the model never saw (``unseen``) and — once
MA ≤ threshold + margin — EL_10 is also below the unseen EL_10, or has not improved for ``patience``
epochs. ``max_epochs`` is only a safety cap (the manifest says which rule stopped the run).

The methods never touch the caller's model: they train a deep copy and return full weight deltas for
the targeted parameters (``lm_mlp``, ``lm_attn`` or ``lm_all``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec
from erasekit.errors import ErasekitError
from erasekit.evaluation.memorization import secret_el, secret_examples, secret_ma
from erasekit.methods.base import require
from erasekit.secrets import ForgetSample, load_forget_file, token_secret_mask

# forget_file=model: the forget set the model's data source names (the shipped code-lm: 2 secrets per kind).
FORGET_FROM_MODEL = "model"
PAPER = (
    "Chu et al., Scrub It Out! Erasing Sensitive Memorization in Code Language Models via Machine "
    "Unlearning, arXiv 2509.13755 (2025)"
)


# ---- the math (torch only) --------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_t = −log p_θ(x_t | x_<t) per position [B, T] (logits already aligned with labels)."""
    return nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL_t = Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)) per position [B, T]."""
    ref_logp = torch.log_softmax(ref_logits, dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def ga_forget_loss(ce: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Vanilla GA: − mean over real tokens of ℓ_t."""
    return -masked_mean(ce, real)


def constraint_forget_loss(
    ce: torch.Tensor, kl: torch.Tensor, real: torch.Tensor, lam: float
) -> torch.Tensor:
    """Constraint-based GA, forget side: − mean ℓ_t − λ · mean KL_t over real tokens."""
    return -masked_mean(ce, real) - lam * masked_mean(kl, real)


def codeeraser_forget_loss(
    ce: torch.Tensor, kl: torch.Tensor, real: torch.Tensor, m: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """CodeEraser, forget side: − mean_m ℓ_t + γ · mean_{real∖m} ℓ_t − λ · mean_m KL_t."""
    secret, context = real & m, real & ~m
    return -masked_mean(ce, secret) + gamma * masked_mean(ce, context) - lam * masked_mean(kl, secret)


def retain_loss(kl: torch.Tensor, real: torch.Tensor, lam: float, alpha: float) -> torch.Tensor:
    """Retain side of both constrained objectives: λα · mean KL_t over real tokens."""
    return lam * alpha * masked_mean(kl, real)


# ---- configs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradientAscentConfig:
    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default; paper (lr 3e-6, the reference README's); codelm (codeeraser only: alpha 30, tuned on the shipped code-lm)."""
    forget_file: str | None = None
    """Forget set (--forget): JSONL ({"text", optional "spans"/"secrets"}), a code file or a folder; secrets are found with detect-secrets + e-mail/IP regexes unless spans are given. "model": the forget set the model's data source names."""
    target: str = "lm_all"
    """Parameters to train: lm_all, lm_mlp, lm_attn (or joined with +)."""
    lr: float = 1e-3
    """Adam learning rate (paper: 3e-6 on 0.1-7 B models; measured on the 2.2 M-parameter code-lm: 1e-3 stops after 5 epochs, 3e-4 needs 18 and ends with a worse perplexity)."""
    max_epochs: int = 100
    """Safety cap on epochs over the forget set (paper: 100); the stop rule (MA / EL below the unseen level) ends runs earlier."""
    batch_size: int = 32
    """Forget samples per step (paper: 32 = the whole forget set)."""
    max_len: int = 256
    """Tokens per file (longer files are truncated; the paper's forget target_length is 512)."""
    ma_threshold: float | None = None
    """Stop once the forget set's mean secret MA is below this (None: the MA the model scores on unseen secrets)."""
    el_threshold: float | None = None
    """... and its EL_n is below this (None: the unseen EL_n)."""
    el_n: int = 10
    """n of EL_n (paper: 10)."""
    margin: float = 0.3
    """EL_n is computed only once MA <= ma_threshold + margin (paper: 0.3)."""
    patience: int = 5
    """Stop when MA is below threshold and EL_n has not improved for this many epochs (paper: 5)."""
    unseen_file: str | None = None
    """Secrets the model never saw (JSONL/code, like --forget) for the thresholds; None: the model's data source."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 = off)."""
    adapter_rank: int = 0
    """0: train the target's weights and save full deltas; r > 0: train rank-r LoRA-style adapters on the target's Linear layers instead (the artifact's adapters; the weights stay untouched)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {"lr": 3e-6}}

    def __post_init__(self) -> None:
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}.")
        require(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}.")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
        require(self.max_len >= 8, f"max_len must be >= 8, got {self.max_len}.")
        require(self.el_n >= 1, f"el_n must be >= 1, got {self.el_n}.")
        require(self.patience >= 1, f"patience must be >= 1, got {self.patience}.")
        require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}.")
        require(
            self.adapter_rank >= 0, f"adapter_rank must be >= 0 (0 = full deltas), got {self.adapter_rank}."
        )


@dataclass(frozen=True)
class ConstraintConfig(GradientAscentConfig):
    retain_samples: int = 32
    """Retain files used (paper: 32); they come from the model's data source (the shipped code-lm: its own training files) or --retain FILE."""
    lam: float = 0.1
    """λ: weight of the KL terms (paper: 0.1)."""
    alpha: float = 1.0
    """α: the retain KL is weighted λα (paper: 1.0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.retain_samples >= 1, f"retain_samples must be >= 1, got {self.retain_samples}.")
        require(self.lam >= 0 and self.alpha >= 0, "lam and alpha must be >= 0.")


@dataclass(frozen=True)
class CodeEraserConfig(ConstraintConfig):
    gamma: float = 0.1
    """γ: weight of the gradient-descent term on the non-secret tokens of forget files (paper: 0.1)."""

    # paper: the reference README's lr; codelm: α = 30 (retain KL weight λα = 3), measured on the shipped
    # code-lm to keep held-out perplexity within 5 % (benchmarks/README.md); γ and λ stay the paper's.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {"lr": 3e-6}, "codelm": {"alpha": 30.0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}.")


# ---- the trainer --------------------------------------------------------------------------------------
@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    secret: torch.Tensor  # [B, T] bool, on the input tokens
    ref_logits: torch.Tensor | None = None


def _forget_samples(backend: Any, config: GradientAscentConfig) -> list[ForgetSample]:
    if not config.forget_file:
        raise ErasekitError(
            "This method needs a forget set; pass --forget FILE (JSONL or code files with secrets)."
        )
    if config.forget_file == FORGET_FROM_MODEL:
        source = _source(backend)
        samples = source.forget_samples() if hasattr(source, "forget_samples") else []
        if not samples:
            raise ErasekitError(
                "This model brings no forget set; pass --forget FILE (JSONL or code files with secrets)."
            )
        return samples
    return load_forget_file(config.forget_file)


def _source(backend: Any) -> Any:
    return getattr(backend, "data_source", None)


def _retain_texts(backend: Any, config: ConstraintConfig, seed: int) -> tuple[list[str], dict]:
    source = _source(backend)
    texts = source.retain_texts(config.retain_samples, seed=seed) if hasattr(source, "retain_texts") else []
    if not texts:
        raise ErasekitError(
            "This model brings no retain data; pass --retain FILE (code files or JSONL with a text field)."
        )
    return texts, {"retain_source": source.describe(), "retain_files": len(texts)}


_THRESHOLD_CACHE: dict[tuple, tuple[float, float]] = {}


def unseen_levels(
    backend: Any, unseen: list[ForgetSample], el_n: int, max_len: int
) -> tuple[float, float, int]:
    """(mean MA, mean EL_n, secrets) of the base model on secrets it never saw; cached per model."""
    examples = secret_examples(backend, unseen, max_len=max_len)
    if not examples:
        raise ErasekitError(
            f"No unseen secret lies within max_len={max_len} tokens; raise max_len or pass thresholds."
        )
    key = (backend.fingerprint(), tuple((s.text, s.spans) for s in unseen), el_n, max_len)
    if key not in _THRESHOLD_CACHE:
        ma = sum(secret_ma(backend, examples)) / len(examples)
        el = sum(secret_el(backend, examples, el_n)) / len(examples)
        _THRESHOLD_CACHE[key] = (ma, el)
    return (*_THRESHOLD_CACHE[key], len(examples))


def _thresholds(backend: Any, config: GradientAscentConfig) -> tuple[float, float, dict]:
    if config.ma_threshold is not None and config.el_threshold is not None:
        return config.ma_threshold, config.el_threshold, {"threshold_source": "config"}
    if config.unseen_file:
        unseen, origin = (
            load_forget_file(config.unseen_file),
            {"threshold_source": "unseen_file", "unseen_file": config.unseen_file},
        )
    else:
        source = _source(backend)
        unseen = source.unseen_samples() if hasattr(source, "unseen_samples") else []
        origin = {"threshold_source": source.describe() if unseen else None}
    if not unseen:
        raise ErasekitError(
            "No unseen secrets to set the stop thresholds; pass -o unseen_file=FILE or -o ma_threshold=X -o el_threshold=Y."
        )
    ma, el, count = unseen_levels(backend, unseen, config.el_n, config.max_len)
    ma = config.ma_threshold if config.ma_threshold is not None else ma
    el = config.el_threshold if config.el_threshold is not None else el
    return (
        ma,
        el,
        {
            **origin,
            "unseen_secrets": count,
            "unseen_ma": round(ma, 4),
            f"unseen_el{config.el_n}": round(el, 4),
        },
    )


def _encode(backend: Any, texts: list[str], spans: list[tuple] | None, max_len: int) -> _Batch:
    enc = backend.encode(texts, max_len=max_len)
    secret = torch.zeros_like(enc.attention_mask, dtype=torch.bool)
    if spans is not None:
        for row, row_spans in enumerate(spans):
            mask = token_secret_mask(enc.offsets[row], row_spans)
            secret[row] = torch.tensor(mask, dtype=torch.bool) & enc.attention_mask[row].bool()
    return _Batch(enc.input_ids, enc.attention_mask, secret)


def _terms(
    backend: Any, model: nn.Module, batch: _Batch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ℓ_t, KL_t, real, m) aligned with next-token labels (position t predicts token t+1)."""
    logits = backend.logits(batch.input_ids, batch.attention_mask, model)[:, :-1]
    labels = batch.input_ids[:, 1:]
    real = batch.attention_mask[:, 1:].bool()
    m = batch.secret[:, 1:]
    ce = token_ce(logits, labels)
    kl = token_kl(batch.ref_logits, logits) if batch.ref_logits is not None else torch.zeros_like(ce)
    return ce, kl, real, m


def _attach_adapters(
    model: nn.Module, modules: dict[str, nn.Module], rank: int, seed: int
) -> dict[str, nn.Parameter]:
    """Trainable ``down`` [r, in] / ``up`` [out, r] factors on the copy's Linear layers, added to their
    outputs by forward hooks exactly as :func:`erasekit.applying.apply` adds an artifact's adapters
    (``up`` starts at zero, so the adapted copy starts equal to the reference: KL = 0)."""
    own = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    params: dict[str, nn.Parameter] = {}
    for name in modules:  # the backend's module names; the hooks go on the copy's modules
        target = own[name.removeprefix("model.")]
        weight = target.weight
        down = nn.Parameter(torch.randn(rank, target.in_features, generator=generator).to(weight) / rank)
        up = nn.Parameter(torch.zeros(target.out_features, rank, dtype=weight.dtype, device=weight.device))
        params[f"{name}/down"], params[f"{name}/up"] = down, up

        def hook(_module, args, output, down=down, up=up):
            return output + nn.functional.linear(nn.functional.linear(args[0], down), up)

        target.register_forward_hook(hook)
    return params


class _SecretUnlearning:
    """Shared loop of the three objectives; subclasses set ``objective`` and ``uses_retain``."""

    paper: ClassVar[str] = PAPER
    takes_preserve: ClassVar[bool] = False
    backend_kind: ClassVar[str] = "causal_lm"
    objective: ClassVar[str] = ""
    uses_retain: ClassVar[bool] = False
    uses_kl: ClassVar[bool] = False

    def forget_loss(self, config: Any, ce, kl, real, m) -> torch.Tensor:
        raise NotImplementedError

    def erase(
        self, backend: Any, concepts: ConceptSpec, config: Any, generator: torch.Generator | None = None
    ) -> Artifact:
        if getattr(backend, "kind", None) != "causal_lm":
            raise ErasekitError(
                f"Method {self.name} unlearns causal language models; pass --model code-lm or an HF causal-LM folder."
            )  # type: ignore[attr-defined]
        seed = (generator.initial_seed() if generator is not None else torch.initial_seed()) % (2**31)
        samples = _forget_samples(backend, config)
        ma_thr, el_thr, threshold_info = _thresholds(backend, config)
        retain_info: dict = {"retain_source": None}
        retain_texts: list[str] = []
        if self.uses_retain:
            retain_texts, retain_info = _retain_texts(backend, config, seed)
        model, inner, adapters = _trainable_copy(backend, config, seed)
        originals = {name: p.detach().clone() for name, p in inner.items()}
        model.train()
        forget_batches, retain_batches = self._batches(backend, samples, retain_texts, config)
        examples = secret_examples(backend, samples, max_len=config.max_len)
        loop = _UnlearningLoop(self, backend, model, config, examples, forget_batches, retain_batches)
        curve, stop_reason = loop.run(inner, ma_thr, el_thr)
        artifact = Artifact(method=self.name)  # type: ignore[attr-defined]
        with torch.no_grad():
            if adapters:
                for name, (down, up) in adapters.items():
                    artifact.add_adapter(name, down.detach().clone(), up.detach().clone(), scale=1.0)
            else:
                for name, p in inner.items():
                    artifact.add_weight(name, p.detach() - originals[name], mode="delta")
        artifact.manifest["unlearning"] = {
            "objective": self.objective,
            "forget_samples": len(samples),
            "forget_secrets": len(examples),
            "forget_file": config.forget_file,
            **retain_info,
            "ma_threshold": round(ma_thr, 4),
            f"el{config.el_n}_threshold": round(el_thr, 4),
            **threshold_info,
            "epochs": curve[-1]["epoch"],
            "stop_reason": stop_reason,
            "curve": curve,
            "tokenizer_fingerprint": backend.tokenizer_fingerprint(),
        }
        return artifact

    def _batches(
        self, backend: Any, samples: list[ForgetSample], retain_texts: list[str], config: Any
    ) -> tuple[list[_Batch], list[_Batch]]:
        """The fixed forget and retain batches, with p_ref's logits when the objective has a KL term."""
        size = config.batch_size
        forget_batches = [
            _encode(backend, [s.text for s in chunk], [list(s.spans) for s in chunk], config.max_len)
            for chunk in (samples[i : i + size] for i in range(0, len(samples), size))
        ]
        retain_batches = [
            _encode(backend, retain_texts[i : i + size], None, config.max_len)
            for i in range(0, len(retain_texts), size)
        ]
        if self.uses_kl:  # p_ref is frozen and the batches fixed: its logits are computed once
            with torch.no_grad():
                for b in forget_batches + retain_batches:
                    b.ref_logits = backend.logits(b.input_ids, b.attention_mask)[:, :-1]
        if not any(bool((b.secret & b.attention_mask.bool()).any()) for b in forget_batches):
            raise ErasekitError(
                f"No secret token of {config.forget_file} lies within max_len={config.max_len} tokens; raise max_len."
            )
        return forget_batches, retain_batches


def _trainable_copy(
    backend: Any, config: Any, seed: int
) -> tuple[nn.Module, dict[str, nn.Parameter], dict[str, tuple[nn.Parameter, nn.Parameter]]]:
    """A copy of the model with only the trained tensors requiring grad: ``(copy, trained, adapters)``.

    ``trained`` maps qualified names to the copy's own parameters (full fine-tuning) or to new LoRA
    factors ``NAME/down`` and ``NAME/up`` (``adapter_rank`` > 0; then ``adapters`` pairs them by module).
    """
    model = backend.trainable_copy()
    for p in model.parameters():
        p.requires_grad_(False)
    if config.adapter_rank:
        modules = backend.modules_for(config.target)
        inner = _attach_adapters(model, modules, config.adapter_rank, seed)
        return model, inner, {name: (inner[f"{name}/down"], inner[f"{name}/up"]) for name in modules}
    own = dict(model.named_parameters())
    inner = {name: own[name.removeprefix("model.")] for name in backend.parameters_for(config.target)}
    for p in inner.values():
        p.requires_grad_(True)
    return model, inner, {}


@dataclass
class _UnlearningLoop:
    """Epochs of forget (+ retain) steps on the copy, with the paper's stopping rule checked after each."""

    method: _SecretUnlearning
    backend: Any
    model: nn.Module
    config: Any
    examples: list
    forget_batches: list[_Batch]
    retain_batches: list[_Batch]

    def epoch(self, epoch: int, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> float:
        """One pass over the forget batches (each paired with the next retain batch); the mean loss."""
        config, backend, model = self.config, self.backend, self.model
        model.train()
        losses = []
        for index, forget in enumerate(self.forget_batches):
            ce, kl, real, m = _terms(backend, model, forget)
            loss = self.method.forget_loss(config, ce, kl, real, m)
            if self.retain_batches:
                which = (epoch * len(self.forget_batches) + index) % len(self.retain_batches)
                _, r_kl, r_real, _ = _terms(backend, model, self.retain_batches[which])
                loss = loss + retain_loss(r_kl, r_real, config.lam, config.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        return sum(losses) / len(losses)

    def run(self, inner: dict[str, nn.Parameter], ma_thr: float, el_thr: float) -> tuple[list[dict], str]:
        """Train until MA and EL are below the unseen levels (or MA is, and EL stalled); the curve and why."""
        config, backend, examples = self.config, self.backend, self.examples
        params = list(inner.values())
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.98))
        best_el, stale = math.inf, 0
        curve = [{"epoch": 0, "forget_ma": round(sum(secret_ma(backend, examples)) / len(examples), 4)}]
        for epoch in range(1, config.max_epochs + 1):
            loss = self.epoch(epoch, params, optimizer)
            ma = sum(secret_ma(backend, examples, self.model)) / len(examples)
            point = {"epoch": epoch, "loss": round(loss, 4), "forget_ma": round(ma, 4)}
            curve.append(point)
            if ma > ma_thr + config.margin:
                continue
            el = sum(secret_el(backend, examples, config.el_n, self.model)) / len(examples)
            point[f"forget_el{config.el_n}"] = round(el, 4)
            if el < best_el - 1e-9:
                best_el, stale = el, 0
            else:
                stale += 1
            if ma < ma_thr and el < el_thr:
                return curve, "ma_and_el_below_unseen"
            if ma < ma_thr and stale >= config.patience:
                return curve, f"ma_below_unseen_el_stalled_{config.patience}_epochs"
        return curve, "max_epochs"


# Seconds-scale settings for the conformance suite (the model's own forget set, two epochs, no stop).
_SMOKE = ("forget_file=model", "max_epochs=2", "ma_threshold=0.0", "el_threshold=0.0")


class GradientAscent(_SecretUnlearning):
    """Vanilla unlearning: gradient ascent on every token of the forget files."""

    name: ClassVar[str] = "ga"
    config_cls: ClassVar[type] = GradientAscentConfig
    objective: ClassVar[str] = "-mean CE(all real tokens)"
    smoke_overrides: ClassVar[tuple[str, ...]] = _SMOKE

    def forget_loss(self, config, ce, kl, real, m):
        return ga_forget_loss(ce, real)


class ConstraintGA(_SecretUnlearning):
    """Constraint-based unlearning: GA and −λ·KL on forget files, +λα·KL to the original on retain files."""

    name: ClassVar[str] = "ga_kl"
    config_cls: ClassVar[type] = ConstraintConfig
    objective: ClassVar[str] = "-mean CE(all) - lam*mean KL(all) | +lam*alpha*mean KL(retain)"
    uses_retain: ClassVar[bool] = True
    uses_kl: ClassVar[bool] = True
    smoke_overrides: ClassVar[tuple[str, ...]] = (*_SMOKE, "retain_samples=4")

    def forget_loss(self, config, ce, kl, real, m):
        return constraint_forget_loss(ce, kl, real, config.lam)


class CodeEraser(_SecretUnlearning):
    """CodeEraser: GA on secret tokens, GD (γ) on their context, KL constraints (λ, α)."""

    name: ClassVar[str] = "codeeraser"
    config_cls: ClassVar[type] = CodeEraserConfig
    objective: ClassVar[str] = "-mean CE(m) + gamma*mean CE(~m) - lam*mean KL(m) | +lam*alpha*mean KL(retain)"
    uses_retain: ClassVar[bool] = True
    uses_kl: ClassVar[bool] = True
    smoke_overrides: ClassVar[tuple[str, ...]] = (*_SMOKE, "retain_samples=4")

    def forget_loss(self, config, ce, kl, real, m):
        return codeeraser_forget_loss(ce, kl, real, m, config.gamma, config.lam)
