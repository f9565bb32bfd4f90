"""Autoregressive image-token model families: the plug point :class:`ARFamily` and the two shipped.

A family says how one model embeds prompt tokens and image codes, runs its language model, maps hidden
states to image-code logits, decodes/encodes images and names its layers;
:class:`erasekit.backends.ar.ARBackend` builds prompt rows, the KV-cached CFG loop, teacher forcing and
the named targets on top of it. Shipped: :class:`JointVocabularyFamily` (ShapesWorld-AR,
LlamaGen-style one vocabulary) and :class:`JanusFamily` (HF ``JanusForConditionalGeneration``).
"""

from __future__ import annotations

import torch
from torch import nn

from erasekit.backends import _quiet  # noqa: F401  (before transformers: silences an irrelevant warning)

# isort: split
from transformers import LlamaForCausalLM

from erasekit.backends.vqvae import VQVAE
from erasekit.errors import ErasekitError

LAYOUT_NAME = "erasekit_ar.json"
"""The layout file of an erasekit AR folder (vocabulary offsets, row layout, sampling defaults)."""


class ARFamily:
    """The plug point: how one model family embeds prompt tokens and image codes, runs its language
    model, maps hidden states to image-code logits, decodes/encodes images, and names its layers.

    A family provides the attributes and calls below; :class:`ARBackend` builds the prompt rows, the
    KV-cached CFG loop, teacher forcing and the named targets on top of them. Two families ship:
    :class:`JointVocabularyFamily` (ShapesWorld-AR; LlamaGen-style one vocabulary) and
    :class:`JanusFamily` (HF ``JanusForConditionalGeneration``: separate generation embedding,
    aligner and head, Janus-Pro's layout).
    """

    root: nn.Module
    """The whole model (the backend's ``"model"`` component)."""
    layer_prefix: str
    """Qualified name prefix of decoder layer i is ``f"{layer_prefix}{i}."`` (for ``lm_*`` targets)."""
    head_prefix: str
    """Qualified name prefix of the image head (``image_head`` target)."""
    lm_prefix: str
    """Qualified name prefix of the language model (``lm`` target)."""
    num_layers: int
    codebook_size: int
    grid: int
    image_size: int

    def text_embedding(self) -> nn.Embedding:
        """The table prompt-token ids are embedded with (attacks optimise over its rows)."""
        raise NotImplementedError

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, T, d] of image codes [B, T]."""
        raise NotImplementedError

    def forward(self, embeds: torch.Tensor, past_key_values=None):
        """Last hidden states [B, L, d] (after the final norm, i.e. the image head's input) and the cache."""
        raise NotImplementedError

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the K image codes [..., K] from hidden states [..., d]."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] from codes [N, T]."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes [N, T] of images [N, 3, H, W] in [0, 1] (the VQ tokenizer's quantisation)."""
        raise NotImplementedError


def _lm_forward(lm: nn.Module, embeds: torch.Tensor, past_key_values):
    out = lm(inputs_embeds=embeds, cache=past_key_values, use_cache=past_key_values is not None)
    return out.last_hidden_state, past_key_values


class JointVocabularyFamily(ARFamily):
    """One vocabulary for words and image codes (ShapesWorld-AR; LlamaGen-style): image code ``c`` is
    vocabulary id ``image_offset + c``, embedded by the same table, and its logits are a slice of
    ``lm_head``. The image tokenizer is erasekit's VQ-VAE (:mod:`erasekit.backends.vqvae`)."""

    layer_prefix = "model.model.layers."
    head_prefix = "model.lm_head."
    lm_prefix = "model."

    def __init__(self, model: LlamaForCausalLM, vq: VQVAE, image_offset: int):
        self.root, self.model, self.vq = model, model, vq
        self.image_offset = image_offset
        self.codebook_size = vq.config.codebook_size
        self.grid, self.image_size = vq.config.grid, vq.config.image_size
        self.num_layers = int(model.config.num_hidden_layers)
        if model.config.vocab_size < image_offset + self.codebook_size:
            raise ErasekitError(
                f"model vocabulary ({model.config.vocab_size}) is smaller than image_offset + codebook_size; the folder's {LAYOUT_NAME} does not match its model."
            )

    def text_embedding(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(codes + self.image_offset)

    def forward(self, embeds: torch.Tensor, past_key_values=None):
        return _lm_forward(self.model.model, embeds, past_key_values)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        lo, hi = self.image_offset, self.image_offset + self.codebook_size
        bias = head.bias[lo:hi] if head.bias is not None else None
        return nn.functional.linear(hidden, head.weight[lo:hi], bias)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode_codes(codes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images).reshape(len(images), -1)


class JanusFamily(ARFamily):
    """Hugging Face ``JanusForConditionalGeneration`` (Janus / Janus-Pro), as its ``generate(...,
    generation_mode="image")`` runs: prompt words through the LM's ``embed_tokens``, image codes
    through ``generation_embeddings`` + ``generation_aligner``, logits from ``generation_head`` on the
    LM's last hidden state, images from ``vqmodel.decode`` (pixels in [-1, 1])."""

    layer_prefix = "model.model.language_model.layers."
    head_prefix = "model.model.generation_head."
    lm_prefix = "model.model.language_model."

    def __init__(self, model: nn.Module):
        self.root, self.model = model, model
        inner = model.model
        self.codebook_size = int(inner.vqmodel.config.num_embeddings)
        self.grid = int(inner.vqmodel.quantize.quant_state_dims[0])
        upsample = 2 ** (len(inner.vqmodel.config.channel_multiplier) - 1)
        self.image_size = self.grid * upsample
        self.num_layers = int(model.config.text_config.num_hidden_layers)

    def text_embedding(self) -> nn.Embedding:
        return self.model.model.language_model.embed_tokens

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.model.generation_aligner(self.model.model.generation_embeddings(codes))

    def forward(self, embeds: torch.Tensor, past_key_values=None):
        return _lm_forward(self.model.model.language_model, embeds, past_key_values)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.model.generation_head(hidden)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return ((self.model.model.vqmodel.decode(codes) + 1) / 2).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.model.vqmodel.encode(images * 2 - 1).image_tokens
        return tokens.reshape(len(images), -1)
