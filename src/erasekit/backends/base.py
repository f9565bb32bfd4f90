"""The method-facing surface every backend provides.

Methods import this protocol, never diffusers or transformers. A backend wraps one loaded model and
exposes *components* (named ``torch.nn.Module`` roots such as ``unet`` and ``text_encoder``), prompt
encoding, one denoiser call, an explicit seeded sampling loop, and **named targets**: a target such as
``"cross_attn_kv"`` resolves to the backend's own parameters or modules, so no method ever
string-matches layer names.

Parameter and module names are always *qualified*: ``"<component>.<name inside the component>"``,
e.g. ``"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"``. Artifacts store
edits under these names, which is what lets one artifact apply to our backend or to a stock
diffusers pipeline alike (both expose the same components).

Conditioning that is more than one tensor (SDXL's pooled ``text_embeds``; SD3/FLUX's pooled CLIP
vector beside the T5 stream) travels *packed* in the one tensor ``encode_prompts`` returns: [B, L + r, D],
the denoiser's context in the first L positions and the pooled vector, zero-padded to D, in the last r
(:mod:`erasekit.backends.families`). Methods then cat, index, repeat and subtract conditionings as
plain tensors; only the backend's ``predict_noise`` unpacks them. ``denoiser_context(cond)`` gives the
part the denoiser reads as ``encoder_hidden_states`` (what an inference hook sees), and
``text_linear_inputs(prompts, target)`` what each closed-form-editable Linear layer of ``target``
reads for these prompts (UCE). SD 1.x/2.x has no pooled part: its conditioning is the context itself.

Backends behind the same surface: SD 1.x/2.x (:mod:`~erasekit.backends.sd`), SDXL
(:mod:`~erasekit.backends.sdxl`), SD3/SD3.5 and FLUX (:mod:`~erasekit.backends.flow`), an
autoregressive image-token model (EAR: ``predict`` gives next-token logits) and Hugging Face causal
LMs (CodeEraser: ``model`` component, ``lm_mlp``/``lm_attn`` targets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from erasekit.errors import ErasekitError


@dataclass
class LinearInputs:
    """What some Linear layers read for a batch of prompts: one *stream* of a closed-form edit (UCE).

    ``inputs`` [B, L, d] are the rows the layers multiply for each prompt and position. ``token_ids``
    [B, L] are the CLIP-style ids at those positions (start token first, then the words, the end
    token, padding) when the stream is one tokenizer's positions, else None (a pooled vector: L = 1;
    or a stream mixing encoders, such as SD3's CLIP|T5 context). ``weights`` maps each qualified
    weight name to the column range ``(start, stop)`` that reads these inputs (None: all columns).
    A bias is never part of the edit: the layer computes W x + b, and UCE's targets are W_old a.
    """

    inputs: torch.Tensor
    token_ids: torch.Tensor | None
    weights: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    name: str = "context"


@runtime_checkable
class DiffusionBackend(Protocol):
    """What a method may use of a text-to-image diffusion model."""

    kind: str
    components: dict[str, nn.Module]
    prediction_type: str  # "epsilon", "v_prediction" or "flow" (velocity ε − x_0 of rectified flow)
    denoiser_name: str  # the denoiser component: "unet" or "transformer"
    closed_form_target: str  # the text-reading Linear layers a closed-form edit (UCE) changes
    num_train_timesteps: int

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...
    def token_ids(self, prompts: list[str]) -> torch.Tensor: ...
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...
    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]: ...
    def modules_for(self, target: str | Iterable[str]) -> dict[str, nn.Module]: ...
    def fingerprint(self) -> str: ...
    def denoiser_context(self, cond: torch.Tensor) -> torch.Tensor: ...
    def text_linear_inputs(self, prompts: list[str], target: str) -> list[LinearInputs]: ...


class ComponentSurface:
    """The part of the surface every backend derives from its ``components`` alone: qualified
    parameter/module names, the adapter modules a target selects, the weight fingerprint.

    A backend sets ``components`` and implements ``parameters_for``; ``adapter_types`` are the module
    types ``modules_for`` returns (SPM-style adapters wrap these).
    """

    components: dict[str, nn.Module]
    adapter_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)

    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        raise NotImplementedError

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return named_parameters_of(self.components)

    def named_modules(self) -> dict[str, nn.Module]:
        return named_modules_of(self.components)

    def modules_for(
        self, target: str | Iterable[str], types: tuple[type, ...] | None = None
    ) -> dict[str, nn.Module]:
        """Modules of ``types`` (default ``adapter_types``) whose weight a target selects."""
        return modules_for_target(
            self.parameters_for(target), self.named_modules(), target, types or self.adapter_types
        )

    def fingerprint(self) -> str:
        return fingerprint_components(self.components)


class DiffusionSurface(ComponentSurface):
    """What every diffusion backend builds from its own calls: ``sample``, prompts → images through
    ``encode_prompts``, ``initial_latents``, ``denoise`` and ``decode_latents``.

    ``negative_branch`` False (a guidance-distilled model such as FLUX.1-dev) skips encoding the
    negative prompt: ``denoise`` then gets ``uncond=None``.
    """

    negative_branch: bool = True

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int = 25,
        guidance: float = 5.0,
        negative_prompt: str = "",
        size: int | None = None,
    ) -> torch.Tensor:
        """Generate one image per (prompt, seed): float32 [N, 3, H, W] in [0, 1] on CPU."""
        if len(prompts) != len(seeds):
            raise ErasekitError(
                f"Got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt."
            )
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative_prompt] * len(prompts)) if self.negative_branch else None
        latents = self.initial_latents(seeds, size)
        latents = self.denoise(latents, cond, uncond, steps=steps, guidance=guidance)
        return self.decode_latents(latents)


def split_targets(target: str | Iterable[str]) -> list[str]:
    """``"text_mlp+text_attn_last"`` or ``["text_mlp", "text_attn_last"]`` -> list of target names."""
    names = target.split("+") if isinstance(target, str) else list(target)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ErasekitError("Empty parameter target; name one, e.g. cross_attn_kv (see `erasekit methods`).")
    return names


def named_modules_of(components: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """Every module of every component under its qualified name (``unet.conv_in``...)."""
    out: dict[str, nn.Module] = {}
    for comp_name, comp in components.items():
        for name, module in comp.named_modules():
            out[f"{comp_name}.{name}" if name else comp_name] = module
    return out


def named_parameters_of(components: Mapping[str, nn.Module]) -> dict[str, nn.Parameter]:
    """Every parameter of every component under its qualified name."""
    out: dict[str, nn.Parameter] = {}
    for comp_name, comp in components.items():
        for name, param in comp.named_parameters():
            out[f"{comp_name}.{name}"] = param
    return out


def fingerprint_components(components: Mapping[str, nn.Module], sample: int = 4096) -> str:
    """A fast fingerprint of model weights: names, shapes, dtypes and a strided value sample.

    Hashing every byte of SD-1.4 (≈1 GB) costs seconds; a strided sample of each tensor catches any
    different checkpoint or fine-tune while staying cheap. Non-learned buffers are included.
    """
    digest = hashlib.sha256()
    for comp_name in sorted(components):
        state = components[comp_name].state_dict()
        for name in sorted(state):
            tensor = state[name].detach()
            digest.update(f"{comp_name}.{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            flat = tensor.reshape(-1)
            if flat.numel() == 0:
                continue
            step = max(1, flat.numel() // sample)
            values = flat[::step][:sample].to(torch.float32).cpu().contiguous()
            digest.update(values.numpy().tobytes())
    return "sha256-sampled:" + digest.hexdigest()[:32]


def modules_for_target(
    params: Mapping[str, nn.Parameter],
    modules: Mapping[str, nn.Module],
    target: str | Iterable[str],
    types: tuple[type, ...],
) -> dict[str, nn.Module]:
    """The modules of ``types`` whose ``.weight`` is among ``params`` (a target's parameters), by name.

    Raises:
        ErasekitError: the target selects no such module.
    """
    out = {}
    for pname in params:
        if pname.endswith(".weight"):
            mname = pname[: -len(".weight")]
            if isinstance(modules.get(mname), types):
                out[mname] = modules[mname]
    if not out:
        kinds = "/".join(t.__name__ for t in types)
        raise ErasekitError(f"Target {target!r} has no {kinds} layers; pick another target.")
    return out
