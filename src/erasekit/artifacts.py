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

:func:`erasekit.applying.apply` edits a pipeline in place (a diffusers pipeline or an erasekit backend — anything with
``components`` or ``unet``/``text_encoder`` attributes); :func:`revert` undoes exactly: the first time a
parameter is touched its original tensor is kept, and reverting restores every touched tensor from
those copies and re-applies whatever else is still stacked. apply → revert is therefore bit-exact,
whatever the order of applies and reverts. This module is the file format (and the registry of hook
kinds methods define); applying lives above the methods, in :mod:`erasekit.applying`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from erasekit.errors import ErasekitError
from erasekit.files import atomic_write

FORMAT_VERSION = 1
_COMPONENT_NAMES = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "model")


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
