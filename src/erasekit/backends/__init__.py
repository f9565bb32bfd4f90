"""Backends: the only code that imports diffusers / transformers.

Import concrete backends lazily (``from erasekit.backends.sd import load_backend``) so that light
commands (``erasekit methods``) do not pay for importing diffusers.
"""

from erasekit.backends.base import DiffusionBackend, split_targets

__all__ = ["DiffusionBackend", "split_targets", "load_backend"]


def load_backend(model: str, **kwargs):
    """Load ``model`` (``shapes``, ``tiny``, a folder, a .safetensors file, a cached hub id)."""
    from erasekit.backends.sd import load_backend as _load

    return _load(model, **kwargs)
