"""ConceptSpec validation: what to erase, what it becomes, what to keep."""

from __future__ import annotations

import pytest

from erasekit.concepts import OBJECT_TEMPLATES, STYLE_TEMPLATES, ConceptSpec, Target
from erasekit.errors import ErasekitError


def test_from_lists_strips_and_pairs_anchors():
    spec = ConceptSpec.from_lists([" star ", "cat"], ["circle", "dog"], ["square "])
    assert spec.targets == (Target("star", "circle"), Target("cat", "dog"))
    assert spec.preserve == ("square",)
    assert spec.erase_texts == ["star", "cat"]
    assert spec.templates == OBJECT_TEMPLATES


def test_one_anchor_is_shared_and_none_means_remove():
    assert [t.anchor for t in ConceptSpec.from_lists(["a", "b"], ["c"]).targets] == ["c", "c"]
    assert [t.anchor for t in ConceptSpec.from_lists(["a", "b"]).targets] == [None, None]


@pytest.mark.parametrize(
    "concepts, anchors, preserve, needle",
    [
        ([], [], [], "No concept"),
        ([""], [], [], "empty"),
        (["  \t"], [], [], "empty"),
        (["star"], [], ["", ""], "twice"),  # "" (the unconditional prompt) may be preserved, once
        (["star"], [" "], [], "Anchor of 'star' is empty"),
        (["star", "star"], [], [], "twice"),
        (["star", "  STAR "], [], [], "twice"),  # case and spacing do not make a new concept
        (["a  cat"], [], ["a cat"], "twice"),
        (["star"], [], ["Star"], "both erased and preserved"),
        (["star"], [], ["square", "square"], "twice"),
        (["a", "b", "c"], ["x", "y"], [], "Got 2 anchors for 3 concepts"),
        (["a"], ["x", "y"], [], "Got 2 anchors for 1 concepts"),
    ],
)
def test_invalid_requests(concepts, anchors, preserve, needle):
    with pytest.raises(ErasekitError, match=needle) as info:
        ConceptSpec.from_lists(concepts, anchors, preserve)
    assert "\n" not in str(info.value)


def test_anchor_may_equal_a_preserved_concept():
    # Mapping "star" onto "circle" while keeping "circle" is UCE's normal use, not a conflict.
    spec = ConceptSpec.from_lists(["star"], ["circle"], ["circle"])
    assert spec.targets[0].anchor == "circle" and spec.preserve == ("circle",)


def test_kind_chooses_templates_and_unknown_kind_fails():
    assert ConceptSpec.from_lists(["Van Gogh"], kind="style").templates == STYLE_TEMPLATES
    with pytest.raises(ErasekitError, match="kind"):
        ConceptSpec.from_lists(["x"], kind="music")


def test_templates_need_a_placeholder():
    with pytest.raises(ErasekitError, match="placeholder"):
        ConceptSpec.from_lists(["x"], templates=["a photo"])
    with pytest.raises(ErasekitError, match="placeholder"):
        ConceptSpec.from_lists(["x"], templates=[])


def test_prompts_put_the_concept_in_every_template():
    spec = ConceptSpec.from_lists(["star"], templates=["{}", "a photo of a {}"])
    assert spec.prompts("star") == ["star", "a photo of a star"]


def test_dict_round_trip():
    spec = ConceptSpec.from_lists(["star", "cat"], ["circle", "dog"], ["square"], kind="style")
    assert ConceptSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ErasekitError):
        ConceptSpec.from_dict({"targets": []})
