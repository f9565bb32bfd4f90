"""Named parameter targets for Stable-Diffusion-family backends, resolved by pattern.

A target is a name users and methods share (``cross_attn_kv``, ``text_mlp`` ...). Each resolves to a
regular expression over *qualified* parameter names (``unet.…``, ``text_encoder.…``); a method asks
``backend.parameters_for("cross_attn_kv")`` and never matches layer names itself. Text-encoder targets
are depth-agnostic: ``text_attn_last`` is computed from the encoder's layer count, not a hard-coded
``"11.self_attn."`` (which only fits a 12-layer CLIP).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from erasekit.backends.base import split_targets
from erasekit.errors import ErasekitError

# transformers 4 names "text_model.encoder.layers.N", transformers 5 "encoder.layers.N".
_TEXT_LAYER = r"^text_encoder\.(?:text_model\.)?encoder\.layers\.(\d+)\."

# name -> (description, predicate over (qualified name, number of text layers))
TargetRule = Callable[[str, int], bool]


def _regex(pattern: str) -> TargetRule:
    compiled = re.compile(pattern)
    return lambda name, _n: bool(compiled.search(name))


def _text_layers(sub: str, which: Callable[[int, int], bool]) -> TargetRule:
    compiled = re.compile(_TEXT_LAYER + sub)

    def rule(name: str, n_layers: int) -> bool:
        match = compiled.search(name)
        return bool(match) and which(int(match.group(1)), n_layers)

    return rule


def _unet_non_cross(name: str, _n: int) -> bool:
    # ESD-u (Gandikota et al. 2023, Sec. 3): everything in the UNet except cross-attention; like the
    # reference we also leave the timestep embedding alone (it carries no concept information).
    return name.startswith("unet.") and ".attn2." not in name and "time_embedding" not in name


SD_TARGETS: dict[str, tuple[str, TargetRule]] = {
    "cross_attn_kv": (
        "UNet cross-attention key/value projections (UCE, ESD-x).",
        _regex(r"^unet\..*\.attn2\.to_[kv]\.weight$"),
    ),
    "cross_attn": ("All UNet cross-attention parameters (q, k, v, out).", _regex(r"^unet\..*\.attn2\.")),
    "self_attn": ("All UNet self-attention parameters.", _regex(r"^unet\..*\.attn1\.")),
    "unet_non_cross": ("UNet without cross-attention and time embedding (ESD-u).", _unet_non_cross),
    "unet_transformer": (
        "Every parameter inside the UNet's transformer blocks (SPM).",
        _regex(r"^unet\..*\.attentions\.\d+\."),
    ),
    "unet": ("Every UNet parameter.", _regex(r"^unet\.")),
    "text_mlp": (
        "Text-encoder MLP fc1/fc2 of every layer.",
        _text_layers(r"mlp\.fc[12]\.", lambda i, n: True),
    ),
    "text_attn": (
        "Text-encoder self-attention of every layer.",
        _text_layers(r"self_attn\.", lambda i, n: True),
    ),
    "text_attn_last": (
        "Self-attention of the text encoder's last layer.",
        _text_layers(r"self_attn\.", lambda i, n: i == n - 1),
    ),
    "text_token_embedding": (
        "The text encoder's token-embedding table.",
        _regex(r"^text_encoder\..*token_embedding\."),
    ),
    "text_encoder": ("Every text-encoder parameter.", _regex(r"^text_encoder\.")),
}


def describe_targets() -> dict[str, str]:
    """Target name -> one-line description (for `erasekit methods` and docs)."""
    return {name: desc for name, (desc, _rule) in SD_TARGETS.items()}


def resolve_parameters(
    named_params: dict[str, nn.Parameter], target: str | Iterable[str], n_text_layers: int
) -> dict[str, nn.Parameter]:
    """Parameters selected by one or several targets (union), in model order."""
    rules = []
    for name in split_targets(target):
        if name not in SD_TARGETS:
            raise ErasekitError(f"Unknown parameter target {name!r}; choose from: {', '.join(SD_TARGETS)}.")
        rules.append(SD_TARGETS[name][1])
    selected = {n: p for n, p in named_params.items() if any(rule(n, n_text_layers) for rule in rules)}
    if not selected:
        raise ErasekitError(f"Target {target!r} matches no parameter of this model; pick another target.")
    return selected
