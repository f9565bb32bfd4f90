"""The real CLIP BPE tokenizer (49,408 tokens), built offline.

The vocabulary ships inside the ``open-clip-torch`` wheel as ``bpe_simple_vocab_16e6.txt.gz``. We locate
it with :func:`importlib.util.find_spec` (importing ``open_clip`` would import torchvision), rebuild the
Hugging Face ``vocab.json`` / ``merges.txt`` pair from it, and construct a ``CLIPTokenizer``.

Every tokenizer we hand out goes through :func:`check_tokenizer`: an offline
``CLIPTokenizer.from_pretrained`` can silently return a 2-token tokenizer, which would make every
prompt encode to the same ids and every erasure meaningless.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

from erasekit.errors import ErasekitError

CLIP_VOCAB_SIZE = 49408
_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte-to-unicode table (printable bytes map to themselves)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def find_bpe_file() -> Path:
    """Path of the CLIP BPE merges file inside the installed open-clip-torch wheel."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ErasekitError(
            "The CLIP vocabulary is missing: run `pip install --no-deps open-clip-torch` "
            "(it ships bpe_simple_vocab_16e6.txt.gz)."
        )
    path = Path(spec.origin).parent / _BPE_FILENAME
    if not path.is_file():
        raise ErasekitError(f"{path} is missing: reinstall with `pip install --no-deps open-clip-torch`.")
    return path


def read_clip_bpe(bpe_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild CLIP's vocabulary (token -> id) and BPE merges from open_clip's merges file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # Same slice as OpenAI CLIP: 49152 - 256 - 2 merges after the header line.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def check_tokenizer(tokenizer, source: str = "tokenizer"):
    """Raise unless ``tokenizer`` is a full CLIP vocabulary that splits ordinary words."""
    size = len(tokenizer)
    if size < 1000:
        raise ErasekitError(
            f"{source} has only {size} tokens (a broken offline load); "
            "pass a model folder that contains tokenizer/vocab.json and merges.txt."
        )
    ids = tokenizer("a photo of a red star").input_ids
    if len(set(ids)) < 5:
        raise ErasekitError(f"{source} maps ordinary words to unknown tokens; check its vocabulary files.")
    return tokenizer


@functools.lru_cache(maxsize=4)
def _clip_tokenizer_cached(model_max_length: int) -> CLIPTokenizer:
    vocab, merges = read_clip_bpe(find_bpe_file())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise ErasekitError(
            f"CLIP vocabulary has {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}; "
            "reinstall open-clip-torch."
        )
    return check_tokenizer(tokenizer, "CLIP tokenizer")


def load_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP tokenizer (49,408 tokens), built from the open-clip-torch wheel, offline.

    Args:
        model_max_length: Padded prompt length; SD uses 77, tiny models may use fewer.
    """
    return _clip_tokenizer_cached(model_max_length)
