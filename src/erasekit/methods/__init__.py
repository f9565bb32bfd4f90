"""The method registry: one line per method (name -> "module:Class"), imported on first use."""

from __future__ import annotations

import importlib

from erasekit.errors import ErasekitError
from erasekit.methods.base import Method, run_method

_REGISTRY: dict[str, str] = {
    "uce": "erasekit.methods.uce:UCE",
    "esd": "erasekit.methods.esd:ESD",
    "coerasing": "erasekit.methods.coerasing:CoErasing",
    "spm": "erasekit.methods.spm:SPM",
    "itd": "erasekit.methods.itd:ItD",
    "fewshot": "erasekit.methods.fewshot:FewShot",
    "abo": "erasekit.methods.abo:AllButOne",
    "ear": "erasekit.methods.ear:EAR",
    "esd_ar": "erasekit.methods.ear:ESDAR",
    "codeeraser": "erasekit.methods.codeeraser:CodeEraser",
    "ga": "erasekit.methods.codeeraser:GradientAscent",
    "ga_kl": "erasekit.methods.codeeraser:ConstraintGA",
}


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """An instance of the registered method ``name``."""
    if name not in _REGISTRY:
        raise ErasekitError(f"Unknown method {name!r}; choose from: {', '.join(available_methods())}.")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def load_all() -> None:
    """Import every method module (registers their inference-hook kinds)."""
    for entry in _REGISTRY.values():
        importlib.import_module(entry.split(":")[0])


__all__ = ["Method", "available_methods", "get_method", "load_all", "run_method"]
