"""Prompt layout of an autoregressive image-token model: a word tokenizer and the Janus-Pro row layout.

A prompt becomes a fixed-length row ``[BOS] w_1 .. w_n [PAD]* [BOI]`` (``prompt_len`` tokens), then the
model generates ``grid²`` image tokens. The unconditional row of classifier-free guidance keeps BOS and
BOI and replaces everything between by PAD, as Janus-Pro's ``generation_inference.py`` does
(``tokens[1::2, 1:-1] = pad_id``). A fixed layout puts the first image token at the same position for
every prompt, so conditional and unconditional rows share positions and a batch needs no attention mask.

The vocabulary is one table: special tokens, then words, then the image codes
(``image_offset + code``). The model's next-token logits are sliced to the image-code range.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from erasekit.errors import ErasekitError

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<boi>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass(frozen=True)
class WordTokenizer:
    """Lower-cased word-level tokenizer with a fixed row layout (see the module docstring)."""

    words: tuple[str, ...]
    """The word vocabulary (after the special tokens)."""
    prompt_len: int = 24
    """Tokens per prompt row, BOS and BOI included."""

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def boi_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    @property
    def image_offset(self) -> int:
        """Id of image code 0."""
        return len(SPECIALS) + len(self.words)

    @property
    def max_words(self) -> int:
        return self.prompt_len - 2

    def _index(self) -> dict[str, int]:
        return {w: i + len(SPECIALS) for i, w in enumerate(self.words)}

    def split(self, prompt: str) -> list[str]:
        return _WORD.findall(prompt.lower())

    def encode(self, prompt: str) -> list[int]:
        """Word ids of ``prompt`` (unknown words -> ``<unk>``)."""
        index = self._index()
        return [index.get(w, self.unk_id) for w in self.split(prompt)]

    def rows(self, prompts: Sequence[str], *, uncond: bool = False) -> torch.Tensor:
        """Prompt rows [N, prompt_len] (long). ``uncond=True`` gives the CFG unconditional rows.

        Raises:
            ErasekitError: a prompt has more words than fit.
        """
        out = torch.full((len(prompts), self.prompt_len), self.pad_id, dtype=torch.long)
        out[:, 0] = self.bos_id
        out[:, -1] = self.boi_id
        if uncond:
            return out
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            if len(ids) > self.max_words:
                raise ErasekitError(
                    f"prompt {p!r} has {len(ids)} words; this model takes at most {self.max_words}, shorten it."
                )
            out[i, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def word_ids(self) -> range:
        """Ids of the words (no special tokens, no image codes)."""
        return range(len(SPECIALS), self.image_offset)

    def decode(self, ids: Sequence[int]) -> str:
        vocab = SPECIALS + self.words
        return " ".join(vocab[i] if 0 <= i < len(vocab) else "<?>" for i in ids)

    def to_dict(self) -> dict:
        return {
            "type": "word",
            "words": list(self.words),
            "prompt_len": self.prompt_len,
            "specials": list(SPECIALS),
        }

    @classmethod
    def from_dict(cls, data: dict) -> WordTokenizer:
        if data.get("type") != "word" or list(data.get("specials", [])) != list(SPECIALS):
            raise ErasekitError("unsupported AR tokenizer description; expected the erasekit word tokenizer.")
        return cls(words=tuple(data["words"]), prompt_len=int(data["prompt_len"]))


class TemplateTokenizer:
    """A Hugging Face tokenizer in the same fixed row layout, with a prompt template (Janus-Pro's SFT
    format ``"<|User|>: {}\n\n<|Assistant|>:"``): ``[BOS] template(prompt) [PAD]* [BOI]``.

    Janus-Pro's own processor left-pads a batch and masks the pads; this layout pads between the prompt
    and BOI instead (what Janus-Pro's unconditional rows already look like), so every row's image starts
    at the same position and no attention mask is needed. A prompt that fills the row has no pads.
    """

    def __init__(self, tokenizer, *, bos_id: int, pad_id: int, boi_id: int, prompt_len: int, template: str):
        if "{}" not in template:
            raise ErasekitError(f"prompt template {template!r} has no {{}} for the prompt; add one.")
        self.tokenizer, self.template, self.prompt_len = tokenizer, template, int(prompt_len)
        self.bos_id, self.pad_id, self.boi_id = int(bos_id), int(pad_id), int(boi_id)

    @property
    def max_words(self) -> int:
        return self.prompt_len - 2

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(self.template.format(prompt), add_special_tokens=False)["input_ids"])

    def rows(self, prompts: Sequence[str], *, uncond: bool = False) -> torch.Tensor:
        out = torch.full((len(prompts), self.prompt_len), self.pad_id, dtype=torch.long)
        out[:, 0], out[:, -1] = self.bos_id, self.boi_id
        if uncond:
            return out
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            if len(ids) > self.max_words:
                raise ErasekitError(
                    f"prompt {p!r} takes {len(ids)} tokens with the template; this model's rows hold {self.max_words}, shorten it."
                )
            out[i, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def word_ids(self) -> list[int]:
        special = {self.bos_id, self.pad_id, self.boi_id, *self.tokenizer.all_special_ids}
        return [i for i in range(len(self.tokenizer)) if i not in special]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


def build_vocabulary(texts: Sequence[str]) -> tuple[str, ...]:
    """Sorted unique words of ``texts`` (how the ShapesWorld-AR vocabulary is made)."""
    words: set[str] = set()
    for t in texts:
        words.update(_WORD.findall(t.lower()))
    return tuple(sorted(words))
