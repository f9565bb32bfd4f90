"""The model zoo: names users type (``tiny``, ``shapes``) and folders, loaded with the data they bring.

This is the one place that knows both the backends and the worlds. Backends load weights and never
import a world; worlds never import a backend's internals; methods see neither, only the backend's
method-facing surface and its :class:`erasekit.sources.DataSource` (``backend.data_source``):

* ``tiny`` — a random, seeded SD-shaped pipeline built in code (tests); no data source;
* ``shapes`` — the shipped ShapesWorld model, with :class:`erasekit.world.source.ShapesWorldSource`;
* a folder — a diffusers pipeline; one carrying ShapesWorld's manifest (``erasekit world train``
  output) gets the ShapesWorld source, any other the packaged COCO captions as its retain source;
* a ``.safetensors`` file or a cached hub id — as a folder without a manifest.

``retain=FILE`` (the CLI's ``--retain``) replaces the source's retain prompts with the file's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erasekit.sources import DataSource, WithRetain, caption_file, packaged_captions


@dataclass(frozen=True)
class ZooEntry:
    """A named model: what it is, where its weights live (None: built in code), and its data source."""

    description: str
    folder: Callable[[], Path] | None
    source: Callable[[], DataSource]


def _shapes_folder() -> Path:
    from erasekit.world.model import SHIPPED_MODEL_DIR

    return Path(SHIPPED_MODEL_DIR)


def _shapes_source() -> DataSource:
    from erasekit.world.source import ShapesWorldSource

    return ShapesWorldSource()


def _shapes_ar_folder() -> Path:
    from erasekit.world.ar_assets import SHIPPED_AR_DIR

    return Path(SHIPPED_AR_DIR)


ZOO: dict[str, ZooEntry] = {
    "tiny": ZooEntry("random tiny SD pipeline built in code (tests)", None, DataSource),
    "tiny-ar": ZooEntry("random tiny autoregressive image-token model built in code (tests)", None, DataSource),
    "shapes-ar": ZooEntry(
        "the shipped ShapesWorld-AR model (Llama over VQ image tokens, 32 px)", _shapes_ar_folder, _shapes_source
    ),
    "shapes": ZooEntry(
        "the shipped ShapesWorld model (SD architecture, 32 px)", _shapes_folder, _shapes_source
    ),
}


def model_names() -> list[str]:
    return sorted(ZOO)


def resolve(model: str) -> str:
    """The path (or name, for models built in code) the backend loads for ``model``."""
    entry = ZOO.get(model)
    if entry is None or entry.folder is None:
        return model
    return str(entry.folder())


def source_for(model: str) -> DataSource:
    """The data source that comes with ``model`` (a zoo name, a folder, a file or a hub id)."""
    entry = ZOO.get(model)
    if entry is not None:
        return entry.source()
    path = Path(model).expanduser()
    if path.is_dir() and _is_shapesworld_folder(path):
        return _shapes_source()
    return packaged_captions()


def _is_shapesworld_folder(path: Path) -> bool:
    from erasekit.world.model import MANIFEST_NAME

    manifest = path / MANIFEST_NAME
    return manifest.is_file() and "ShapesWorld" in manifest.read_text(errors="ignore")[:4096]


def load_model(model: str, *, retain: str | Path | None = None, **kwargs: Any) -> Any:
    """Load ``model`` as a backend with its data source attached (``backend.data_source``).

    Args:
        model: A zoo name (:func:`model_names`), a diffusers folder, a .safetensors file or a cached hub id.
        retain: A file of retain prompts replacing the source's (.txt, .csv or .jsonl).
        **kwargs: Passed to the backend loader (``device``, ``dtype``, ``allow_pickle``).
    """
    from erasekit import lm_zoo
    from erasekit.backends.ar import is_ar_folder

    # AR image-token folders also hold a *ForCausalLM config.json; their erasekit_ar.json decides first
    if model not in ("tiny-ar", "shapes-ar") and not is_ar_folder(resolve(model)) and lm_zoo.handles(model):  # causal LMs: the shipped code-lm and HF causal-LM folders
        return lm_zoo.load_lm(model, retain=retain, **kwargs)
    from erasekit.backends.sd import load_backend

    source = source_for(model)
    if retain is not None:
        source = WithRetain(source, caption_file(retain))
    from erasekit.backends.ar import is_ar_folder, load_ar_backend

    if model == "tiny-ar" or is_ar_folder(resolve(model)):  # autoregressive image-token models
        backend = load_ar_backend(resolve(model), name=model, **kwargs)
    else:
        backend = load_backend(resolve(model), name=model, **kwargs)
    backend.data_source = source
    return backend


def load_pipeline(model: str, **kwargs: Any) -> Any:
    """A stock diffusers pipeline for ``model`` (zoo names resolved; no erasekit wrapper)."""
    from erasekit.backends.sd import load_pipeline as _load

    return _load(resolve(model), **kwargs)
