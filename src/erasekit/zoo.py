"""The model zoo: names users type (``tiny``, ``shapes``) and folders, loaded with the data they bring.

This is the one place that knows both the backends and the worlds. Backends load weights and never
import a world; worlds never import a backend's internals; methods see neither, only the backend's
method-facing surface and its :class:`erasekit.sources.DataSource` (``backend.data_source``):

* ``tiny`` — a random, seeded SD-shaped pipeline built in code (tests); no data source;
* ``shapes`` — the shipped ShapesWorld model, with :class:`erasekit.world.source.ShapesWorldSource`;
* ``shapes-ar`` — the shipped ShapesWorld-AR image-token model, with the same ShapesWorld source;
* ``code-lm`` — the shipped CodeWorld code LM, with its corpus (retain files, unseen secrets);
* ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux`` — random tiny SDXL / SD3.5 / FLUX pipelines built in code
  (:mod:`erasekit.backends.tiny_families`); a folder of one of these pipelines is recognised by its
  ``model_index.json`` (:func:`erasekit.backends.families.folder_family`);
* a folder — a diffusers pipeline, an AR image-token folder or a causal LM, by its files; a diffusers
  folder carrying ShapesWorld's manifest (``erasekit world train`` output) gets the ShapesWorld
  source, any other the packaged COCO captions as its retain source;
* a ``.safetensors`` file or a cached hub id — as a folder without a manifest.

``retain=FILE`` (the CLI's ``--retain``) replaces the source's retain prompts with the file's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erasekit.sources import DataSource, WithRetain, caption_file, packaged_captions


@dataclass(frozen=True)
class ZooEntry:
    """A named model: what it is, its backend kind, where its weights live (None: built in code), its data."""

    description: str
    kind: str  # "sd", "sdxl", "sd3", "flux", "ar" or "causal_lm": which backend loads it
    folder: Callable[[], Path] | None
    source: Callable[[], DataSource]
    image_adapter: Callable[[], Any] | None = None
    """Its IP-Adapter for image prompts: a folder, or an installer for one built in code (None: none)."""


def _shapes_folder() -> Path:
    from erasekit.world.model import SHIPPED_MODEL_DIR

    return Path(SHIPPED_MODEL_DIR)


def _shapes_source() -> DataSource:
    from erasekit.world.source import ShapesWorldSource

    return ShapesWorldSource()


def _shapes_ip_adapter() -> Path:
    from erasekit.world.ip_adapter import IP_ADAPTER_DIR

    return Path(IP_ADAPTER_DIR)


def _tiny_ip_adapter() -> Any:
    from erasekit.backends.ip_adapter import random_adapter_installer

    return random_adapter_installer()


def _shapes_ar_folder() -> Path:
    from erasekit.world.ar_assets import SHIPPED_AR_DIR

    return Path(SHIPPED_AR_DIR)


def _code_lm_folder() -> Path:
    from erasekit.codeworld.source import SHIPPED_CODE_LM_DIR

    return Path(SHIPPED_CODE_LM_DIR)


ZOO: dict[str, ZooEntry] = {
    "tiny": ZooEntry(
        "random tiny SD pipeline built in code (tests)", "sd", None, DataSource, _tiny_ip_adapter
    ),
    "shapes": ZooEntry(
        "the shipped ShapesWorld model (SD architecture, 32 px)",
        "sd",
        _shapes_folder,
        _shapes_source,
        _shapes_ip_adapter,
    ),
    "tiny-sdxl": ZooEntry("random tiny SDXL pipeline built in code (tests)", "sdxl", None, DataSource),
    "tiny-sd3": ZooEntry("random tiny SD3.5-style pipeline built in code (tests)", "sd3", None, DataSource),
    "tiny-flux": ZooEntry(
        "random tiny FLUX.1-style pipeline built in code (tests)", "flux", None, DataSource
    ),
    "tiny-ar": ZooEntry(
        "random tiny autoregressive image-token model built in code (tests)", "ar", None, DataSource
    ),
    "shapes-ar": ZooEntry(
        "the shipped ShapesWorld-AR model (Llama over VQ image tokens, 32 px)",
        "ar",
        _shapes_ar_folder,
        _shapes_source,
    ),
    "code-lm": ZooEntry(
        "the shipped CodeWorld code LM (Llama, 2.2 M parameters, planted secrets)",
        "causal_lm",
        _code_lm_folder,
        DataSource,  # its CodeWorld source is read from the folder's manifest (see _folder_source)
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


def backend_kind(model: str) -> str:
    """Which backend loads ``model``: the zoo says so for names; a folder's own files decide otherwise
    (an AR image-token folder has ``erasekit_ar.json``, a causal LM a ``*ForCausalLM`` config)."""
    entry = ZOO.get(model)
    if entry is not None:
        return entry.kind
    from erasekit.backends.ar import is_ar_folder  # checked first: AR folders hold a causal-LM config too

    if is_ar_folder(model):
        return "ar"
    from erasekit.backends.families import folder_family

    family = folder_family(model)
    if family is not None:
        return family
    from erasekit.backends.causal_lm import is_causal_lm_folder

    return "causal_lm" if is_causal_lm_folder(model) else "sd"


def source_for(model: str) -> DataSource:
    """The data source that comes with ``model`` (a zoo name, a folder, a file or a hub id)."""
    entry = ZOO.get(model)
    path = Path(resolve(model)).expanduser()
    if backend_kind(model) == "causal_lm":
        return _code_source(path)
    if entry is not None:
        return entry.source()
    if path.is_dir() and _is_shapesworld_folder(path):
        return _shapes_source()
    return packaged_captions()


def recommended_preset(model: str) -> str | None:
    """The method preset ``model``'s data source recommends (``shapesworld`` for ShapesWorld models)."""
    return source_for(model).preset


def _code_source(folder: Path) -> DataSource:
    """A CodeWorld-trained LM folder brings its corpus (retain files, unseen secrets, held-out checks);
    any other causal LM brings nothing (methods that need retain data then ask for --retain)."""
    from erasekit.codeworld.source import CodeWorldSource, is_codeworld_folder
    from erasekit.codeworld.train import MANIFEST_NAME

    if not is_codeworld_folder(folder):
        return DataSource()
    return CodeWorldSource.from_manifest(json.loads((folder / MANIFEST_NAME).read_text())["corpus"])


def _is_shapesworld_folder(path: Path) -> bool:
    from erasekit.world.model import MANIFEST_NAME

    manifest = path / MANIFEST_NAME
    return manifest.is_file() and "ShapesWorld" in manifest.read_text(errors="ignore")[:4096]


def recommended_sampling(model: str) -> dict[str, float] | None:
    """``{"steps", "guidance"}`` a model folder's erasekit manifest recommends (``"sampling"``: the
    shipped ShapesWorld model, ``erasekit world train`` output), else None."""
    from erasekit.world.model import read_manifest

    folder = Path(resolve(model)).expanduser()
    if not folder.is_dir():
        return None
    sampling = read_manifest(folder).get("sampling") or {}
    if "num_inference_steps" not in sampling and "guidance_scale" not in sampling:
        return None
    return {
        "steps": int(sampling.get("num_inference_steps", 25)),
        "guidance": float(sampling.get("guidance_scale", 5.0)),
    }


def _with_retain(source: DataSource, kind: str, retain: str | Path) -> DataSource:
    if kind == "causal_lm":  # code files or JSONL with "text", not caption lines
        from erasekit.codeworld.source import CodeRetainFile

        return CodeRetainFile(source, retain)
    return WithRetain(source, caption_file(retain))


def load_model(model: str, *, retain: str | Path | None = None, **kwargs: Any) -> Any:
    """Load ``model`` as a backend with its data source attached (``backend.data_source``).

    Args:
        model: A zoo name (:func:`model_names`), a diffusers / AR / causal-LM folder, a .safetensors
            file or a cached hub id.
        retain: A file of retain data replacing the source's (prompts: .txt, .csv or .jsonl; for
            language models: code files or JSONL with ``text``).
        **kwargs: Passed to the backend loader (``device``, ``dtype``, ``allow_pickle``).
    """
    kind = backend_kind(model)
    source = source_for(model)
    if retain is not None:
        source = _with_retain(source, kind, retain)
    if kind == "causal_lm":
        from erasekit.backends.causal_lm import load_causal_lm_backend

        backend = load_causal_lm_backend(
            Path(resolve(model)).expanduser(),
            name=model,
            device=kwargs.get("device", "cpu"),
            allow_pickle=kwargs.get("allow_pickle", False),
        )
    elif kind in ("sdxl", "sd3", "flux"):
        from erasekit.backends.families import load_family_backend

        backend = load_family_backend(resolve(model), kind, name=model, **kwargs)
    elif kind == "ar":
        from erasekit.backends.ar import load_ar_backend

        backend = load_ar_backend(resolve(model), name=model, **kwargs)
    else:
        from erasekit.backends.sd import load_backend

        backend = load_backend(resolve(model), name=model, **kwargs)
    backend.data_source = source
    # what the model's own manifest recommends for sampling (methods that sample, e.g. fewshot's check)
    backend.recommended_sampling = recommended_sampling(model) if kind == "sd" else None
    entry = ZOO.get(model)
    if kind == "sd" and entry is not None and entry.image_adapter is not None:
        backend.image_adapter_source = entry.image_adapter()
    return backend


def load_pipeline(model: str, **kwargs: Any) -> Any:
    """A stock diffusers pipeline for ``model`` (zoo names resolved; no erasekit wrapper)."""
    kind = backend_kind(model)
    if kind in ("sdxl", "sd3", "flux"):
        from erasekit.backends.families import load_family_pipeline

        return load_family_pipeline(resolve(model), kind)
    from erasekit.backends.sd import load_pipeline as _load

    return _load(resolve(model), **kwargs)
