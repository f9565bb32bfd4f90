"""The erasure artifact: one portable file format for every method's result.

An artifact is a directory-free pair written next to each other::

    erase-star.safetensors        tensors (weights/…, adapters/…, hooks/…)
    erase-star.json               manifest (method, config, concepts, versions, fingerprint, cost)

It carries up to three kinds of edit, because the methods need all three:

* **weight edits** (UCE, ESD, few-shot): per qualified parameter name a ``delta`` (added) or a
  ``replace`` tensor. Deltas stack (task arithmetic); replacements overwrite.
* **low-rank adapters** (SPM): per qualified Linear/Conv module name ``down`` [r, in(, k, k)] and
  ``up`` [out, r(, 1, 1)] factors and a ``scale``; the adapter adds ``scale · γ · up(down(x))`` to the
  module's output, where γ comes from the artifact's optional *gate* (1 without one).
* **inference-time hooks** (ItD's SAE with its gate, SPM's facilitated-transport gate): a hook *kind*
  registered by its method (:func:`register_hook_kind`), attached at a named module with its tensors
  and JSON config.

:func:`apply` edits a pipeline in place (a diffusers pipeline or an erasekit backend — anything with
``components`` or ``unet``/``text_encoder`` attributes); :func:`revert` undoes exactly: the first time a
parameter is touched its original tensor is kept, and reverting restores every touched tensor from
those copies and re-applies whatever else is still stacked. apply → revert is therefore bit-exact,
whatever the order of applies and reverts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from erasekit.backends.base import fingerprint_components, named_modules_of, named_parameters_of
from erasekit.errors import ErasekitError
from erasekit.files import atomic_write

FORMAT_VERSION = 1
_COMPONENT_NAMES = ("unet", "text_encoder", "text_encoder_2", "transformer", "model")


# ---- the artifact ------------------------------------------------------------------------------------
@dataclass
class Artifact:
    """A method's result. Build it with the ``add_*`` helpers, then :meth:`save`.

    Attributes:
        method: Registered method name.
        manifest: JSON-serialisable facts (config, concepts, versions, fingerprint, cost ...).
        tensors: Flat name -> tensor map, keys prefixed ``weights/``, ``adapters/`` or ``hooks/<i>/``.
    """

    method: str
    manifest: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    # -- building
    def add_weight(self, name: str, tensor: torch.Tensor, mode: str = "delta") -> None:
        """Record an edit of qualified parameter ``name``: ``delta`` (added) or ``replace``."""
        if mode not in ("delta", "replace"):
            raise ValueError(f"weight edit mode must be delta or replace, not {mode!r}")
        self.tensors[f"weights/{name}"] = tensor.detach().to("cpu").contiguous()
        self.manifest.setdefault("weights", {})[name] = mode

    def add_adapter(self, module: str, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0) -> None:
        """Record a low-rank adapter on qualified Linear/Conv module ``module``."""
        self.tensors[f"adapters/{module}/down"] = down.detach().to("cpu").contiguous()
        self.tensors[f"adapters/{module}/up"] = up.detach().to("cpu").contiguous()
        self.manifest.setdefault("adapters", {})[module] = {"scale": float(scale), "rank": int(down.shape[0])}

    def add_hook(
        self,
        kind: str,
        target: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict | None = None,
        *,
        gate: bool = False,
    ) -> None:
        """Record an inference-time module of registered ``kind`` attached at module ``target``.

        With ``gate=True`` the hook is this artifact's adapter gate: it must expose ``gamma`` (a
        scalar or one value per batch row) that scales every adapter of the artifact.
        """
        if kind not in HOOK_KINDS:
            raise ValueError(f"hook kind {kind!r} is not registered")
        hooks = self.manifest.setdefault("hooks", [])
        index = len(hooks)
        for key, tensor in tensors.items():
            self.tensors[f"hooks/{index}/{key}"] = tensor.detach().to("cpu").contiguous()
        hooks.append(
            {"kind": kind, "target": target, "config": config or {}, "tensors": sorted(tensors), "gate": gate}
        )

    # -- views
    @property
    def weight_edits(self) -> dict[str, tuple[str, torch.Tensor]]:
        return {
            n: (mode, self.tensors[f"weights/{n}"]) for n, mode in self.manifest.get("weights", {}).items()
        }

    def hook_tensors(self, index: int) -> dict[str, torch.Tensor]:
        spec = self.manifest["hooks"][index]
        return {key: self.tensors[f"hooks/{index}/{key}"] for key in spec["tensors"]}

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    # -- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the tensor file path."""
        tensor_path, manifest_path = artifact_paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest, method=self.method, format_version=FORMAT_VERSION)
        atomic_write(
            tensor_path, lambda tmp: save_file(self.tensors, tmp, metadata={"erasekit_method": self.method})
        )
        atomic_write(
            manifest_path,
            lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str)),
        )
        return tensor_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Artifact:
        """Read an artifact written by :meth:`save` (either file's path, or the shared stem)."""
        tensor_path, manifest_path = artifact_paths(path)
        if not tensor_path.is_file() or not manifest_path.is_file():
            raise ErasekitError(
                f"Artifact {tensor_path.with_suffix('')} not found: it needs both {tensor_path.name} and {manifest_path.name}."
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            tensors = load_file(os.fspath(tensor_path))
        except (json.JSONDecodeError, SafetensorError, OSError) as error:
            raise ErasekitError(
                f"Artifact {tensor_path.name} is corrupt ({type(error).__name__}); re-create it with `erasekit erase`."
            ) from error
        if not _well_formed(manifest):
            raise ErasekitError(
                f"{manifest_path.name} is not a well-formed erasekit manifest; re-create it with `erasekit erase`."
            )
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ErasekitError(
                f"{tensor_path.name} was written by a newer erasekit; upgrade erasekit to read it."
            )
        expected = {f"weights/{n}" for n in manifest.get("weights", {})}
        expected |= {f"adapters/{m}/{f}" for m in manifest.get("adapters", {}) for f in ("down", "up")}
        expected |= {f"hooks/{i}/{k}" for i, h in enumerate(manifest.get("hooks", [])) for k in h["tensors"]}
        if expected != set(tensors):
            raise ErasekitError(
                f"Artifact {tensor_path.name} does not match its manifest (tensors missing or extra); re-create it."
            )
        return cls(method=manifest["method"], manifest=manifest, tensors=tensors)


def _well_formed(manifest: Any) -> bool:
    """The manifest's edit records have the shapes :meth:`Artifact.load` and :func:`apply` rely on."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
        return False
    weights, adapters, hooks = (
        manifest.get(k, d) for k, d in (("weights", {}), ("adapters", {}), ("hooks", []))
    )
    return (
        isinstance(manifest.get("format_version", 0), int)
        and isinstance(weights, dict)
        and all(mode in ("delta", "replace") for mode in weights.values())
        and isinstance(adapters, dict)
        and all(isinstance(a, dict) and isinstance(a.get("scale"), (int, float)) for a in adapters.values())
        and isinstance(hooks, list)
        and all(
            isinstance(h, dict)
            and isinstance(h.get("kind"), str)
            and isinstance(h.get("target"), str)
            and isinstance(h.get("config"), dict)
            and isinstance(h.get("tensors"), list)
            for h in hooks
        )
    )


def artifact_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``x``, ``x.safetensors`` or ``x.json`` -> (``x.safetensors``, ``x.json``)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


# ---- inference-time hook kinds ---------------------------------------------------------------------
class InferenceHook:
    """Base of inference-time modules. Subclasses implement :meth:`attach` and expose ``gamma`` if gates.

    Args:
        module: The module at the hook's target.
        tensors: The hook's tensors from the artifact.
        config: The hook's JSON config.
        modules: All modules of the pipeline by qualified name (for hooks that also watch others).
    """

    gamma: torch.Tensor | float = 1.0

    def __init__(
        self, module: nn.Module, tensors: dict[str, torch.Tensor], config: dict, modules: dict[str, nn.Module]
    ):
        self.module, self.tensors, self.config, self.modules = module, tensors, config, modules

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        raise NotImplementedError


HOOK_KINDS: dict[str, type[InferenceHook]] = {}


def register_hook_kind(name: str) -> Callable[[type[InferenceHook]], type[InferenceHook]]:
    """Class decorator: make an :class:`InferenceHook` subclass loadable from artifacts by ``name``."""

    def decorate(cls: type[InferenceHook]) -> type[InferenceHook]:
        HOOK_KINDS[name] = cls
        return cls

    return decorate


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
    holder = components.get("unet") or next(iter(components.values()))
    stack = getattr(holder, _STATE_ATTR, None)
    if stack is None:
        stack = _Stack(base_fingerprint=fingerprint_components(components))
        object.__setattr__(holder, _STATE_ATTR, stack)
    return stack


def applied_artifacts(pipe: Any) -> list[Artifact]:
    """Artifacts currently applied to ``pipe``, in application order."""
    components = pipeline_components(pipe)
    holder = components.get("unet") or next(iter(components.values()))
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
    """The backend kind of ``pipe`` (``sd``, ``ar``, ``causal_lm``…): an erasekit backend says so; a
    stock diffusers pipeline (it has a ``unet``) is ``sd``; other stock models are not classified."""
    kind = getattr(pipe, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
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


# ---- manifest helpers ------------------------------------------------------------------------------------
def environment_versions() -> dict[str, str]:
    """Versions that decide whether a result reproduces."""
    import importlib.metadata as md

    import erasekit

    versions = {"erasekit": erasekit.__version__, "torch": torch.__version__}
    for package in ("diffusers", "transformers", "safetensors"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
