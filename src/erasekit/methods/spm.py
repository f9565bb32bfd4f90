"""SPM — one-dimensional adapters ("concept-semi-permeable membranes") for concept erasure.

Lyu et al., *One-Dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing
Applications*, CVPR 2024 (arXiv 2312.16145). Public code: github.com/Con6924/SPM.

What is implemented (symbols as in the paper):

* **Membrane** (Sec. 3.1). Every Linear/Conv ``W`` inside the UNet's transformer blocks gets a rank-r
  adapter: ``W x + (α/r) · γ · U D x`` with ``D`` [r, in] and ``U`` [out, r]; r = 1 is the paper's
  one-dimensional adapter. ``U`` starts at zero, so training starts from the base model.
* **Erasing loss** (eq. 4, the ESD target). At a latent x_t reached by running a short DDIM trajectory
  (``ddim_steps`` steps, stopped at a random step k, CFG with the target prompt, membrane on, as the
  public code does) and t the DDIM timestep that follows, the adapted model on the target prompt c
  must output  ``ε*(x_t, c) = ε(x_t, c_n) − η (ε(x_t, c) − ε(x_t, c_n))`` where ε is the *original*
  model (membrane off) and c_n the neutral prompt: the anchor in the concept's place — the user's,
  else the model's data source's default (``run_method``; ShapesWorld: the next concept of its kind)
  — and with no anchor at all (``--no-default-anchor``, or a source without one) the same prompt
  with the concept word left out (``neutral="remove"``; on the bare concept word, the public code's
  "" — see :func:`neutral_prompts` for why templates need it). On the shipped ShapesWorld model the
  concept-free prompt is no neutral target for some concepts (held-out grid): white and cyan stayed
  (UA 0.00; with the default anchors cyan and red 1.00) and square's synonyms survived (synonym UA
  0.08; with the anchor 1.00).
* **Latent anchoring** (eq. 6–7). Random directions ``v`` in the flattened text-embedding space,
  rescaled to ``‖c‖ · U(0.8, 1.2)``, are accepted with probability ``1 − cos(v, c)``; the adapted
  model must reproduce the original on them: ``λ ‖ε_adapted(x_t, v) − ε(x_t, v)‖²`` (λ = 1000,
  4 anchors a step). All anchors are used (the public code lays the anchor batch out so that the
  CFG split drops half of them). Added (``preserve_anchors``, 4 by default; 0 = the paper): also anchor
  on the spec's preserve concepts in its templates — real prompts near the target that random
  directions in a 10⁴-dimensional space never come close to.
* **Facilitated transport** (Sec. 3.3, eq. 8). At inference every adapter is scaled by
  ``γ = max(cos(flat(e_p), flat(e_c)), |T(p) ∩ T(c)| / |T(c)|)`` per prompt p, with e the text
  encoder's output and T the set of non-special token ids; ``γ`` multiplies the adapter output once
  (the public code scales both factors, which is γ²). γ is per batch row, so CFG's unconditional row
  gets its own γ; the public code applies the conditional prompt's γ to both. The cosine part is far
  from 0 for unrelated prompts: on the shipped ShapesWorld model cos(e_p, e_"red") is 0.53–0.58 for
  four-word captions without red and 0.88 for the empty prompt (padding positions dominate the
  flattened sequence), so every prompt gets about half the membrane; the anchoring is what keeps
  other concepts intact, not the gate (with the token part alone, IRA stays 1.0 but synonyms, which
  share no token, pass: synonym UA 0). Giving the unconditional row γ = 0 or the conditional row's γ
  changed none of UA / synonym UA / IRA on ShapesWorld (red). ``gate=reference`` reproduces the
  public code's gate (γ², the prompt's γ on CFG's unconditional rows too; the ``paper`` preset uses
  it). Measured on the shipped ShapesWorld model with the same trained membranes (the gate acts only
  at inference), default protocol: star synonym UA 1.00 (facilitated) vs 0.38 (reference), striped
  1.00 vs 0.25, red 1.00 vs 1.00 — UA 1.00 and CRA 1.00 everywhere; red IRA 0.93 vs 1.00 and FID
  184 vs 131 (base 121): γ² shrinks the membrane on synonyms (cos part < 1) more than on the concept,
  and the unconditional row's own γ (0.88) costs red a little IRA. ``facilitated`` stays the default
  for its synonym coverage (numbers and commands: ``benchmarks/parity/README.md``). See
  :class:`SPMGate` for how the gate finds a prompt's tokens when all the UNet sees is its embedding.

Teacher and student share one UNet: the membrane is a set of toggleable forward hooks, switched off
for the teacher passes. The backend's weights are never written.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from erasekit.artifacts import Artifact, InferenceHook, register_hook_kind
from erasekit.concepts import ConceptSpec, fix_articles
from erasekit.methods.base import require

# ---- config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SPMConfig:
    """Hyper-parameters of SPM (defaults tuned on ShapesWorld; public values noted in the help)."""

    preset: str = "default"
    """Named defaults applied under your explicit settings (-o preset=NAME): default, or another name listed by `erasekit methods` (paper: the paper's / reference code's values; shapesworld: tuned on the shipped ShapesWorld model)."""
    rank: int = 1
    """Adapter rank r (the paper's one-dimensional membrane is r = 1)."""
    alpha: float = 1.0
    """Adapter scale numerator: the adapter output is multiplied by alpha / rank (public: 1)."""
    target: str = "unet_transformer"
    """Backend target whose Linear/Conv layers get membranes (public: every layer of the transformer blocks)."""
    iterations: int = 150
    """Optimizer steps (public: 3000 on SD 1.4; 150 suffice on ShapesWorld)."""
    lr: float = 1e-2
    """Adam learning rate of the membrane factors (public: 1e-4 on SD 1.4; 1e-3 left ShapesWorld stars intact)."""
    eta: float = 2.0
    """η: strength of the negative guidance in the ESD target (public guidance_scale 1; 2 reached synonyms on ShapesWorld)."""
    ddim_steps: int = 10
    """Length of the DDIM trajectory whose intermediate latents are the training inputs (public: 30)."""
    trajectory_guidance: float = 3.0
    """CFG scale of the trajectory that produces the training latents (public: 3)."""
    anchors_per_step: int = 4
    """Latent-anchoring samples per step (public: 4)."""
    anchor_weight: float = 50.0
    """λ: weight of the latent-anchoring loss (public: 1000; on ShapesWorld 100 left "blue" fully in place, 30 cost IRA, 50 erased all six benchmark concepts)."""
    preserve_anchors: int = 4
    """Extra anchors per step drawn from the spec's preserve concepts in its templates (0 = paper: random only; on ShapesWorld with anchor weight 100, 2 let red's IRA fall to 0.86 and 4 kept 0.93)."""
    use_templates: bool = True
    """Train on the concept placed in the spec's templates (True) or on the bare concept word (public)."""
    neutral: Literal["remove", "empty"] = "remove"
    """c_n of the ESD target when the concept has no anchor: its prompt with the concept word left out (remove; on the bare word that is the paper's "") or the empty prompt (empty)."""
    gate: Literal["facilitated", "reference", "always"] = "facilitated"
    """Inference gate: facilitated (transport γ of eq. 8 per batch row, multiplying the adapter output once), reference (as the public infer_spm.py: both factors scaled by γ, so γ², and CFG's unconditional row gated with its prompt's γ), or always (γ = 1). facilitated is the default: on ShapesWorld it kept synonym UA 1.00 where reference fell to 0.25–0.38 (benchmarks/parity/README.md)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""

    def __post_init__(self) -> None:
        require(self.rank >= 1, "rank must be at least 1; try rank=1.")
        require(self.iterations >= 1, "iterations must be at least 1.")
        require(self.lr > 0, "lr must be positive; try lr=1e-3.")
        require(self.ddim_steps >= 2, "ddim_steps must be at least 2 (the trajectory stops part-way).")
        require(
            self.anchors_per_step >= 0, "anchors_per_step cannot be negative; use 0 to disable anchoring."
        )
        require(self.anchor_weight >= 0, "anchor_weight cannot be negative.")
        require(self.preserve_anchors >= 0, "preserve_anchors cannot be negative; use 0 to disable.")

    # Named presets (-o preset=NAME), applied under explicit settings. paper: the public code's
    # training values (configs/*/config.yaml, src/configs/prompt.py defaults) and its inference gate;
    # 3000 iterations take hours on a CPU. shapesworld: the values tuned on the shipped model (= the
    # defaults).
    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "paper": {
            "rank": 1,
            "alpha": 1.0,
            "iterations": 3000,
            "lr": 1e-4,
            "eta": 1.0,
            "ddim_steps": 30,
            "trajectory_guidance": 3.0,
            "anchors_per_step": 4,
            "anchor_weight": 1000.0,
            "preserve_anchors": 0,
            "use_templates": False,
            "neutral": "empty",
            "gate": "reference",
        },
        "shapesworld": {
            "iterations": 150,
            "lr": 1e-2,
            "eta": 2.0,
            "ddim_steps": 10,
            "anchor_weight": 50.0,
            "preserve_anchors": 4,
            "use_templates": True,
            "neutral": "remove",
            "gate": "facilitated",
        },
    }


# ---- the membrane during training -----------------------------------------------------------------


class Membranes:
    """Rank-r adapters on a set of Linear/Conv modules, as toggleable forward hooks.

    The arithmetic is the same as the artifact's adapter (``erasekit.artifacts._AdapterHook``) so that
    what is trained is exactly what is applied. ``enabled`` False makes every hook a no-op (teacher).
    """

    def __init__(self, modules: dict[str, nn.Module], rank: int, scale: float, generator: torch.Generator):
        self.scale, self.enabled = scale, False
        self.down: dict[str, nn.Parameter] = {}
        self.up: dict[str, nn.Parameter] = {}
        self.handles = []
        for name, module in modules.items():
            weight = module.weight
            if isinstance(module, nn.Conv2d):
                down_shape = (rank, module.in_channels // module.groups, *module.kernel_size)
                up_shape = (module.out_channels, rank, 1, 1)
            else:
                down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
            fan_in = math.prod(down_shape[1:])
            # LoRA initialisation: D ~ U(±1/sqrt(fan_in)) (kaiming-uniform, a = sqrt(5)), U = 0.
            bound = 1.0 / math.sqrt(fan_in)
            down = (torch.rand(down_shape, generator=generator) * 2 - 1) * bound
            self.down[name] = nn.Parameter(down.to(weight.device, weight.dtype))
            self.up[name] = nn.Parameter(torch.zeros(up_shape, device=weight.device, dtype=weight.dtype))
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def parameters(self) -> list[nn.Parameter]:
        return [p for name in self.down for p in (self.down[name], self.up[name])]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None
            return output + self.scale * adapter_delta(module, args[0], self.down[name], self.up[name])

        return hook

    def on(self) -> _Toggle:
        return _Toggle(self, True)

    def off(self) -> _Toggle:
        return _Toggle(self, False)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class _Toggle:
    def __init__(self, membranes: Membranes, state: bool):
        self.membranes, self.state = membranes, state

    def __enter__(self) -> None:
        self.previous, self.membranes.enabled = self.membranes.enabled, self.state

    def __exit__(self, *exc: object) -> None:
        self.membranes.enabled = self.previous


def adapter_delta(module: nn.Module, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``U D x`` for a Linear or Conv2d module (down [r, in(, k, k)], up [out, r(, 1, 1)])."""
    if isinstance(module, nn.Conv2d):
        hidden = nn.functional.conv2d(
            x, down, stride=module.stride, padding=module.padding, dilation=module.dilation
        )
        return nn.functional.conv2d(hidden, up)
    return nn.functional.linear(nn.functional.linear(x, down), up)


# ---- the math ---------------------------------------------------------------------------------------


def esd_target(eps_positive: torch.Tensor, eps_neutral: torch.Tensor, eta: float) -> torch.Tensor:
    """ε* = ε(x, c_n) − η (ε(x, c) − ε(x, c_n))  (SPM eq. 4; weights sum to 1, so valid for v too)."""
    return eps_neutral - eta * (eps_positive - eps_neutral)


def neutral_prompts(templates: list[str], anchor: str | None, mode: str) -> list[str]:
    """c_n per template: the anchor in its place, else the template without the concept (or "").

    "a {} square on a striped background" erased towards "" would ask the membrane to remove the
    square and the stripes too, which the preserve anchors on "a cyan square on a striped background"
    forbid; on ShapesWorld that conflict left "blue" fully in place (UA 0.0). Leaving only the concept
    out ("a square on a striped background") asks for the concept alone.
    """
    if anchor:
        return [fix_articles(t.format(anchor)) for t in templates]
    if mode == "empty":
        return [""] * len(templates)
    return [fix_articles(" ".join(t.format("").split())) for t in templates]


def sample_anchors(target: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Latent-anchoring embeddings (SPM eq. 6): n random directions in the flattened embedding space.

    Each direction v is accepted with probability 1 − cos(v, c) and rescaled to ‖c‖ · U(0.8, 1.2),
    where c is the target embedding [L, D]. Returns [n, L, D].
    """
    flat = target.reshape(-1)
    norm = flat.norm()
    anchors = []
    while len(anchors) < n:
        v = torch.randn(flat.shape, generator=generator, dtype=flat.dtype).to(flat.device)
        v = v / v.norm()
        cos = torch.dot(v, flat) / norm
        if float(torch.rand((), generator=generator)) < 1 - float(cos):
            scale = 0.8 + 0.4 * float(torch.rand((), generator=generator))
            anchors.append(v * norm * scale)
    return torch.stack(anchors).reshape(n, *target.shape)


def transport_gamma(
    prompt_embeddings: torch.Tensor,
    target_embeddings: torch.Tensor,
    token_share: torch.Tensor | None = None,
) -> torch.Tensor:
    """Facilitated transport γ (SPM eq. 8), one value per prompt.

    Args:
        prompt_embeddings: [B, L, D] text-encoder outputs the UNet is conditioned on.
        target_embeddings: [T, L, D] outputs for the erased concept(s).
        token_share: [B, T] share of each target's tokens present in each prompt (None = unknown: 0).

    Returns:
        [B] γ = max over targets of max(cos, token share), clamped to [0, 1].
    """
    p = prompt_embeddings.reshape(prompt_embeddings.shape[0], -1).float()
    c = target_embeddings.reshape(target_embeddings.shape[0], -1).to(p.device, torch.float32)
    cos = nn.functional.normalize(p, dim=-1) @ nn.functional.normalize(c, dim=-1).T  # [B, T]
    score = cos if token_share is None else torch.maximum(cos, token_share.to(cos))
    return score.max(dim=1).values.clamp(0.0, 1.0)


def reference_gamma(gamma: torch.Tensor, unconditional: list[bool]) -> torch.Tensor:
    """The public code's gate from per-row γ: its square, with CFG's unconditional rows given their prompt's γ.

    The public ``infer_spm.py`` multiplies both membrane factors by the prompt's γ (so the adapter
    output by γ²) and keeps that network for the whole pipeline call, so the unconditional half of
    the CFG batch is gated with the prompt's γ too. Here a batch of 2n rows whose first n rows are
    all unconditional (the CFG layout of diffusers and erasekit: [uncond; cond]) gives row i < n
    the γ of row i + n; any other batch keeps each row's own γ.

    Args:
        gamma: [B] γ per row (eq. 8).
        unconditional: [B] whether each row is the empty prompt (no non-special token).

    Returns:
        [B] the multiplier of the adapter output.
    """
    gamma = gamma.clone()
    half = gamma.shape[0] // 2
    if gamma.shape[0] == 2 * half and half and all(unconditional[:half]) and not all(unconditional):
        gamma[:half] = gamma[half:]
    return gamma * gamma


def token_share(prompt_ids: list[set[int]], target_ids: list[set[int]]) -> torch.Tensor:
    """[B, T] share |T(p) ∩ T(c)| / |T(c)| of each target's token set present in each prompt."""
    return torch.tensor(
        [[len(p & c) / max(len(c), 1) for c in target_ids] for p in prompt_ids], dtype=torch.float32
    )


# ---- the inference gate -------------------------------------------------------------------------------


@register_hook_kind("spm_gate")
class SPMGate(InferenceHook):
    """Facilitated transport: sets ``gamma`` [B] before every UNet call, one value per batch row.

    Attached at the UNet (``target`` = "unet"). Two hooks:

    * a forward hook on the pipeline's ``text_encoder`` (found in ``modules``) records, for each
      prompt it encodes, its output rows and its token ids (the last few calls are kept);
    * a forward pre-hook on the UNet reads ``encoder_hidden_states`` and computes γ per row: the cosine
      part from the embedding itself; the token part by finding the row among the recorded text-encoder
      outputs (exact equality; this is how both diffusers' pipeline and erasekit's backend build the
      UNet batch, CFG's unconditional rows included). A row that was not produced by a recorded call
      (e.g. ``prompt_embeds`` passed by the caller, or a CLIP-skip layer) gets the cosine part only.

    Tensors: ``target_embeddings`` [T, L, D], ``target_token_ids`` [T, L] (special ids listed in
    config ``special_token_ids`` are ignored). Config ``mode``: "facilitated" (γ per row), "reference"
    (:func:`reference_gamma`: the public code's γ² with the unconditional rows given their prompt's γ)
    or "always" (γ = 1).
    """

    _KEEP_CALLS = 8

    def attach(self) -> list:
        self.gamma = torch.ones(1)
        self._recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        special = set(self.config.get("special_token_ids", []))
        self._target_tokens = [
            set(row.tolist()) - special for row in self.tensors["target_token_ids"].to(torch.int64)
        ]
        self._special = special
        handles = [self.module.register_forward_pre_hook(self._before_unet, with_kwargs=True)]
        text_encoder = self.modules.get("text_encoder")
        if text_encoder is not None:
            handles.append(text_encoder.register_forward_hook(self._record, with_kwargs=True))
        return handles

    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        hidden = (
            output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", None)
        )
        if ids is None or hidden is None or ids.shape[0] != hidden.shape[0]:
            return
        self._recorded.append((hidden.detach(), ids.detach().to("cpu")))
        del self._recorded[: -self._KEEP_CALLS]

    def _prompt_tokens(self, states: torch.Tensor) -> tuple[list[set[int]], list[bool]]:
        """Per row: its prompt's non-special token ids and whether the row was found in a recorded call."""
        tokens: list[set[int]] = [set() for _ in range(states.shape[0])]
        found = [False] * states.shape[0]
        for hidden, ids in reversed(self._recorded):
            if hidden.shape[1:] != states.shape[1:]:
                continue
            same = (states[:, None] == hidden[None].to(states)).flatten(2).all(-1)  # [B, n]
            for row, col in zip(*torch.nonzero(same, as_tuple=True)):
                if not found[row]:
                    tokens[row] = set(ids[col].tolist()) - self._special
                    found[row] = True
        return tokens, found

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if states is None:
            raise RuntimeError("SPM gate: the UNet was called without encoder_hidden_states")
        if self.config.get("mode", "facilitated") == "always":
            self.gamma = torch.ones(states.shape[0], device=states.device)
            return
        with torch.no_grad():
            tokens, found = self._prompt_tokens(states)
            share = token_share(tokens, self._target_tokens)
            gamma = transport_gamma(states, self.tensors["target_embeddings"], share)
            if self.config.get("mode") == "reference":
                gamma = reference_gamma(gamma, [f and not t for t, f in zip(tokens, found)])
            self.gamma = gamma.to(states.device)


# ---- the method -------------------------------------------------------------------------------------


class SPM:
    """SPM (Lyu et al., CVPR 2024): rank-1 membranes trained with the ESD target + latent anchoring."""

    name: ClassVar[str] = "spm"
    paper: ClassVar[str] = (
        "Lyu et al., One-Dimensional Adapter to Rule Them All, CVPR 2024 (arXiv 2312.16145)"
    )
    config_cls: ClassVar[type] = SPMConfig
    takes_anchor: ClassVar[bool] = True  # c_n: a concept without an anchor gets the data source's default
    smoke_overrides: ClassVar[tuple[str, ...]] = ("iterations=2", "ddim_steps=3", "anchors_per_step=2")

    def erase(
        self, backend, concepts: ConceptSpec, config: SPMConfig, *, generator: torch.Generator | None = None
    ) -> Artifact:
        seed = int(generator.initial_seed() if generator is not None else torch.initial_seed()) % (2**31)
        generator = torch.Generator().manual_seed(seed)
        chooser = random.Random(seed)
        modules = backend.modules_for(config.target)
        scale = config.alpha / config.rank
        data = _encode_spec(backend, concepts, config)
        membranes = Membranes(modules, config.rank, scale, generator)
        optimizer = torch.optim.Adam(membranes.parameters(), lr=config.lr)
        losses = []
        try:
            for _step in range(config.iterations):
                loss = _latent_anchoring_loss(backend, config, data, membranes, chooser, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(membranes.parameters(), config.max_grad_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
        finally:
            membranes.remove()

        artifact = Artifact(method=self.name)
        for name in modules:
            artifact.add_adapter(name, membranes.down[name], membranes.up[name], scale)
        tokenizer = getattr(backend, "tokenizer", None)
        gate_ids = data.gate_ids
        special = sorted(
            {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None}
            | {int(gate_ids[0, 0]), int(gate_ids[0, -1])}
        )
        artifact.add_hook(
            "spm_gate",
            backend.denoiser_name,
            {"target_embeddings": data.gate_embeddings, "target_token_ids": gate_ids.to(torch.int64)},
            {"mode": config.gate, "special_token_ids": special, "concepts": concepts.erase_texts},
            gate=True,
        )
        tail = losses[-min(20, len(losses)) :]
        artifact.manifest["training"] = {"final_loss": sum(tail) / len(tail), "first_loss": losses[0]}
        return artifact


@dataclass(frozen=True)
class _Encoded:
    """The spec's prompts as the model reads them, encoded once before training."""

    uncond: torch.Tensor
    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # per target: (prompts [P, L, D], neutrals [P, L, D])
    preserved: torch.Tensor | None  # the preserve concepts' prompts (latent anchors), or None
    gate_embeddings: torch.Tensor  # what the denoiser reads as context (SDXL/SD3/FLUX: no pooled part)
    gate_ids: torch.Tensor


@torch.no_grad()
def _encode_spec(backend, concepts: ConceptSpec, config: SPMConfig) -> _Encoded:
    pairs = []
    uncond = backend.encode_prompts([""])
    for target in concepts.targets:
        templates = list(concepts.templates) if config.use_templates else ["{}"]
        prompts = [t.format(target.text) for t in templates]
        neutrals = neutral_prompts(templates, target.anchor, config.neutral)
        pairs.append((backend.encode_prompts(prompts), backend.encode_prompts(neutrals)))
    preserve_texts = [p for c in concepts.preserve for p in concepts.prompts(c)]
    preserved = backend.encode_prompts(preserve_texts) if preserve_texts and config.preserve_anchors else None
    gate_embeddings = backend.denoiser_context(backend.encode_prompts(concepts.erase_texts))
    return _Encoded(uncond, pairs, preserved, gate_embeddings, backend.token_ids(concepts.erase_texts))


def _latent_anchoring_loss(
    backend, config: SPMConfig, data: _Encoded, membranes: Membranes, chooser, generator
) -> torch.Tensor:
    """One step's loss: the ESD target of a prompt at a random trajectory state x_t (sampled with the
    membrane on), plus latent anchoring: anchor prompts' noise predictions held to the original's."""
    prompts, neutrals = data.pairs[chooser.randrange(len(data.pairs))]
    i = chooser.randrange(prompts.shape[0])
    cond, neutral = prompts[i : i + 1], neutrals[i : i + 1]
    stop = chooser.randrange(1, config.ddim_steps)
    noise = torch.randn((1, *backend.latent_shape()), generator=generator).to(backend.device, backend.dtype)
    with torch.no_grad(), membranes.on():
        x_t = backend.denoise(
            noise, cond, data.uncond, steps=config.ddim_steps, guidance=config.trajectory_guidance, stop=stop
        )
    t = backend.sampling_timesteps(config.ddim_steps)[stop]
    anchors = (
        sample_anchors(cond[0], config.anchors_per_step, generator) if config.anchors_per_step else cond[:0]
    )
    if data.preserved is not None:
        picks = [chooser.randrange(data.preserved.shape[0]) for _ in range(config.preserve_anchors)]
        anchors = torch.cat([anchors, data.preserved[picks]])
    n_anchor = anchors.shape[0]
    with torch.no_grad(), membranes.off():
        teacher = backend.predict_noise(
            x_t.repeat(2 + n_anchor, 1, 1, 1), t, torch.cat([cond, neutral, anchors])
        )
    eps_positive, eps_neutral, eps_anchor_original = teacher[:1], teacher[1:2], teacher[2:]
    with membranes.on():
        student = backend.predict_noise(x_t.repeat(1 + n_anchor, 1, 1, 1), t, torch.cat([cond, anchors]))
    loss = nn.functional.mse_loss(student[:1], esd_target(eps_positive, eps_neutral, config.eta))
    if n_anchor:
        loss = loss + config.anchor_weight * nn.functional.mse_loss(student[1:], eps_anchor_original)
    return loss
