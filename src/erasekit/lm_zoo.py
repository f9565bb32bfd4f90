"""Language models in the zoo: the shipped ``code-lm`` and any local Hugging Face causal-LM folder.

Like :mod:`erasekit.zoo` for diffusion models, this is where a backend meets the data its model
brings: a folder trained by :mod:`erasekit.codeworld.train` (the shipped ``code-lm``) gets a
:class:`erasekit.codeworld.source.CodeWorldSource` (retain files, unseen secrets, held-out checks);
any other causal LM gets none, and methods that need retain data ask for ``--retain FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LM_NAMES = {"code-lm": "the shipped CodeWorld code LM (Llama, 2.2 M parameters, planted secrets)"}


def handles(model: str) -> bool:
    """Whether ``model`` names a causal LM (cheap: reads at most one config.json)."""
    if model in LM_NAMES:
        return True
    from erasekit.backends.causal_lm import is_causal_lm_folder

    return is_causal_lm_folder(model)


def resolve(model: str) -> Path:
    if model == "code-lm":
        from erasekit.codeworld.source import SHIPPED_CODE_LM_DIR

        return SHIPPED_CODE_LM_DIR
    return Path(model).expanduser()


def load_lm(model: str, *, retain: str | Path | None = None, device: str = "cpu", **kwargs: Any) -> Any:
    """Load ``model`` as a :class:`erasekit.backends.causal_lm.CausalLMBackend` with its data source.

    ``retain`` (``--retain FILE``: code files or JSONL with ``text``) replaces the source's retain files.
    """
    from erasekit.backends.causal_lm import load_causal_lm_backend
    from erasekit.codeworld.source import CodeRetainFile, CodeWorldSource, is_codeworld_folder
    from erasekit.codeworld.train import MANIFEST_NAME
    from erasekit.sources import DataSource

    folder = resolve(model)
    backend = load_causal_lm_backend(
        folder, name=model, device=device, allow_pickle=kwargs.get("allow_pickle", False)
    )
    source: DataSource = DataSource()
    if is_codeworld_folder(folder):
        corpus = json.loads((folder / MANIFEST_NAME).read_text())["corpus"]
        source = CodeWorldSource.from_manifest(corpus)
    if retain is not None:
        source = CodeRetainFile(source, retain)
    backend.data_source = source
    return backend
