"""Secret spans: detect-secrets + regexes find the planted secrets exactly; token masks use strict overlap."""

from __future__ import annotations

import json

import pytest

from erasekit.codeworld.corpus import SECRET_KINDS, CorpusConfig, build_corpus
from erasekit.errors import ErasekitError
from erasekit.secrets import find_secret_spans, load_forget_file, token_secret_mask


def test_detector_finds_every_planted_kind_exactly():
    corpus = build_corpus(
        CorpusConfig(
            background_files=20, secrets_per_level={16: 1, 1: 1}, unseen_per_kind=1, heldout_files=20
        )
    )
    items = corpus.planted + corpus.unseen
    assert {p.kind for p in items} == set(SECRET_KINDS)
    for item in items:
        spans, kinds = find_secret_spans(item.text)
        assert spans == ((item.start, item.end),), (item.kind, kinds)
    # and nothing in secret-free files
    assert not any(find_secret_spans(text)[0] for text in corpus.heldout_texts)


def test_strict_overlap_leaves_touching_tokens_out():
    offsets = [(0, 0), (0, 5), (5, 6), (6, 10), (10, 11), (11, 14)]  # BOS, 'KEY =', '"', secret, '"', tail
    mask = token_secret_mask(offsets, [(6, 10)])
    assert mask == [False, False, False, True, False, False]
    # a token that straddles the start of the secret is part of it
    assert token_secret_mask([(4, 8)], [(6, 10)]) == [True]


def test_in_file_mask_skips_the_quote_token(tiny_lm):
    text = 'TOKEN = "' + "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5" + '"\n'
    spans, _ = find_secret_spans(text)
    ((start, end),) = spans
    batch = tiny_lm.encode([text])
    offsets = batch.offsets[0]
    mask = token_secret_mask(offsets, spans)
    marked = [o for o, m in zip(offsets, mask) if m]
    # every secret character is covered, and no token outside the span (the quotes) is marked
    assert min(a for a, _ in marked) <= start and max(b for _, b in marked) >= end
    for (a, b), is_secret in zip(offsets, mask):
        if b <= start or a >= end:
            assert not is_secret, (a, b)
    quote = next(i for i, (a, b) in enumerate(offsets) if b == start)
    assert text[offsets[quote][0] : offsets[quote][1]].endswith('"') and not mask[quote]


def test_forget_file_forms(tmp_path):
    secret = "AKIA" + "Q7RZ2M4K8W1T5Y3N"
    text = f"AWS_ACCESS_KEY_ID={secret}\n"
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text(
        json.dumps({"text": text})
        + "\n"
        + json.dumps({"text": "password pw xyz\n", "spans": [[9, 11]]})
        + "\n"
        + json.dumps({"text": "user token abc\n", "secrets": ["abc"]})
        + "\n"
    )
    samples = load_forget_file(jsonl)
    assert [s.secrets() for s in samples] == [[secret], ["pw"], ["abc"]]
    code = tmp_path / "settings.py"
    code.write_text(text)
    assert load_forget_file(code)[0].secrets() == [secret]


@pytest.mark.parametrize(
    "line",
    [
        '{"text": "x = 1"}',  # no secret anywhere
        '{"text": "abc", "spans": [[2, 9]]}',  # span outside the text
        '{"text": "abc", "secrets": ["zz"]}',  # literal not in the text
        '{"spans": [[0, 1]]}',  # no text
        "not json",
    ],
)
def test_bad_forget_files_raise(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ErasekitError):
        load_forget_file(path)
