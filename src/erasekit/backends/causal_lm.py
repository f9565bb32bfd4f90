"""A backend for Hugging Face causal language models (CodeEraser and other LM unlearning methods).

Any local folder that ``AutoModelForCausalLM`` loads (``config.json`` with a ``*ForCausalLM`` /
``*LMHeadModel`` architecture, safetensors weights, a fast tokenizer) becomes a backend with one
component, ``model``. Methods see only this surface: tokenisation **with character offsets** (so secret
spans map to the tokens of the file as the model reads it), logits, greedy / sampled generation, named
targets and a fingerprint. Weights load from safetensors only, offline (``local_files_only``); float16
storage is computed in float32.

Named targets (qualified names ``model.<name in the HF module>``):

- ``lm_mlp``: the MLP (feed-forward) weights of every decoder layer;
- ``lm_attn``: the self-attention projections of every decoder layer;
- ``lm_all``: every parameter (embeddings, norms, layers, head).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from erasekit.backends.base import (
    ComponentSurface,
    split_targets,
)
from erasekit.errors import ErasekitError

_MLP = re.compile(r"^model\..*\.(?:layers|h|blocks)\.\d+\.(?:mlp|feed_forward|ffn)\.")
_ATTN = re.compile(r"^model\..*\.(?:layers|h|blocks)\.\d+\.(?:self_attn|attn|attention)\.")

LM_TARGETS: dict[str, tuple[str, re.Pattern]] = {
    "lm_mlp": ("MLP / feed-forward weights of every decoder layer.", _MLP),
    "lm_attn": ("Self-attention projections of every decoder layer.", _ATTN),
    "lm_all": ("Every parameter of the language model.", re.compile(r"^model\.")),
}


def describe_lm_targets() -> dict[str, str]:
    return {name: desc for name, (desc, _rule) in LM_TARGETS.items()}


@dataclass
class TokenBatch:
    """Right-padded token ids with BOS first, attention mask, and per-token character offsets."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[list[tuple[int, int]]]
    """Per row, per token (BOS and pads: (0, 0)); characters of the row's text."""


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the artifact stack that :func:`erasekit.applying.apply` keeps on it."""
    duplicate = copy.deepcopy(model)
    duplicate.__dict__.pop("_erasekit_stack", None)
    return duplicate


def is_causal_lm_folder(path: str | Path) -> bool:
    """A folder whose ``config.json`` names a causal-LM architecture (cheap: no transformers import)."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, OSError, AttributeError):
        return False
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


class CausalLMBackend(ComponentSurface):
    """One causal LM and its tokenizer behind the method-facing surface.

    Args:
        model: A ``PreTrainedModel`` with a causal-LM head (any module called as
            ``model(input_ids=..., attention_mask=...)`` returning ``.logits``).
        tokenizer: A fast tokenizer (offsets need one).
        name: How the model was named (manifests).
    """

    kind = "causal_lm"

    def __init__(self, model: nn.Module, tokenizer, name: str = "model"):
        if not getattr(tokenizer, "is_fast", False):
            raise ErasekitError(
                "This model's tokenizer is not a fast tokenizer; character offsets need tokenizer.json."
            )
        vocab_rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > vocab_rows:
            raise ErasekitError(
                f"Tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the model's embedding {vocab_rows}; use the model's own tokenizer."
            )
        self.model = model.eval()
        for param in self.model.parameters():  # methods train copies; the backend's weights stay frozen
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.components: dict[str, nn.Module] = {"model": self.model}
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ErasekitError(
                "This model's tokenizer has no pad or eos token; add one to tokenizer_config.json."
            )
        self.data_source = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- tokenisation ---------------------------------------------------------------------------
    def tokenizer_fingerprint(self) -> str:
        """Hash of the vocabulary and merges (an artifact records it; another tokenizer is refused)."""
        state = self.tokenizer.backend_tokenizer.to_str()
        return "sha256:" + hashlib.sha256(state.encode()).hexdigest()[:32]

    def encode(self, texts: Sequence[str], max_len: int | None = None) -> TokenBatch:
        """Tokenise whole files (BOS first, no EOS), truncated to ``max_len`` tokens, right-padded."""
        rows, offsets = [], []
        for text in texts:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
            if self.bos_id is not None:
                ids, offs = [self.bos_id] + ids, [(0, 0)] + offs
            if max_len is not None:
                ids, offs = ids[:max_len], offs[:max_len]
            rows.append(ids)
            offsets.append(offs)
        width = max(1, max(len(r) for r in rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            offsets[i] = offsets[i] + [(0, 0)] * (width - len(r))
        return TokenBatch(input_ids.to(self.device), mask.to(self.device), offsets)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- model calls ----------------------------------------------------------------------------
    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, model: nn.Module | None = None
    ) -> torch.Tensor:
        """Next-token logits [B, T, V] of ``model`` (default: the backend's own)."""
        return (model or self.model)(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        model: nn.Module | None = None,
    ) -> list[list[int]]:
        """Continue each token-id prompt (left-padded into one batch); returns only the new tokens.

        Sampling draws from torch's global generator: seed it (``torch.manual_seed``) for repeatable runs.
        """
        model = model or self.model
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
        kwargs = {"do_sample": do_sample}
        if do_sample:
            kwargs.update(temperature=temperature, top_k=top_k or None)
        out = model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=self.pad_id,
            **kwargs,
        )
        return [row[width:].tolist() for row in out]

    def trainable_copy(self) -> nn.Module:
        """A deep copy of the model to train (methods never change the backend's own weights)."""
        return fresh_copy(self.model)

    # ---- targets --------------------------------------------------------------------------------
    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        """Parameters named by ``lm_mlp``, ``lm_attn``, ``lm_all`` (or ``+``-joined), in model order."""
        rules = []
        for name in split_targets(target):
            if name not in LM_TARGETS:
                raise ErasekitError(
                    f"Unknown target {name!r} for a causal LM; choose from: {', '.join(LM_TARGETS)}."
                )
            rules.append(LM_TARGETS[name][1])
        selected = {n: p for n, p in self.named_parameters().items() if any(r.search(n) for r in rules)}
        if not selected:
            raise ErasekitError(f"Target {target!r} matches no parameter of this model; pick another target.")
        return selected

    def modules_for(
        self, target: str | Iterable[str], types: tuple[type, ...] = (nn.Linear,)
    ) -> dict[str, nn.Module]:
        """Linear modules whose weight a target selects (for LoRA-style adapters)."""
        params = self.parameters_for(target)
        modules = self.named_modules()
        out = {
            n[: -len(".weight")]: modules[n[: -len(".weight")]]
            for n in params
            if n.endswith(".weight") and isinstance(modules.get(n[: -len(".weight")]), types)
        }
        if not out:
            raise ErasekitError(f"Target {target!r} has no Linear layers; pick another target.")
        return out


def load_causal_lm_backend(
    path: str | Path,
    *,
    name: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> CausalLMBackend:
    """Load a local HF causal-LM folder (safetensors only, offline) as a :class:`CausalLMBackend`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from erasekit.backends.sd import check_device

    check_device(device)
    folder = Path(path).expanduser()
    if not is_causal_lm_folder(folder):
        raise ErasekitError(
            f"{folder} is not a Hugging Face causal-LM folder (config.json with a *ForCausalLM architecture)."
        )
    if not any(folder.glob("*.safetensors")):
        raise ErasekitError(
            f"{folder} has no .safetensors weights; convert the checkpoint to safetensors (pickles are not loaded)."
        )
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype
        )
    except (OSError, ValueError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ErasekitError(
            f"Could not load the causal LM in {folder} ({type(error).__name__}: {reason}); pass a complete HF folder."
        ) from error
    return CausalLMBackend(model.to(device), tokenizer, name=name or str(folder))


def build_tiny_causal_lm(
    texts: Sequence[str], *, seed: int = 0, vocab_size: int = 320, hidden: int = 32, layers: int = 2
):
    """A random tiny Llama and a byte-level BPE trained on ``texts``, built in code (tests, smoke runs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer
