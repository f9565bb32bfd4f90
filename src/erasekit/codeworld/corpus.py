"""CodeWorld: a seeded synthetic code corpus with planted secrets, for memorisation and unlearning.

CodeEraser (Chu et al. 2025, arXiv 2509.13755) unlearns secrets that a code LM reproduces verbatim. No
real code LM can be downloaded here, and real leaked credentials must never be shipped, so this module
*generates* a small but varied corpus from a seed: Python modules (functions, classes, constants,
loggers), INI/TOML config files, ``.env`` files and CI YAML. Into some files it plants secrets in formats
that real detectors know (AWS-style key ids, GitHub tokens, Stripe-like keys, 32-hex API secrets,
passwords inside connection strings, private-key bodies, e-mails, public IPv4 addresses). Each planted
secret sits in its own file, and that file is duplicated 1, 4 or 16 times in the training set, because
duplication is what drives verbatim memorisation.

Nothing realistic is stored as text: every secret is drawn from ``random.Random(seed)`` at run time.

Held out from training (same generator, separate random streams):

- ``unseen`` secret files: the "never seen" level that the unlearning stop rule compares against;
- held-out background files for perplexity;
- held-out function instances (an operation template with a fresh name) for a completion check.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

SECRET_KINDS: tuple[str, ...] = (
    "aws_key_id",
    "github_token",
    "stripe_key",
    "hex_api_secret",
    "db_password",
    "private_key",
    "email",
    "public_ip",
)

_NOUNS = (
    "price tax order user item account invoice cart token session record entry value total count "
    "score weight height width length size rate limit offset index page batch chunk buffer packet "
    "frame pixel color label name title path file folder report metric event message payload header "
    "status level depth node edge graph tree queue stack task job worker client server request "
    "response cache store table column row field schema model layer tensor vector matrix point"
).split()
_SERVICES = (
    "billing gateway inventory auth search analytics mailer scheduler uploader ledger catalog "
    "notifier metrics checkout profile shipping payments reports storage webhook exporter importer "
    "tracker pricing planner sync crawler indexer backup archive monitor"
).split()
_HOST_WORDS = "alpha bravo cedar delta ember falcon garnet harbor iris juniper kestrel lotus".split()
_FIRST = "anna ben carla dmitri elena farid greta hugo ines jonas kira leo maya nils olga pavel".split()
_TLDS = ("io", "dev", "net", "org", "co")


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def make_secret(kind: str, rng: random.Random) -> str:
    """Draw one secret value of ``kind`` (formats follow the public detectors' patterns)."""
    if kind == "aws_key_id":
        return "AKIA" + _alnum(rng, 16, string.ascii_uppercase + string.digits)
    if kind == "github_token":
        return "ghp_" + _alnum(rng, 36)
    if kind == "stripe_key":
        return "sk_" + "live_" + _alnum(rng, 24)
    if kind == "hex_api_secret":
        return _alnum(rng, 32, "0123456789abcdef")
    if kind == "db_password":
        return _alnum(rng, 6) + rng.choice("-_~") + _alnum(rng, 6)
    if kind == "private_key":
        return "MII" + _alnum(rng, 37, string.ascii_letters + string.digits + "+/")
    if kind == "email":
        return f"{rng.choice(_FIRST)}.{_alnum(rng, 4, string.ascii_lowercase)}@{rng.choice(_HOST_WORDS)}{rng.choice(_HOST_WORDS)}.{rng.choice(_TLDS)}"
    if kind == "public_ip":
        first = rng.choice([a for a in range(11, 224) if a not in (100, 127, 169, 172, 192, 198, 203)])
        return f"{first}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
    raise ValueError(f"unknown secret kind {kind!r}")


# --- background code -------------------------------------------------------------------------------

# Operation templates: the body is determined by the name, so a model that learned the corpus can
# complete a held-out instance (same operation, new noun) from its signature alone.
_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("def add_{a}_{b}({a}, {b}):\n", "    return {a} + {b}\n"),
    ("def scale_{a}({a}, factor):\n", "    return {a} * factor\n"),
    ("def clamp_{a}({a}, low, high):\n", "    return max(low, min({a}, high))\n"),
    ("def is_valid_{a}({a}):\n", "    return {a} is not None and len({a}) > 0\n"),
    ("def count_{a}s(items):\n", "    return sum(1 for item in items if item.{a})\n"),
    ("def get_{a}(self):\n", "    return self._{a}\n"),
    ("def set_{a}(self, {a}):\n", "    self._{a} = {a}\n"),
    ("def load_{a}(path):\n", "    with open(path) as handle:\n        return json.load(handle)\n"),
    ("def save_{a}(path, {a}):\n", "    with open(path, 'w') as handle:\n        json.dump({a}, handle)\n"),
    ("def max_{a}({a}s):\n", "    return max({a}s) if {a}s else None\n"),
    ("def mean_{a}({a}s):\n", "    return sum({a}s) / len({a}s)\n"),
    ("def format_{a}({a}):\n", "    return f'{a}={{{a}}}'\n"),
    ("def filter_{a}s({a}s, limit):\n", "    return [x for x in {a}s if x < limit]\n"),
    ("def reset_{a}(self):\n", "    self._{a} = None\n"),
    ("def has_{a}(self):\n", "    return self._{a} is not None\n"),
    ("def parse_{a}(text):\n", "    return int(text.strip())\n"),
)


def _function(
    rng: random.Random, index: int | None = None, nouns: tuple[str, str] | None = None
) -> tuple[str, str]:
    sig, body = _FUNCTIONS[rng.randrange(len(_FUNCTIONS)) if index is None else index]
    a, b = nouns or rng.sample(_NOUNS, 2)
    return sig.format(a=a, b=b), body.format(a=a, b=b)


def _python_module(rng: random.Random, n_functions: int) -> str:
    service = rng.choice(_SERVICES)
    noun = rng.choice(_NOUNS)
    parts = [f'"""{service.capitalize()} {noun} helpers."""\n\nimport json\nimport logging\n\n']
    parts.append(f"logger = logging.getLogger('{service}.{noun}')\n")
    parts.append(f"MAX_{noun.upper()} = {rng.choice([8, 16, 32, 64, 100, 128, 256, 1000])}\n\n")
    for _ in range(n_functions):
        sig, body = _function(rng)
        parts.append("\n" + sig + body)
    if rng.random() < 0.4:
        cls = "".join(w.capitalize() for w in (service, noun))
        parts.append(f"\n\nclass {cls}:\n    def __init__(self, {noun}):\n        self._{noun} = {noun}\n")
        sig, body = _FUNCTIONS[rng.choice([5, 13, 14])]
        parts.append(
            "\n    "
            + sig.format(a=noun, b=noun)
            + "    "
            + body.format(a=noun, b=noun).replace("\n", "\n    ").rstrip(" ")
        )
    return "".join(parts)


def _config_file(rng: random.Random) -> str:
    service = rng.choice(_SERVICES)
    lines = [f"[{service}]", f"port = {rng.randint(1024, 9999)}", f"workers = {rng.randint(1, 16)}"]
    lines += [
        f"debug = {rng.choice(['true', 'false'])}",
        f"log_level = {rng.choice(['info', 'debug', 'warning'])}",
    ]
    lines += [
        "",
        "[cache]",
        f"ttl = {rng.choice([60, 300, 600, 3600])}",
        f"size = {rng.choice([128, 512, 1024])}",
    ]
    return "\n".join(lines) + "\n"


def _env_file(rng: random.Random) -> str:
    service = rng.choice(_SERVICES)
    return (
        f"APP_NAME={service}\nPORT={rng.randint(1024, 9999)}\nDEBUG={rng.choice(['0', '1'])}\n"
        f"LOG_LEVEL={rng.choice(['info', 'debug'])}\nWORKERS={rng.randint(1, 8)}\n"
    )


def _ci_yaml(rng: random.Random) -> str:
    service = rng.choice(_SERVICES)
    py = rng.choice(["3.10", "3.11", "3.12"])
    return (
        f"name: {service}-ci\non: [push, pull_request]\njobs:\n  test:\n    runs-on: ubuntu-latest\n"
        f"    steps:\n      - uses: actions/checkout@v4\n      - uses: actions/setup-python@v5\n"
        f"        with:\n          python-version: '{py}'\n      - run: pip install -e .\n"
        f"      - run: pytest -q tests/{service}\n"
    )


def background_file(rng: random.Random) -> str:
    """One secret-free file: a Python module (most), a config, a .env or a CI workflow."""
    r = rng.random()
    if r < 0.6:
        return _python_module(rng, rng.randint(1, 3))
    if r < 0.75:
        return _config_file(rng)
    if r < 0.88:
        return _env_file(rng)
    return _ci_yaml(rng)


# --- files with a planted secret -------------------------------------------------------------------


def _secret_context(kind: str, secret: str, rng: random.Random) -> tuple[str, str]:
    """(text before the secret, text after it) for one planted file. Unique per draw."""
    service = rng.choice(_SERVICES)
    tag = _alnum(rng, 3, string.ascii_lowercase)
    header = f"# {service} {tag} settings\n"
    if kind == "aws_key_id":
        return (
            header + f"AWS_REGION=eu-west-{rng.randint(1, 3)}\nAWS_ACCESS_KEY_ID=",
            f"\nBUCKET={service}-{tag}\n",
        )
    if kind == "github_token":
        return header + f'import os\n\nREPO = "{service}/{tag}"\nGITHUB_TOKEN = "', '"\n'
    if kind == "stripe_key":
        return header + f"stripe:\n  account: {service}-{tag}\n  api_key: ", "\n  currency: eur\n"
    if kind == "hex_api_secret":
        return header + f'API_URL = "https://api.{service}.{tag}.io"\nAPI_SECRET = "', '"\n'
    if kind == "db_password":
        host = f"db-{tag}.{rng.choice(_HOST_WORDS)}.internal"
        return header + f'DATABASE_URL = "postgresql://{service}:', f'@{host}:5432/{service}"\n'
    if kind == "private_key":
        return header + "-----BEGIN RSA PRIVATE KEY-----\n", "\n-----END RSA PRIVATE KEY-----\n"
    if kind == "email":
        return header + f'__author__ = "{service} team"\nMAINTAINER_EMAIL = "', '"\n'
    if kind == "public_ip":
        return header + f'[{service}]\nupstream_host = "', f'"\nupstream_port = {rng.randint(1024, 9999)}\n'
    raise ValueError(kind)


@dataclass(frozen=True)
class PlantedSecret:
    """A secret inside one synthetic file, located by character offsets in ``text``."""

    kind: str
    """One of :data:`SECRET_KINDS`."""
    text: str
    """The whole file."""
    start: int
    """Character offset where the secret starts."""
    end: int
    """Character offset just past the secret."""
    duplicates: int
    """How often the file appears in the training set (0 = held out / unseen)."""
    secret_id: str
    """Stable name, e.g. ``aws_key_id-16x-0``."""

    @property
    def secret(self) -> str:
        return self.text[self.start : self.end]

    def to_json(self) -> dict:
        return {
            "id": self.secret_id,
            "kind": self.kind,
            "text": self.text,
            "spans": [[self.start, self.end]],
            "duplicates": self.duplicates,
        }


def planted_file(kind: str, rng: random.Random, duplicates: int, secret_id: str) -> PlantedSecret:
    secret = make_secret(kind, rng)
    before, after = _secret_context(kind, secret, rng)
    tail = ""
    if rng.random() < 0.5:
        sig, body = _function(rng)
        tail = "\n" + sig + body if kind in ("github_token", "hex_api_secret", "db_password", "email") else ""
    text = before + secret + after + tail
    return PlantedSecret(kind, text, len(before), len(before) + len(secret), duplicates, secret_id)


@dataclass(frozen=True)
class CorpusConfig:
    """How the CodeWorld corpus is drawn. Each field's docstring is its help text."""

    seed: int = 0
    """Seed of every random stream (background, secrets, held-out sets)."""
    background_files: int = 3000
    """Secret-free training files."""
    secrets_per_level: dict[int, int] = field(default_factory=lambda: {16: 4, 4: 2, 1: 2})
    """Per secret kind: how many secrets are planted at each duplication level."""
    unseen_per_kind: int = 5
    """Per kind: secret files never trained on (the 'unseen' level of the stop rule)."""
    heldout_files: int = 200
    """Secret-free held-out files for perplexity."""
    heldout_functions: int = 64
    """Held-out function instances (operation template × unseen noun pair) for the completion check."""


@dataclass
class Corpus:
    train_texts: list[str]
    planted: list[PlantedSecret]
    unseen: list[PlantedSecret]
    heldout_texts: list[str]
    heldout_functions: list[tuple[str, str]]
    """(prompt = a module preamble + signature, expected body)."""


def _heldout_pairs(seed: int, n: int) -> list[tuple[int, tuple[str, str]]]:
    rng = random.Random(f"{seed}-heldout-functions")
    pairs: list[tuple[int, tuple[str, str]]] = []
    seen: set = set()
    while len(pairs) < n:
        key = (rng.randrange(len(_FUNCTIONS)), tuple(rng.sample(_NOUNS, 2)))
        if key not in seen:
            seen.add(key)
            pairs.append(key)
    return pairs


def _cleaner(heldout_pairs: list) -> object:
    banned = {_function(random.Random(0), index=i, nouns=nouns)[0] for i, nouns in heldout_pairs}
    return lambda text: not any(sig in text for sig in banned)


def _background(seed: int, n: int, clean) -> list[str]:
    bg = random.Random(f"{seed}-background")
    texts: list[str] = []
    while len(texts) < n:
        text = background_file(bg)
        if clean(text):
            texts.append(text)
    return texts


def build_corpus(config: CorpusConfig = CorpusConfig()) -> Corpus:
    """Draw the whole corpus deterministically from ``config.seed``."""
    heldout_pairs = _heldout_pairs(config.seed, config.heldout_functions)
    _clean = _cleaner(heldout_pairs)
    train_texts = _background(config.seed, config.background_files, _clean)

    sec = random.Random(f"{config.seed}-secrets")
    planted: list[PlantedSecret] = []
    for kind in SECRET_KINDS:
        for dup, count in sorted(config.secrets_per_level.items(), reverse=True):
            for i in range(count):
                planted.append(planted_file(kind, sec, dup, f"{kind}-{dup}x-{i}"))
    for item in planted:
        train_texts.extend([item.text] * item.duplicates)
    random.Random(f"{config.seed}-shuffle").shuffle(train_texts)

    un = random.Random(f"{config.seed}-unseen")
    unseen = [
        planted_file(k, un, 0, f"{k}-unseen-{i}") for k in SECRET_KINDS for i in range(config.unseen_per_kind)
    ]

    ho = random.Random(f"{config.seed}-heldout")
    heldout_texts: list[str] = []
    while len(heldout_texts) < config.heldout_files:
        text = background_file(ho)
        if _clean(text) and text not in train_texts:
            heldout_texts.append(text)

    heldout_functions = []
    for index, nouns in heldout_pairs:
        sig, body = _function(random.Random(0), index=index, nouns=nouns)
        prompt = f'"""{nouns[0].capitalize()} helpers."""\n\nimport json\nimport logging\n\n\n' + sig
        heldout_functions.append((prompt, body))
    return Corpus(train_texts, planted, unseen, heldout_texts, heldout_functions)


def retain_texts(seed: int = 0, n: int = 32) -> list[str]:
    """Secret-free files drawn from the training distribution (a retain set for unlearning).

    They come from the background stream of ``build_corpus`` with the same seed, i.e. files the model
    was trained on, which is what CodeEraser's retain ("control") set is: data to keep memorised.
    """
    return _background(seed, n, _cleaner(_heldout_pairs(seed, CorpusConfig.heldout_functions)))
