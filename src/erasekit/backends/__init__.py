"""Backends: the only code that imports diffusers / transformers.

Import concrete backends lazily (``from erasekit.backends.sd import SDBackend``) so that light
commands (``erasekit methods``) do not pay for importing diffusers. Backends load weights and know no
world: named models (``tiny``, ``shapes``) and the data that comes with them are resolved by
:func:`erasekit.zoo.load_model`.
"""

from erasekit.backends.base import DiffusionBackend, split_targets

__all__ = ["DiffusionBackend", "split_targets"]
