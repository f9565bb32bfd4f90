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

Supported folders: ``erasekit-ar-llama`` (a transformers ``LlamaForCausalLM`` folder with one joint
vocabulary — special tokens, words, then image codes — plus ``erasekit_ar.json`` and ``vq/``; the
shipped ShapesWorld-AR model). Other families (Janus-Pro's separate ``generation_head``, LlamaGen's
class/text conditioning) plug in by providing the three calls of :class:`ARFamily`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from erasekit.backends import _quiet  # noqa: F401  (before transformers: silences an irrelevant warning)

# isort: split
from transformers import LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from erasekit.backends.ar_tokenizer import WordTokenizer
from erasekit.backends.base import (
    fingerprint_components,
    modules_for_target,
    named_modules_of,
    named_parameters_of,
    split_targets,
)
from erasekit.backends.vqvae import VQVAE, load_vqvae
from erasekit.errors import ErasekitError

LAYOUT_NAME = "erasekit_ar.json"
_LAYER = re.compile(r"^model\.model\.layers\.(\d+)\.")
_FIRST_K = re.compile(r"^lm_(attn|mlp)_first_(\d+)$")

AR_TARGETS: dict[str, str] = {
    "lm_attn": "q/k/v/o projections of every decoder layer.",
    "lm_mlp": "MLP (gate/up/down) of every decoder layer.",
    "lm_attn_first_k": "q/k/v/o of the first k decoder layers, e.g. lm_attn_first_2 (EAR: 5 of 30 in Janus-Pro-7B).",
    "lm_mlp_first_k": "MLP of the first k decoder layers, e.g. lm_mlp_first_2.",
    "image_head": "The output head over image codes.",
    "lm": "Every parameter of the language model.",
}


class ARFamily:
    """How one model family embeds tokens and maps hidden states to image-code logits.

    This is the joint-vocabulary Llama family (ShapesWorld-AR; LlamaGen-style): image code ``c`` is
    vocabulary id ``image_offset + c`` and its logits are a slice of ``lm_head``.
    """

    def __init__(self, model: LlamaForCausalLM, image_offset: int, codebook_size: int):
        self.model = model
        self.image_offset = image_offset
        self.codebook_size = codebook_size
        if model.config.vocab_size < image_offset + codebook_size:
            raise ErasekitError(
                f"model vocabulary ({model.config.vocab_size}) is smaller than image_offset + codebook_size; the folder's {LAYOUT_NAME} does not match its model."
            )

    def forward(self, ids: torch.Tensor, past_key_values=None):
        """Last hidden states [B, L, d] (after the final norm) and the updated cache."""
        out = self.model.model(input_ids=ids, cache=past_key_values, use_cache=past_key_values is not None)
        return out.last_hidden_state, past_key_values

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the K image codes [..., K] from hidden states [..., d]."""
        head = self.model.lm_head
        lo, hi = self.image_offset, self.image_offset + self.codebook_size
        bias = head.bias[lo:hi] if head.bias is not None else None
        return nn.functional.linear(hidden, head.weight[lo:hi], bias)

    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return codes + self.image_offset


class ARBackend:
    """An autoregressive image-token model seen through erasekit's method-facing surface.

    Args:
        model: The language model (``LlamaForCausalLM`` with a joint vocabulary).
        vq: The image tokenizer (codes -> images).
        tokenizer: Prompt tokenizer with the fixed row layout.
        name: How the user named the model (recorded in manifests).
        guidance: Default classifier-free guidance scale.
        temperature: Default sampling temperature (0: greedy).
    """

    kind = "ar"
    # Diffusion-only attributes some shared code reads; an AR model has no noise schedule.
    prediction_type = "none"
    num_train_timesteps = 0

    def __init__(
        self,
        model: LlamaForCausalLM,
        vq: VQVAE,
        tokenizer: WordTokenizer,
        *,
        name: str = "model",
        guidance: float = 3.0,
        temperature: float = 1.0,
    ):
        self.model, self.vq, self.tokenizer, self.name = model, vq, tokenizer, name
        self.family = ARFamily(model, tokenizer.image_offset, vq.config.codebook_size)
        self.components: dict[str, nn.Module] = {"model": model}
        for module in (model, vq):
            module.requires_grad_(False)
            module.eval()
        self.default_guidance, self.default_temperature = float(guidance), float(temperature)
        self.n_layers = int(model.config.num_hidden_layers)
        self.num_image_tokens = vq.config.grid**2
        self.codebook_size = vq.config.codebook_size
        self.prompt_len = tokenizer.prompt_len
        self.default_size = vq.config.image_size

    # ---- prompts ------------------------------------------------------------------------------
    def prompt_rows(self, prompts: Sequence[str], *, uncond: bool = False) -> torch.Tensor:
        """Prompt rows [N, prompt_len] (``uncond=True``: the CFG unconditional layout)."""
        return self.tokenizer.rows(list(prompts), uncond=uncond)

    def guidance_rows(self, prompts: Sequence[str], negative_prompt: str = "") -> torch.Tensor:
        """[cond rows ; uncond rows] [2N, prompt_len], as Janus-Pro pairs them."""
        cond = self.prompt_rows(prompts)
        if negative_prompt:
            uncond = self.prompt_rows([negative_prompt] * len(prompts))
        else:
            uncond = self.prompt_rows(prompts, uncond=True)
        return torch.cat([cond, uncond])

    # ---- the model ----------------------------------------------------------------------------
    def hidden_states(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced hidden states before the image head at every image position.

        Args:
            rows: Prompt rows [B, prompt_len].
            codes: Image codes [B, T'] (T' ≤ T): the token history.

        Returns:
            [B, T', d]: entry i is the state that predicts code i from the prompt and codes < i —
            exactly the state the KV-cached sampling loop computes at step i.
        """
        seq = torch.cat([rows, self.family.image_ids(codes[:, :-1])], 1)
        hidden, _ = self.family.forward(seq)
        return hidden[:, rows.shape[1] - 1 :]

    def hidden_states_no_context(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The states the public EAR training loop computes (for its ablation), shape as :meth:`hidden_states`.

        Position 0 sees the prompt; every later position sees only the previous image token, alone at
        position 0 (``model(inputs_embeds=<1 token>)`` with no ``past_key_values``).
        """
        first = self.hidden_states(rows, codes[:, :1])
        if codes.shape[1] == 1:
            return first
        b, t = codes.shape
        alone, _ = self.family.forward(self.family.image_ids(codes[:, :-1]).reshape(-1, 1))
        return torch.cat([first, alone.view(b, t - 1, -1)], 1)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits over the image codes from hidden states."""
        return self.family.image_logits(hidden)

    def next_token_logits(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-image-token logits [B, T', K]."""
        return self.image_logits(self.hidden_states(rows, codes))

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
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        guidance: float | None = None,
        temperature: float | None = None,
        negative_prompt: str = "",
        use_cache: bool = True,
        num_tokens: int | None = None,
    ) -> torch.Tensor:
        """Image codes [N, T] by the CFG loop (see the module docstring).

        ``use_cache=False`` recomputes the whole sequence every step (the reference the cache is tested
        against); both give the same tokens.
        """
        if len(prompts) != len(seeds):
            raise ErasekitError(
                f"Got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt."
            )
        g = self.default_guidance if guidance is None else float(guidance)
        temp = self.default_temperature if temperature is None else float(temperature)
        if temp < 0:
            raise ErasekitError(f"temperature must be ≥ 0; got {temp}")
        n, steps = len(prompts), num_tokens or self.num_image_tokens
        noise = self._gumbel(seeds)
        rows = self.guidance_rows(prompts, negative_prompt)
        codes = torch.zeros(n, 0, dtype=torch.long)
        past, inputs = None, rows
        if use_cache:
            from transformers import DynamicCache

            past = DynamicCache()
        for i in range(steps):
            if use_cache:
                hidden, past = self.family.forward(inputs, past)
            else:
                seq = torch.cat([rows, self.family.image_ids(torch.cat([codes, codes]))], 1)
                hidden, _ = self.family.forward(seq)
            logits = self.image_logits(hidden[:, -1]).float()
            cond, uncond = logits[:n], logits[n:]
            mixed = uncond + g * (cond - uncond)
            if temp == 0:
                tok = mixed.argmax(-1)
            else:
                tok = (mixed / temp + noise[:, i]).argmax(-1)  # Gumbel-max = a draw from softmax(l / T)
            codes = torch.cat([codes, tok[:, None]], 1)
            inputs = self.family.image_ids(torch.cat([tok, tok])[:, None])
        return codes

    @torch.no_grad()
    def decode_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] from image codes [N, T]."""
        return torch.cat(
            [self.vq.decode_codes(codes[i : i + 256]) for i in range(0, len(codes), 256)]
        ).float()

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

    # ---- targets ------------------------------------------------------------------------------
    def named_parameters(self) -> dict[str, nn.Parameter]:
        return named_parameters_of(self.components)

    def named_modules(self) -> dict[str, nn.Module]:
        return named_modules_of(self.components)

    def _matches(self, target: str, name: str) -> bool:
        layer = _LAYER.match(name)
        attn = layer is not None and ".self_attn." in name and re.search(r"\.[qkvo]_proj\.", name) is not None
        mlp = layer is not None and ".mlp." in name
        if target == "lm_attn":
            return attn
        if target == "lm_mlp":
            return mlp
        if target == "image_head":
            return name.startswith("model.lm_head.")
        if target == "lm":
            return name.startswith("model.")
        first = _FIRST_K.match(target)
        if first:
            kind, k = first.group(1), int(first.group(2))
            if k < 1 or k > self.n_layers:
                raise ErasekitError(f"Target {target}: k must be 1..{self.n_layers} for this model.")
            return (attn if kind == "attn" else mlp) and int(layer.group(1)) < k
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

    def modules_for(
        self, target: str | Iterable[str], types: tuple[type, ...] = (nn.Linear,)
    ) -> dict[str, nn.Module]:
        return modules_for_target(self.parameters_for(target), self.named_modules(), target, types)

    def fingerprint(self) -> str:
        return fingerprint_components(self.components)


# ---- loading -----------------------------------------------------------------------------------
def is_ar_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder this backend loads (has ``erasekit_ar.json``)."""
    return (Path(path) / LAYOUT_NAME).is_file()


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
            f"{folder} is not an AR image-model folder (no {LAYOUT_NAME}); pass shapes-ar or such a folder."
        )
    if device != "cpu":
        raise ErasekitError("the AR backend runs on cpu only for now; pass --device cpu.")
    layout = json.loads((folder / LAYOUT_NAME).read_text())
    if layout.get("format") != "erasekit-ar-llama":
        raise ErasekitError(
            f"{folder}: AR format {layout.get('format')!r} is not supported; supported: erasekit-ar-llama."
        )
    transformers_logging.disable_progress_bar()
    lm = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    vq = load_vqvae(folder / layout.get("vq_folder", "vq"))
    tokenizer = WordTokenizer.from_dict(layout["tokenizer"])
    if int(layout["image_offset"]) != tokenizer.image_offset:
        raise ErasekitError(
            f"{folder}/{LAYOUT_NAME}: image_offset does not match the tokenizer; re-export the folder."
        )
    return ARBackend(
        lm,
        vq,
        tokenizer,
        name=name or str(model),
        guidance=float(layout.get("default_guidance", 3.0)),
        temperature=float(layout.get("default_temperature", 1.0)),
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
    return ARBackend(lm, vq, tokenizer, name="tiny-ar", guidance=3.0, temperature=1.0)
