"""ShapesWorld renderer, concepts and captions: labels show in the pixels, seeds reproduce, errors are clear."""

from __future__ import annotations

import pytest
import torch

from erasekit.errors import ErasekitError
from erasekit.world import (
    COLOR_RGB,
    COLORS,
    DOMAINS,
    SHAPES,
    STYLES,
    SYNONYMS,
    TEMPLATES,
    caption,
    domain_of,
    full_grid,
    prompt_for,
    render,
    render_labels,
    sample_labels,
    shape_mask,
    synonym_table,
)
from erasekit.world.captions import FULL_TEMPLATES


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inventory_names_are_the_contract():
    assert SHAPES == ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond")
    assert COLORS == ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
    assert STYLES == ("plain", "striped", "dotted", "checkered", "gradient", "grid")
    assert set(DOMAINS) == {"shape", "color", "style"}
    for domain, concepts in DOMAINS.items():
        for c in concepts:
            assert domain_of(c) == domain


def test_every_concept_has_a_distinct_synonym():
    everything = set(SHAPES + COLORS + STYLES)
    for concepts in DOMAINS.values():
        for c in concepts:
            assert len(SYNONYMS[c]) >= 1
            for s in SYNONYMS[c]:
                assert s != c and s not in everything
    rows = synonym_table()
    assert {r["concept"] for r in rows} == everything
    assert all(r["domain"] == domain_of(r["concept"]) for r in rows)


def test_unknown_concept_is_a_one_line_error():
    with pytest.raises(ErasekitError, match="valid: circle") as err:
        domain_of("hexagon")
    assert "\n" not in str(err.value)
    with pytest.raises(ErasekitError):
        render(["hexagon"], ["red"], ["plain"])
    with pytest.raises(ErasekitError):
        render(["star"], ["mauve"], ["plain"])
    with pytest.raises(ErasekitError):
        render(["star"], ["red"], ["wavy"])
    with pytest.raises(ErasekitError):
        render(["star", "ring"], ["red"], ["plain"])
    with pytest.raises(ErasekitError):
        prompt_for(shape="red")


def test_render_shape_dtype_range_and_determinism():
    labels = sample_labels(24, _gen(1), p_no_shape=0.2)
    a = render_labels(labels, generator=_gen(5))
    b = render_labels(labels, generator=_gen(5))
    c = render_labels(labels, generator=_gen(6))
    assert a.shape == (24, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert render(["star"], ["red"], ["plain"], size=48).shape == (1, 3, 48, 48)


def test_colour_inside_the_shape_matches_its_label_and_background_is_grey():
    shapes = [s for s in SHAPES for _ in COLORS]
    colors = [c for _ in SHAPES for c in COLORS]
    styles = [STYLES[i % len(STYLES)] for i in range(len(shapes))]
    images = render(shapes, colors, styles, generator=_gen(3))
    masks = shape_mask(shapes, generator=_gen(3))
    names = list(COLOR_RGB)
    table = torch.tensor([COLOR_RGB[c] for c in names])
    for img, mask, color in zip(images, masks, colors):
        inside = mask > 0.99
        outside = mask < 0.01
        assert inside.sum() > 40  # the shape covers a good part of the image
        mean = img[:, inside].mean(dim=1)
        assert names[int((table - mean).norm(dim=1).argmin())] == color
        bg = img[:, outside]
        # Grey background: channels equal, so no background can pass for a shape colour.
        assert (bg.max(dim=0).values - bg.min(dim=0).values).max() < 1e-5


def test_shapes_differ_and_empty_renders_have_no_shape():
    images = render(list(SHAPES), ["red"] * 8, ["plain"] * 8, generator=_gen(0))
    masks = shape_mask(list(SHAPES), generator=_gen(0))
    for i in range(8):
        for j in range(i + 1, 8):
            # Masks of different shapes differ in a visible number of pixels.
            assert (masks[i] - masks[j]).abs().sum() > 20, (SHAPES[i], SHAPES[j])
            assert not torch.allclose(images[i], images[j])
    empty = render([None] * 6, [None] * 6, list(STYLES), generator=_gen(0))
    assert (empty.max(dim=1).values - empty.min(dim=1).values).max() < 1e-5  # all grey
    assert shape_mask([None], generator=_gen(0)).sum() == 0


def test_styles_differ():
    empty = render([None] * 6, [None] * 6, list(STYLES), generator=_gen(0))
    for i in range(6):
        for j in range(i + 1, 6):
            assert (empty[i] - empty[j]).abs().mean() > 0.02, (STYLES[i], STYLES[j])


def test_full_grid_and_sample_labels_cover_every_combination():
    grid = full_grid()
    assert len(grid) == 384 and len({tuple(d.values()) for d in grid}) == 384
    labels = sample_labels(4000, _gen(0), p_no_shape=0.1)
    empty = [lab for lab in labels if lab["shape"] is None]
    assert 300 < len(empty) < 500 and all(lab["color"] is None for lab in empty)
    assert {lab["shape"] for lab in labels} == set(SHAPES) | {None}


def test_captions_mention_each_concept_or_a_synonym():
    g = _gen(0)
    synonym_hits = 0
    for lab in sample_labels(300, _gen(1), p_no_shape=0.1):
        text = caption(lab, g, synonym_prob=0.3)
        assert text
        words = {k: (v,) + SYNONYMS[v] for k, v in lab.items() if v is not None}
        # The style, and the shape and colour when drawn, may be left out by partial templates,
        # but at least one concept is always named.
        named = [k for k, options in words.items() if any(o in text for o in options)]
        assert named, text
        synonym_hits += any(s in text for v in lab.values() if v for s in SYNONYMS[v])
    assert synonym_hits > 50
    assert all("{" in t for t in TEMPLATES)


def test_prompt_for_is_the_canonical_full_template():
    assert prompt_for("star", "red", "striped") == "a red star on a striped background"
    assert prompt_for("ring", "orange", "grid") == "an orange ring on a grid background"
    assert prompt_for(shape="heart") == "a heart"
    assert prompt_for() == ""
    assert FULL_TEMPLATES[0].format(color="red", shape="star", style="striped") == prompt_for(
        "star", "red", "striped"
    )


def test_all_captions_fit_the_tokenizer():
    from erasekit.backends.tokenizer import load_clip_tokenizer
    from erasekit.world.captions import EMPTY_TEMPLATES, PARTIAL_TEMPLATES
    from erasekit.world.model import tiny_config

    limit = tiny_config()["tokenizer"]["model_max_length"]
    tok = load_clip_tokenizer(model_max_length=limit)

    def worst(domain):
        """The word (concept or synonym) of a domain that takes the most tokens."""
        return max(
            (w for c in DOMAINS[domain] for w in (c,) + SYNONYMS[c]), key=lambda w: len(tok(w).input_ids)
        )

    words = {"shape": worst("shape"), "color": worst("color"), "style": worst("style")}
    for template in FULL_TEMPLATES + PARTIAL_TEMPLATES + EMPTY_TEMPLATES:
        text = template.format(**words)
        assert len(tok(text).input_ids) <= limit, text
