"""Autoregressive image-token backend: prompt rows, a KV-cached CFG sampling loop, named targets.

The model family is a decoder-only transformer that writes an image as a raster of discrete codes
after the prompt (LlamaGen, Janus-Pro, ShapesWorld-AR), decoded by a VQ image tokenizer. The loop is
Janus-Pro's ``generation_inference.py`` written out:

    rows = [cond_1 .. cond_N ; uncond_1 .. uncond_N]          (HF Janus concatenates; uncond = BOS PAD* BOI)
    for i in 0 .. T-1:   h = LM(next inputs, past_key_values)  (KV cache)
                         l = l_u + g · (l_c − l_u)             (classifier-free guidance, g = ``guidance``)
                         token_i ~ softmax(l / temperature)     (one seeded generator per image)

Sampling draws each image's Gumbel noise [T, K] up front from that image's own generator, so an image
depends only on its prompt and seed, never on the batch it was generated in (as ``SDBackend.sample``).

Methods see the same surface style as the diffusion backend: ``components`` (``{"model": the LM}``),
``parameters_for(target)`` with named targets (``lm_attn``, ``lm_mlp``, ``lm_attn_first_2`` ...),
``hidden_states`` (the LM's last hidden states, i.e. the input of the image head) and ``image_logits``.
``hidden_states`` runs teacher forcing: one causal forward over ``[prompt ⊕ image tokens]`` gives, at
every image position, the same state the KV-cached loop computes (tests/ar check this).

Supported folders (:func:`load_ar_backend`; the zoo detects them with :func:`is_ar_folder`):

* ``erasekit-ar-llama`` — a transformers ``LlamaForCausalLM`` folder with one joint vocabulary
  (special tokens, words, then image codes) plus ``erasekit_ar.json`` and ``vq/``: the shipped
  ShapesWorld-AR model (:class:`JointVocabularyFamily`, LlamaGen-style);
* a Hugging Face Janus / Janus-Pro folder (``config.json`` with ``model_type: janus``, its tokenizer
  and ``generation_config.json``), as ``transformers.JanusForConditionalGeneration`` generates images
  (:class:`JanusFamily`). Tested on a tiny config built in code, saved and reloaded offline; no real
  Janus-Pro checkpoint was run here.

Other families plug in by subclassing :class:`erasekit.backends.ar_families.ARFamily` (embed prompt tokens and image codes, run the
LM, map states to image-code logits, decode/encode images, name the layers).

Embedding-space attacks read the same surface as on a diffusion model: ``token_ids``,
``encode_prompts`` (here the prompt rows' input embeddings, which every layer reads the prompt
through), ``sample_from_embeddings`` and ``encode_images`` (image codes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from erasekit.backends import _quiet  # noqa: F401  (before transformers: silences an irrelevant warning)

# isort: split
from transformers import LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from erasekit.backends.ar_families import LAYOUT_NAME, ARFamily, JanusFamily, JointVocabularyFamily
from erasekit.backends.ar_tokenizer import TemplateTokenizer, WordTokenizer
from erasekit.backends.base import (
    ComponentSurface,
    split_targets,
)
from erasekit.backends.vqvae import VQVAE, load_vqvae
from erasekit.errors import ErasekitError

_FIRST_K = re.compile(r"^lm_(attn|mlp)_first_(\d+)$")

AR_TARGETS: dict[str, str] = {
    "lm_attn": "q/k/v/o projections of every decoder layer.",
    "lm_mlp": "MLP (gate/up/down) of every decoder layer.",
    "lm_attn_first_k": "q/k/v/o of the first k decoder layers, e.g. lm_attn_first_2 (EAR: 5 of 30 in Janus-Pro-7B).",
    "lm_mlp_first_k": "MLP of the first k decoder layers, e.g. lm_mlp_first_2.",
    "image_head": "The output head over image codes.",
    "lm": "Every parameter of the language model.",
}


class ARBackend(ComponentSurface):
    """An autoregressive image-token model seen through erasekit's method-facing surface.

    Args:
        family: The model family (:class:`ARFamily`): the model, its image tokenizer, its layer names.
        tokenizer: Prompt tokenizer with the fixed row layout (``rows``, ``prompt_len``, ``word_ids``).
        name: How the user named the model (recorded in manifests).
        guidance: Default classifier-free guidance scale.
        temperature: Default sampling temperature (0: greedy).
    """

    kind = "ar"
    adapter_types = (nn.Linear,)
    # Diffusion-only attributes some shared code reads; an AR model has no noise schedule.
    prediction_type = "none"
    num_train_timesteps = 0

    def __init__(
        self,
        family: ARFamily,
        tokenizer: Any,
        *,
        name: str = "model",
        guidance: float = 3.0,
        temperature: float = 1.0,
    ):
        self.family, self.tokenizer, self.name = family, tokenizer, name
        self.model = family.root
        self.components: dict[str, nn.Module] = {"model": family.root}
        family.root.requires_grad_(False)
        family.root.eval()
        self.default_guidance, self.default_temperature = float(guidance), float(temperature)
        self.n_layers = int(family.num_layers)
        self.num_image_tokens = family.grid**2
        self.codebook_size = family.codebook_size
        self.prompt_len = tokenizer.prompt_len
        self.default_size = family.image_size

    # ---- prompts ------------------------------------------------------------------------------
    def prompt_rows(self, prompts: Sequence[str], *, uncond: bool = False) -> torch.Tensor:
        """Prompt rows [N, prompt_len] (``uncond=True``: the CFG unconditional layout)."""
        return self.tokenizer.rows(list(prompts), uncond=uncond)

    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt-token ids [N, prompt_len] (the conditional rows; same name as the diffusion surface)."""
        return self.prompt_rows(prompts)

    def guidance_rows(self, prompts: Sequence[str], negative_prompt: str = "") -> torch.Tensor:
        """[cond rows ; uncond rows] [2N, prompt_len], as Janus-Pro pairs them."""
        cond = self.prompt_rows(prompts)
        if negative_prompt:
            uncond = self.prompt_rows([negative_prompt] * len(prompts))
        else:
            uncond = self.prompt_rows(prompts, uncond=True)
        return torch.cat([cond, uncond])

    # ---- prompt embeddings (what embedding-space attacks condition on) --------------------------
    def embed_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings [N, prompt_len, d] of prompt rows: the conditioning the model reads."""
        return self.family.text_embedding()(ids)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Input embeddings of the prompts' conditional rows [N, prompt_len, d] (the AR counterpart of a
        diffusion model's text-encoder states: every later layer reads the prompt through them)."""
        return self.embed_token_ids(self.prompt_rows(prompts))

    def prompt_token_embedding(self) -> nn.Embedding:
        """The embedding table of prompt tokens (its rows are what a token-search attack swaps)."""
        return self.family.text_embedding()

    def prompt_token_pool(self) -> torch.Tensor:
        """Ids a prompt may hold (words; no special tokens, no image codes)."""
        return torch.as_tensor(list(self.tokenizer.word_ids()), dtype=torch.long)

    def insert_prompt_tokens(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Rows with ``tokens`` inserted right after BOS; the row keeps its length and its final BOI.

        Raises:
            ErasekitError: a prompt has no room for ``len(tokens)`` more tokens.
        """
        k, pad = len(tokens), self.tokenizer.pad_id
        body = ids[:, 1:-1]
        used = (body != pad).int().cumsum(1).argmax(1) + 1  # last non-pad position + 1
        used = torch.where((body != pad).any(1), used, torch.zeros_like(used))
        if int(used.max()) + k > body.shape[1]:
            raise ErasekitError(
                f"A prompt is too long for {k} inserted tokens; shorten it or lower n_tokens."
            )
        prefix = tokens.to(ids).unsqueeze(0).expand(len(ids), k)
        return torch.cat([ids[:, :1], prefix, body[:, : body.shape[1] - k], ids[:, -1:]], 1)

    def decode_prompt_tokens(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- the model ----------------------------------------------------------------------------
    def _prompt_embeds(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows given as ids [B, P] or as embeddings [B, P, d] -> embeddings."""
        return self.embed_token_ids(rows) if rows.dtype == torch.long else rows

    def hidden_states(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced hidden states before the image head at every image position.

        Args:
            rows: Prompt rows [B, prompt_len] (ids), or their embeddings [B, prompt_len, d].
            codes: Image codes [B, T'] (T' ≤ T): the token history.

        Returns:
            [B, T', d]: entry i is the state that predicts code i from the prompt and codes < i —
            exactly the state the KV-cached sampling loop computes at step i.
        """
        prompt = self._prompt_embeds(rows)
        seq = torch.cat([prompt, self.family.embed_image(codes[:, :-1]).to(prompt)], 1)
        hidden, _ = self.family.forward(seq)
        return hidden[:, prompt.shape[1] - 1 :]

    def hidden_states_no_context(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The states the public EAR training loop computes (for its ablation), shape as :meth:`hidden_states`.

        Position 0 sees the prompt; every later position sees only the previous image token, alone at
        position 0 (``model(inputs_embeds=<1 token>)`` with no ``past_key_values``).
        """
        first = self.hidden_states(rows, codes[:, :1])
        if codes.shape[1] == 1:
            return first
        b, t = codes.shape
        alone, _ = self.family.forward(self.family.embed_image(codes[:, :-1].reshape(-1, 1)))
        return torch.cat([first, alone.view(b, t - 1, -1)], 1)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits over the image codes from hidden states."""
        return self.family.image_logits(hidden)

    def next_token_logits(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-image-token logits [B, T', K] (rows: ids or embeddings)."""
        return self.image_logits(self.hidden_states(rows, codes))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image codes [N, T] of images [N, 3, H, W] in [0, 1] (the image tokenizer)."""
        if images.shape[-1] != self.default_size or images.shape[-2] != self.default_size:
            raise ErasekitError(
                f"this AR model's image tokenizer takes {self.default_size}px images; got {tuple(images.shape[-2:])}."
            )
        return self.family.encode(images)

    # ---- sampling -----------------------------------------------------------------------------
    def _gumbel(self, seeds: Sequence[int]) -> torch.Tensor:
        noise = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            u = torch.rand(self.num_image_tokens, self.codebook_size, generator=g)
            noise.append(-torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)))
        return torch.stack(noise)

    @torch.no_grad()
    def sample_tokens(
        self,
        prompts: Sequence[str] | None,
        seeds: Sequence[int],
        *,
        guidance: float | None = None,
        temperature: float | None = None,
        negative_prompt: str = "",
        use_cache: bool = True,
        num_tokens: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image codes [N, T] by the CFG loop (see the module docstring).

        ``prompt_embeds`` [N, prompt_len, d] replaces the prompts' conditional rows by given input
        embeddings (``prompts`` None); the unconditional rows stay the model's own. ``use_cache=False``
        recomputes the whole sequence every step (the reference the cache is tested against); both
        give the same tokens.
        """
        n = len(prompt_embeds) if prompt_embeds is not None else len(prompts or ())
        if n != len(seeds):
            raise ErasekitError(f"Got {n} prompts but {len(seeds)} seeds; pass one seed per prompt.")
        g = self.default_guidance if guidance is None else float(guidance)
        temp = self.default_temperature if temperature is None else float(temperature)
        if temp < 0:
            raise ErasekitError(f"temperature must be ≥ 0; got {temp}")
        steps = num_tokens or self.num_image_tokens
        noise = self._gumbel(seeds)
        if prompt_embeds is None:
            embeds = self.embed_token_ids(self.guidance_rows(prompts, negative_prompt))
        else:
            if negative_prompt:
                uncond = self.prompt_rows([negative_prompt] * n)
            else:
                uncond = self.prompt_rows([""] * n, uncond=True)
            uncond_embeds = self.embed_token_ids(uncond)
            embeds = torch.cat([prompt_embeds.to(uncond_embeds), uncond_embeds])
        codes = torch.zeros(n, 0, dtype=torch.long)
        past, inputs = None, embeds
        if use_cache:
            from transformers import DynamicCache

            past = DynamicCache()
        for i in range(steps):
            if use_cache:
                hidden, past = self.family.forward(inputs, past)
            else:
                history = self.family.embed_image(torch.cat([codes, codes])).to(embeds)
                hidden, _ = self.family.forward(torch.cat([embeds, history], 1))
            logits = self.image_logits(hidden[:, -1]).float()
            cond, uncond = logits[:n], logits[n:]
            mixed = uncond + g * (cond - uncond)
            if temp == 0:
                tok = mixed.argmax(-1)
            else:
                tok = (mixed / temp + noise[:, i]).argmax(-1)  # Gumbel-max = a draw from softmax(l / T)
            codes = torch.cat([codes, tok[:, None]], 1)
            inputs = self.family.embed_image(torch.cat([tok, tok])[:, None]).to(embeds)
        return codes

    @torch.no_grad()
    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] from image codes [N, T]."""
        return torch.cat([self.family.decode(codes[i : i + 256]) for i in range(0, len(codes), 256)]).float()

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int = 25,
        guidance: float | None = None,
        negative_prompt: str = "",
        size: int | None = None,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """Generate one image per (prompt, seed): float32 [N, 3, H, W] in [0, 1] on CPU.

        Same signature as ``SDBackend.sample``. ``steps`` (denoising steps) has no counterpart in
        next-token generation, which always writes all T image tokens; it is accepted so callers can
        treat backends alike. ``guidance`` None means the model's default.
        """
        if size is not None and int(size) != self.default_size:
            raise ErasekitError(
                f"this AR model makes {self.default_size}px images only; drop --size or pass {self.default_size}."
            )
        codes = self.sample_tokens(
            prompts, seeds, guidance=guidance, temperature=temperature, negative_prompt=negative_prompt
        )
        return self.decode_tokens(codes)

    def sample_from_embeddings(
        self,
        cond: torch.Tensor,
        seeds: Sequence[int],
        *,
        steps: int = 25,
        guidance: float | None = None,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """Images from prompt input embeddings [N, prompt_len, d] (see :meth:`encode_prompts`), one seed
        each; embeddings equal to a prompt's encoding reproduce :meth:`sample` for that prompt and seed."""
        codes = self.sample_tokens(
            None, seeds, guidance=guidance, temperature=temperature, prompt_embeds=cond
        )
        return self.decode_tokens(codes)

    # ---- targets ------------------------------------------------------------------------------
    def _layer(self, name: str) -> int | None:
        prefix = self.family.layer_prefix
        if not name.startswith(prefix):
            return None
        index = name[len(prefix) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def _matches(self, target: str, name: str) -> bool:
        layer = self._layer(name)
        attn = layer is not None and ".self_attn." in name and re.search(r"\.[qkvo]_proj\.", name) is not None
        mlp = layer is not None and ".mlp." in name
        if target == "lm_attn":
            return attn
        if target == "lm_mlp":
            return mlp
        if target == "image_head":
            return name.startswith(self.family.head_prefix)
        if target == "lm":
            return name.startswith(self.family.lm_prefix)
        first = _FIRST_K.match(target)
        if first:
            kind, k = first.group(1), int(first.group(2))
            if k < 1 or k > self.n_layers:
                raise ErasekitError(f"Target {target}: k must be 1..{self.n_layers} for this model.")
            return (attn if kind == "attn" else mlp) and layer < k
        raise ErasekitError(
            f"Unknown AR target {target!r}; valid: lm_attn, lm_mlp, lm_attn_first_K, lm_mlp_first_K, image_head, lm."
        )

    def parameters_for(self, target: str | Iterable[str]) -> dict[str, nn.Parameter]:
        """Parameters named by a target (``"lm_attn_first_2"``, ``"lm_mlp+image_head"`` ...)."""
        names = split_targets(target)
        params = self.named_parameters()
        out = {n: p for n, p in params.items() if any(self._matches(t, n) for t in names)}
        if not out:
            raise ErasekitError(
                f"Target {target!r} selects no parameters of this model; pick another target."
            )
        return out


# ---- loading -----------------------------------------------------------------------------------
# Hugging Face model types this backend loads from their own folder (config.json), no erasekit layout.
HF_FAMILIES = ("janus",)
# Janus-Pro's SFT prompt format (deepseek-ai/Janus generation_inference.py, empty system prompt).
JANUS_TEMPLATE = "<|User|>: {}\n\n<|Assistant|>:"


def _hf_model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, OSError, AttributeError):
        return None


def is_ar_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder this backend loads: ``erasekit_ar.json``, or a Hugging Face
    folder of an AR image family (:data:`HF_FAMILIES`, by ``config.json``'s ``model_type``)."""
    folder = Path(path).expanduser()
    return (folder / LAYOUT_NAME).is_file() or _hf_model_type(folder) in HF_FAMILIES


def load_ar_backend(
    model: str | Path,
    *,
    name: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    **_: object,
) -> ARBackend:
    """Load a local AR image-model folder (see the module docstring) as an :class:`ARBackend`.

    ``model == "tiny-ar"`` builds a random, seeded tiny model in code (tests).
    """
    if str(model) == "tiny-ar":
        return build_tiny_ar_backend()
    folder = Path(model).expanduser()
    if not is_ar_folder(folder):
        raise ErasekitError(
            f"{folder} is not an AR image-model folder (no {LAYOUT_NAME}, no Janus config.json); pass shapes-ar or such a folder."
        )
    if device != "cpu":
        raise ErasekitError("the AR backend runs on cpu only for now; pass --device cpu.")
    layout = json.loads((folder / LAYOUT_NAME).read_text()) if (folder / LAYOUT_NAME).is_file() else {}
    fmt = layout.get("format") or _hf_model_type(folder)
    transformers_logging.disable_progress_bar()
    if fmt == "janus":
        return _load_janus(folder, layout, name=name or str(model), dtype=dtype)
    if fmt != "erasekit-ar-llama":
        raise ErasekitError(
            f"{folder}: AR format {fmt!r} is not supported; supported: erasekit-ar-llama, janus."
        )
    lm = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    vq = load_vqvae(folder / layout.get("vq_folder", "vq"))
    tokenizer = WordTokenizer.from_dict(layout["tokenizer"])
    if int(layout["image_offset"]) != tokenizer.image_offset:
        raise ErasekitError(
            f"{folder}/{LAYOUT_NAME}: image_offset does not match the tokenizer; re-export the folder."
        )
    return ARBackend(
        JointVocabularyFamily(lm, vq, tokenizer.image_offset),
        tokenizer,
        name=name or str(model),
        guidance=float(layout.get("default_guidance", 3.0)),
        temperature=float(layout.get("default_temperature", 1.0)),
    )


def _load_janus(folder: Path, layout: dict, *, name: str, dtype: torch.dtype) -> ARBackend:
    """A Hugging Face Janus / Janus-Pro folder: ``config.json`` + weights, its tokenizer, and
    ``generation_config.json`` (``bos_token_id``, ``pad_token_id``, ``generation_kwargs.boi_token_id``,
    ``guidance_scale``, ``temperature``). An optional ``erasekit_ar.json`` may set ``prompt_len`` and
    ``template`` (default: Janus-Pro's SFT format) and the sampling defaults."""
    from transformers import AutoTokenizer, GenerationConfig, JanusForConditionalGeneration

    generation = (
        GenerationConfig.from_pretrained(folder, local_files_only=True)
        if (folder / "generation_config.json").is_file()
        else GenerationConfig()
    )
    boi = (getattr(generation, "generation_kwargs", None) or {}).get(
        "boi_token_id", layout.get("boi_token_id")
    )
    missing = [
        key
        for key, value in (
            ("bos_token_id", generation.bos_token_id),
            ("pad_token_id", generation.pad_token_id),
            ("generation_kwargs.boi_token_id", boi),
        )
        if value is None
    ]
    if missing:
        raise ErasekitError(
            f"{folder}/generation_config.json lacks {', '.join(missing)}; a Janus folder needs them for its prompt rows."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = JanusForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
    prompt_tokenizer = TemplateTokenizer(
        tokenizer,
        bos_id=generation.bos_token_id,
        pad_id=generation.pad_token_id,
        boi_id=boi,
        prompt_len=int(layout.get("prompt_len", 64)),
        template=str(layout.get("template", JANUS_TEMPLATE)),
    )
    return ARBackend(
        JanusFamily(model),
        prompt_tokenizer,
        name=name,
        guidance=float(layout.get("default_guidance", generation.guidance_scale or 5.0)),
        temperature=float(layout.get("default_temperature", generation.temperature or 1.0)),
    )


TINY_WORDS: tuple[str, ...] = tuple(
    "a an on background with shape , red green blue yellow star circle square triangle plain striped dotted".split()
)


def build_tiny_ar_backend(seed: int = 0) -> ARBackend:
    """A random, seeded tiny AR model (2 Llama layers of width 32, 16-px images as 4×4 codes of 32)."""
    from transformers import LlamaConfig

    from erasekit.backends.vqvae import VQConfig

    tokenizer = WordTokenizer(words=TINY_WORDS, prompt_len=10)
    torch.manual_seed(seed)
    vq = VQVAE(VQConfig(image_size=16, channels=(8, 16, 16), codebook_size=32, embed_dim=4))
    config = LlamaConfig(
        vocab_size=tokenizer.image_offset + 32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=tokenizer.prompt_len + 16,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.boi_id,
        pad_token_id=tokenizer.pad_id,
        tie_word_embeddings=False,
    )
    lm = LlamaForCausalLM(config)
    return ARBackend(
        JointVocabularyFamily(lm, vq, tokenizer.image_offset),
        tokenizer,
        name="tiny-ar",
        guidance=3.0,
        temperature=1.0,
    )
