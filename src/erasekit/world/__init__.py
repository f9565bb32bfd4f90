"""ShapesWorld: erasekit's procedural reference world (concepts, captions, renderer, shipped model)."""

from erasekit.world.captions import TEMPLATES, caption, prompt_for
from erasekit.world.concepts import (
    COLORS,
    DOMAINS,
    SHAPES,
    STYLES,
    SYNONYMS,
    all_concepts,
    domain_of,
    synonym_table,
)
from erasekit.world.render import COLOR_RGB, full_grid, render, render_labels, sample_labels, shape_mask

__all__ = [
    "COLORS",
    "COLOR_RGB",
    "DOMAINS",
    "SHAPES",
    "STYLES",
    "SYNONYMS",
    "TEMPLATES",
    "all_concepts",
    "caption",
    "domain_of",
    "full_grid",
    "prompt_for",
    "render",
    "render_labels",
    "sample_labels",
    "shape_mask",
    "synonym_table",
]
