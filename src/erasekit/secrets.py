"""Secret spans in code: what CodeEraser unlearns, found the way the field finds them.

CodeEraser (Chu et al. 2025, arXiv 2509.13755, Sec. 3.1) marks the *sensitive* tokens of a forget sample
with Yelp's ``detect-secrets`` plus regular expressions for e-mails and IP addresses (as bigcode's
pii-lib does), and unlearns only those tokens. This module does the same, in-process:

- :func:`find_secret_spans` runs detect-secrets with an explicit plugin list (``transient_settings``,
  nothing read from disk or network) and the e-mail / public-IPv4 regexes, and returns character spans;
- :func:`token_secret_mask` turns character spans into a token mask with **strict** overlap
  (``token_start < span_end and token_end > span_start``). The reference code's inclusive test
  (``<=``/``>=``) also marks the tokens that only *touch* a secret, such as the opening quote;
- :func:`load_forget_file` reads a forget set: code files, folders of them, or JSONL.

JSONL schema (one object per line)::

    {"text": "<the whole file>"}                                 # spans found by the detector
    {"text": "...", "spans": [[start, end], ...]}                 # explicit character spans, [start, end)
    {"text": "...", "secrets": ["<a literal substring>", ...]}    # every occurrence is a span
    optional: "id" (a name), "path" (file name, picks detect-secrets' file-type rules)

Detector hits are widened to the whole credential-like word around them: ``GitHubTokenDetector``, for
instance, reports only the ``ghp`` prefix of ``ghp_…`` as its secret value. Private-key detector hits
(the ``BEGIN … PRIVATE KEY`` header) extend to the key body up to the ``END`` line, which is the part
a model must not reproduce.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from erasekit.errors import ErasekitError

# detect-secrets plugins: the credential detectors CodeEraser keeps, plus the keyword / basic-auth /
# private-key detectors (our corpus plants passwords in connection strings and key bodies). Entropy
# limits are detect-secrets' defaults (Base64 4.5, Hex 3.0).
DETECT_SECRETS_PLUGINS: tuple[dict, ...] = (
    {"name": "AWSKeyDetector"},
    {"name": "ArtifactoryDetector"},
    {"name": "AzureStorageKeyDetector"},
    {"name": "BasicAuthDetector"},
    {"name": "DiscordBotTokenDetector"},
    {"name": "GitHubTokenDetector"},
    {"name": "GitLabTokenDetector"},
    {"name": "JwtTokenDetector"},
    {"name": "KeywordDetector"},
    {"name": "MailchimpDetector"},
    {"name": "NpmDetector"},
    {"name": "OpenAIDetector"},
    {"name": "PrivateKeyDetector"},
    {"name": "PypiTokenDetector"},
    {"name": "SendGridDetector"},
    {"name": "SlackDetector"},
    {"name": "SquareOAuthDetector"},
    {"name": "StripeDetector"},
    {"name": "TelegramBotTokenDetector"},
    {"name": "TwilioKeyDetector"},
    {"name": "Base64HighEntropyString", "limit": 4.5},
    {"name": "HexHighEntropyString", "limit": 3.0},
)

# bigcode pii-lib style patterns. IPs are matched here rather than with detect-secrets'
# IPPublicDetector, whose hits its own default ``is_not_alphanumeric_string`` filter drops (measured).
EMAIL_RE = re.compile(r"(?<![\w.+\-:/~])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])"
)
_WORD_CHARS = re.compile(r"[A-Za-z0-9_\-+/~]")
_KEY_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")


@dataclass(frozen=True)
class ForgetSample:
    """One forget sample: a whole file and the character spans of its secrets."""

    text: str
    spans: tuple[tuple[int, int], ...]
    sample_id: str = ""
    kinds: tuple[str, ...] = field(default=())
    """Detector names per span (``explicit`` when given by the user)."""

    def secrets(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    while start > line_start and _WORD_CHARS.match(text[start - 1]):
        start -= 1
    while end < line_end and (_WORD_CHARS.match(text[end]) or text[end] == "="):  # base64 padding
        end += 1
    return start, end


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for match in re.finditer("\n", text):
        offsets.append(match.end())
    return offsets


def _detect_secrets_spans(text: str, filename: str) -> list[tuple[int, int, str]]:
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import transient_settings

    suffix = Path(filename).suffix or ".txt"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    spans: list[tuple[int, int, str]] = []
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        with transient_settings({"plugins_used": [dict(p) for p in DETECT_SECRETS_PLUGINS]}):
            hits = list(scan_file(tmp))
    finally:
        os.unlink(tmp)
    lines = _line_offsets(text)
    for hit in hits:
        line_start = lines[hit.line_number - 1]
        line_end = text.find("\n", line_start)
        line = text[line_start : len(text) if line_end < 0 else line_end]
        value = hit.secret_value or ""
        if hit.type == "Private Key":
            body_start = line_start + len(line) + 1
            end_match = _KEY_END.search(text, body_start)
            if end_match and body_start < end_match.start():
                spans.append((body_start, end_match.start() - 1, hit.type))
            continue
        for match in re.finditer(re.escape(value), line) if value else ():
            a, b = _widen(text, line_start + match.start(), line_start + match.end())
            spans.append((a, b, hit.type))
    return spans


def _regex_spans(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for match in EMAIL_RE.finditer(text):
        if "example" not in match.group(0).lower():
            spans.append((match.start(), match.end(), "Email"))
    for match in IPV4_RE.finditer(text):
        if ipaddress.ip_address(match.group(0)).is_global:
            spans.append((match.start(), match.end(), "Public IP (ipv4)"))
    return spans


def merge_spans(spans: Sequence[tuple[int, int, str]]) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    """Overlapping or touching spans merged; kinds joined with ``+``."""
    merged: list[list] = []
    for a, b, kind in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
            if kind not in merged[-1][2]:
                merged[-1][2].append(kind)
        else:
            merged.append([a, b, [kind]])
    return tuple((a, b) for a, b, _ in merged), tuple("+".join(k) for _, _, k in merged)


def find_secret_spans(
    text: str, filename: str = "sample.py"
) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    """Character spans ``[start, end)`` of the secrets in ``text`` and the detector that found each."""
    return merge_spans(_detect_secrets_spans(text, filename) + _regex_spans(text))


def token_secret_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: does it overlap a secret span? Strict overlap, ``a < end and b > start``.

    A token that ends exactly where a secret starts (the opening quote) or starts exactly where it ends
    does not overlap it. Tokens with an empty offset range (special tokens) are never secret.
    """
    return [b > a and any(a < end and b > start for start, end in spans) for a, b in offsets]


def _sample(text: str, spans, kinds, sample_id: str, filename: str) -> ForgetSample:
    if spans is None:
        spans, kinds = find_secret_spans(text, filename)
    return ForgetSample(text=text, spans=tuple(spans), sample_id=sample_id, kinds=tuple(kinds))


def _from_json_line(obj: dict, where: str) -> ForgetSample:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise ErasekitError(
            f'{where}: each JSONL line must be an object with a "text" string (see erasekit.secrets).'
        )
    text = obj["text"]
    sample_id = str(obj.get("id", where))
    filename = str(obj.get("path", "sample.py"))
    if "spans" in obj:
        spans = []
        for span in obj["spans"]:
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
                raise ErasekitError(f"{where}: spans must be [start, end] integer pairs.")
            start, end = span
            if not 0 <= start < end <= len(text):
                raise ErasekitError(
                    f"{where}: span [{start}, {end}] lies outside the text (length {len(text)})."
                )
            spans.append((start, end, "explicit"))
        return _sample(text, *merge_spans(spans), sample_id, filename)
    if "secrets" in obj:
        spans = []
        for secret in obj["secrets"]:
            if not isinstance(secret, str) or not secret or secret not in text:
                raise ErasekitError(f"{where}: secret {str(secret)[:12]!r}… does not occur in its text.")
            spans += [(m.start(), m.end(), "explicit") for m in re.finditer(re.escape(secret), text)]
        return _sample(text, *merge_spans(spans), sample_id, filename)
    return _sample(text, None, None, sample_id, filename)


def load_forget_file(path: str | os.PathLike) -> list[ForgetSample]:
    """Forget samples from a JSONL file, a code file, or a folder of code files.

    Raises:
        ErasekitError: the path is missing, a JSONL line is malformed, or no secret is found at all.
    """
    path = Path(path)
    if not path.exists():
        raise ErasekitError(f"Forget file {path} not found; pass a JSONL file, a code file or a folder.")
    samples: list[ForgetSample] = []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path]
    for file in files:
        try:
            content = file.read_text()
        except UnicodeDecodeError:
            raise ErasekitError(
                f"{file} is not UTF-8 text; the forget set takes code files or JSONL."
            ) from None
        if file.suffix == ".jsonl":
            for number, line in enumerate(content.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise ErasekitError(f"{file}:{number} is not valid JSON; one object per line.") from None
                samples.append(_from_json_line(obj, f"{file.name}:{number}"))
        else:
            samples.append(_sample(content, None, None, file.name, file.name))
    with_secrets = [s for s in samples if s.spans]
    if not with_secrets:
        raise ErasekitError(
            f"No secrets found in {path} (detect-secrets + e-mail/IP regexes); pass files that contain some or give explicit spans."
        )
    return with_secrets


def load_text_file(path: str | os.PathLike) -> list[str]:
    """Texts of a retain/unseen file: JSONL with ``text`` fields, a code file, or a folder of files."""
    path = Path(path)
    if not path.exists():
        raise ErasekitError(f"File {path} not found; pass a JSONL file, a code file or a folder.")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    texts: list[str] = []
    for file in files:
        if file.suffix == ".jsonl":
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        raise ErasekitError(
                            f"{file}:{number} is not valid JSON; one object per line."
                        ) from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise ErasekitError(f'{file}:{number}: each line needs a "text" string.')
                    texts.append(obj["text"])
        else:
            texts.append(file.read_text())
    if not texts:
        raise ErasekitError(f"{path} holds no text; pass code files or JSONL with a text field.")
    return texts
