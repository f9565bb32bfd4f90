"""Backends: the only code that imports diffusers / transformers.

Import concrete backends lazily (``from erasekit.backends.sd import load_backend``) so that light
commands (``erasekit methods``) do not pay for importing diffusers.
"""

from erasekit.backends.base import DiffusionBackend, split_targets

__all__ = ["DiffusionBackend", "split_targets", "load_backend"]


def load_backend(model: str, **kwargs):
    """Load ``model`` with its data source: a zoo name (``tiny``, ``shapes``), a folder, a file, a hub id.

    The same as :func:`erasekit.zoo.load_model` (the zoo resolves names; backends know no world).
    """
    from erasekit.zoo import load_model

    return load_model(model, **kwargs)
