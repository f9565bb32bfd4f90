"""Applying artifacts to models and reverting them, bit-exactly; several stack.

This layer sits above the methods: an artifact's inference-time hooks are kinds that methods
register (:func:`erasekit.artifacts.register_hook_kind`), so applying one imports the method registry.
The file format itself (:class:`erasekit.artifacts.Artifact`) sits below the methods.

``apply(artifact, model)`` edits a model in place (an erasekit backend or a stock diffusers / transformers
model with the same components); ``revert(model[, artifact])`` restores every touched tensor from the
copy kept when it was first touched and re-applies what else is still stacked; ``with applied(artifact,
model):`` does both around a block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from erasekit.artifacts import _COMPONENT_NAMES, HOOK_KINDS, Artifact, InferenceHook
from erasekit.backends.base import fingerprint_components, named_modules_of, named_parameters_of
from erasekit.errors import ErasekitError


def _ensure_hook_kinds_loaded() -> None:
    # Hook kinds live in their methods' modules; importing the registry registers them all.
    from erasekit.methods import load_all

    load_all()


class _AdapterHook:
    """Adds ``scale · γ · up(down(x))`` to a Linear/Conv module's output (LoRA-style)."""

    def __init__(
        self,
        module: nn.Module,
        down: torch.Tensor,
        up: torch.Tensor,
        scale: float,
        gate: InferenceHook | None,
    ):
        self.module, self.scale, self.gate = module, scale, gate
        weight = module.weight
        self.down, self.up = down.to(weight.device, weight.dtype), up.to(weight.device, weight.dtype)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if isinstance(module, nn.Conv2d):
            hidden = nn.functional.conv2d(
                x, self.down, stride=module.stride, padding=module.padding, dilation=module.dilation
            )
            delta = nn.functional.conv2d(hidden, self.up)
        else:
            delta = nn.functional.linear(nn.functional.linear(x, self.down), self.up)
        gamma = self.gate.gamma if self.gate is not None else 1.0
        if torch.is_tensor(gamma) and gamma.ndim == 1:
            if gamma.shape[0] != delta.shape[0]:
                raise RuntimeError("adapter gate's batch does not match the module's batch")
            gamma = gamma.to(delta.dtype).view(-1, *([1] * (delta.ndim - 1)))
        return output + self.scale * gamma * delta


# ---- applying and reverting ----------------------------------------------------------------------------
def pipeline_components(pipe: Any) -> dict[str, nn.Module]:
    """The named modules artifacts edit, from a backend or a diffusers pipeline."""
    components = getattr(pipe, "components", None)
    if isinstance(components, Mapping):
        found = {k: v for k, v in components.items() if k in _COMPONENT_NAMES and isinstance(v, nn.Module)}
    else:
        found = {
            k: getattr(pipe, k) for k in _COMPONENT_NAMES if isinstance(getattr(pipe, k, None), nn.Module)
        }
    if not found:
        raise ErasekitError(
            "This object has no unet/text_encoder components; pass a diffusers pipeline or an erasekit backend."
        )
    return found


@dataclass
class _Stack:
    """Per-pipeline state: originals of touched tensors, applied artifacts, live hook handles."""

    base_fingerprint: str
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    applied: list[Artifact] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)


_STATE_ATTR = "_erasekit_stack"


def _stack_of(pipe: Any, components: dict[str, nn.Module]) -> _Stack:
    # Keep the state on the first component (a diffusers pipeline may be a frozen dict-like object).
    holder = components.get("unet") or components.get("transformer") or next(iter(components.values()))
    stack = getattr(holder, _STATE_ATTR, None)
    if stack is None:
        stack = _Stack(base_fingerprint=fingerprint_components(components))
        object.__setattr__(holder, _STATE_ATTR, stack)
    return stack


def applied_artifacts(pipe: Any) -> list[Artifact]:
    """Artifacts currently applied to ``pipe``, in application order."""
    components = pipeline_components(pipe)
    holder = components.get("unet") or components.get("transformer") or next(iter(components.values()))
    stack = getattr(holder, _STATE_ATTR, None)
    return list(stack.applied) if stack else []


def apply(artifact: Artifact, pipe: Any, *, force: bool = False) -> None:
    """Apply ``artifact`` to ``pipe`` in place; several artifacts stack.

    Raises:
        ErasekitError: the artifact was computed from other base weights (unless ``force``), or it
            names a parameter/module the pipeline lacks or with another shape.
    """
    made_for, kind = artifact.manifest.get("backend"), model_kind(pipe)
    if made_for and kind and made_for != kind:  # e.g. an EAR artifact (ar) on a diffusion model (sd)
        raise ErasekitError(
            f"Artifact {artifact.method} is for a model of kind {made_for!r} (this one is {kind!r}); apply it to the model it was made for."
        )
    components = pipeline_components(pipe)
    stack = _stack_of(pipe, components)
    expected = artifact.manifest.get("base_fingerprint")
    if expected and expected != stack.base_fingerprint and not force:
        raise ErasekitError(
            f"Artifact {artifact.method} was computed from other base weights ({expected[:24]}… ≠ {stack.base_fingerprint[:24]}…); use the same model or pass --force."
        )
    _check_compatible(artifact, components)
    _apply_one(artifact, components, stack)
    stack.applied.append(artifact)


def model_kind(pipe: Any) -> str | None:
    """The backend kind of ``pipe`` (``sd``, ``sdxl``, ``sd3``, ``flux``, ``ar``, ``causal_lm``…): an
    erasekit backend says so; a stock diffusers pipeline by its class (SDXL, SD3, Flux pipelines) or,
    for any other with a ``unet``, ``sd``; other stock models are not classified."""
    kind = getattr(pipe, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
    class_name = type(pipe).__name__
    for marker, family in (("StableDiffusionXL", "sdxl"), ("StableDiffusion3", "sd3"), ("Flux", "flux")):
        if class_name.startswith(marker):
            return family
    return "sd" if hasattr(pipe, "unet") else None


@contextmanager
def applied(artifacts: Artifact | Sequence[Artifact], pipe: Any, *, force: bool = False) -> Iterator[Any]:
    """``with applied(artifact, model):`` — the artifacts (one or a list, stacked in order) are applied
    inside the block and removed on the way out, also when the block raises; other artifacts already
    applied to ``pipe`` stay."""
    items = [artifacts] if isinstance(artifacts, Artifact) else list(artifacts)
    done: list[Artifact] = []
    try:
        for artifact in items:
            apply(artifact, pipe, force=force)
            done.append(artifact)
        yield pipe
    finally:
        for artifact in reversed(done):
            revert(pipe, artifact)


def revert(pipe: Any, artifact: Artifact | None = None) -> None:
    """Remove ``artifact`` (default: all) from ``pipe``; weights return bit-exactly to their originals."""
    components = pipeline_components(pipe)
    stack = _stack_of(pipe, components)
    if artifact is not None and not any(a is artifact for a in stack.applied):
        raise ErasekitError(f"Artifact {artifact.method} is not applied to this pipeline; nothing to revert.")
    remaining = [a for a in stack.applied if artifact is not None and a is not artifact]
    for handle in stack.handles:
        handle.remove()
    stack.handles.clear()
    params = named_parameters_of(components)
    with torch.no_grad():
        for name, original in stack.originals.items():
            params[name].copy_(original)
    stack.originals.clear()
    stack.applied = []
    for other in remaining:
        _apply_one(other, components, stack)
        stack.applied.append(other)


def _check_compatible(artifact: Artifact, components: dict[str, nn.Module]) -> None:
    params = named_parameters_of(components)
    for name, (_mode, tensor) in artifact.weight_edits.items():
        if name not in params:
            raise ErasekitError(
                f"Artifact edits {name}, which this model lacks; apply it to the model it was made for."
            )
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise ErasekitError(
                f"Artifact's {name} has shape {tuple(tensor.shape)}, the model's {tuple(params[name].shape)}; use the matching model."
            )
    modules = named_modules_of(components)
    for name in artifact.manifest.get("adapters", {}):
        if not isinstance(modules.get(name), (nn.Linear, nn.Conv2d)):
            raise ErasekitError(
                f"Artifact adapts {name}, which is not a Linear/Conv layer of this model; use the matching model."
            )
    for spec in artifact.manifest.get("hooks", []):
        if spec["target"] not in modules:
            raise ErasekitError(
                f"Artifact hooks {spec['target']}, which this model lacks; use the matching model."
            )


def _apply_one(artifact: Artifact, components: dict[str, nn.Module], stack: _Stack) -> None:
    params = named_parameters_of(components)
    with torch.no_grad():
        for name, (mode, tensor) in artifact.weight_edits.items():
            param = params[name]
            if name not in stack.originals:
                stack.originals[name] = param.detach().clone()
            value = tensor.to(param.device, param.dtype)
            if mode == "delta":
                param.add_(value)
            else:
                param.copy_(value)
    modules = named_modules_of(components)
    gate = None
    hooks = artifact.manifest.get("hooks", [])
    if hooks:
        _ensure_hook_kinds_loaded()
    for index, spec in enumerate(hooks):
        if spec["kind"] not in HOOK_KINDS:
            raise ErasekitError(
                f"Artifact needs hook kind {spec['kind']!r}, unknown to this erasekit; upgrade erasekit."
            )
        hook = HOOK_KINDS[spec["kind"]](
            modules[spec["target"]], artifact.hook_tensors(index), spec["config"], modules
        )
        stack.handles.extend(hook.attach())
        if spec.get("gate"):
            gate = hook
    for name, spec in artifact.manifest.get("adapters", {}).items():
        adapter = _AdapterHook(
            modules[name],
            artifact.tensors[f"adapters/{name}/down"],
            artifact.tensors[f"adapters/{name}/up"],
            spec["scale"],
            gate,
        )
        stack.handles.append(modules[name].register_forward_hook(adapter))
