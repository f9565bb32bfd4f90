"""ShapesWorld's concept inventory: three domains (shape, colour, background style) and synonyms.

The names are part of erasekit's public contract: the judge, the protocol, tests and users refer to them.
"""

from __future__ import annotations

from erasekit.errors import ErasekitError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
STYLES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "gradient", "grid")

DOMAINS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "style": STYLES}

# Every concept has at least one synonym; a part of the training captions use them so the text encoder
# learns that "crimson" means red. Attacks and the synonym-UA metric rely on this table.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # shapes
    "circle": ("disc", "round"),
    "square": ("box", "block"),
    "triangle": ("trigon", "pyramid"),
    "star": ("pentagram", "starburst"),
    "heart": ("valentine", "love heart"),
    "cross": ("plus", "plus sign"),
    "ring": ("donut", "hoop"),
    "diamond": ("rhombus", "lozenge"),
    # colours
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "sapphire"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "lilac"),
    "orange": ("amber", "tangerine"),
    "white": ("ivory", "snowy"),
    "cyan": ("turquoise", "aqua"),
    # background styles
    "plain": ("solid", "flat"),
    "striped": ("stripy", "banded"),
    "dotted": ("spotted", "polka dot"),
    "checkered": ("checkerboard", "chequered"),
    "gradient": ("shaded", "fading"),
    "grid": ("lattice", "mesh"),
}

_DOMAIN_OF: dict[str, str] = {c: d for d, concepts in DOMAINS.items() for c in concepts}


def all_concepts() -> tuple[str, ...]:
    """Every concept name, shapes then colours then styles."""
    return SHAPES + COLORS + STYLES


def domain_of(concept: str) -> str:
    """The domain ("shape", "color" or "style") of a concept name.

    Raises:
        ErasekitError: ``concept`` is not a ShapesWorld concept.
    """
    try:
        return _DOMAIN_OF[concept]
    except (KeyError, TypeError):
        raise ErasekitError(
            f"unknown ShapesWorld concept {concept!r}; valid: {', '.join(all_concepts())}"
        ) from None


def check_concept(concept: str, domain: str) -> str:
    """Return ``concept`` if it belongs to ``domain``; raise a one-line ErasekitError otherwise."""
    if domain not in DOMAINS:
        raise ErasekitError(f"unknown ShapesWorld domain {domain!r}; valid: {', '.join(DOMAINS)}")
    if concept not in DOMAINS[domain]:
        raise ErasekitError(f"unknown ShapesWorld {domain} {concept!r}; valid: {', '.join(DOMAINS[domain])}")
    return concept


def synonym_table() -> list[dict[str, str]]:
    """The synonym table as data: one row ``{"concept", "domain", "synonym"}`` per synonym."""
    return [
        {"concept": c, "domain": _DOMAIN_OF[c], "synonym": s} for c in all_concepts() for s in SYNONYMS[c]
    ]
