"""Data sources, spec completion and the layer rules they exist for (issue 9)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from erasekit.concepts import OBJECT_TEMPLATES, ConceptSpec
from erasekit.errors import ErasekitError
from erasekit.sources import (
    CaptionSource,
    DataSource,
    WithRetain,
    caption_file,
    complete_spec,
    packaged_captions,
    prompts_naming,
    read_captions,
)
from erasekit.world.source import ShapesWorldSource

SRC = Path(__file__).resolve().parents[1] / "src" / "erasekit"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["methods", "backends"])
def test_methods_and_backends_never_import_a_world_or_test_model_names(package):
    for path in sorted((SRC / package).rglob("*.py")):
        worlds = {
            n
            for n in _imports(path)
            if n.startswith(("erasekit.world", "erasekit.codeworld", "erasekit.zoo"))
        }
        assert not worlds, f"{path.relative_to(SRC)} imports {sorted(worlds)}"
        text = path.read_text()
        for rule in ('== "shapes"', "== 'shapes'", 'name == "shapes'):
            assert rule not in text, f"{path.relative_to(SRC)} special-cases a model name ({rule})"


def test_the_artifact_format_sits_below_the_methods_and_applying_above_them():
    """artifacts (the file format) imports no method; applying imports the method registry (for hook kinds)."""
    below = {n for n in _imports(SRC / "artifacts.py") if n.startswith("erasekit.")}
    assert not {n for n in below if n.startswith(("erasekit.methods", "erasekit.applying", "erasekit.world"))}
    for path in sorted((SRC / "methods").rglob("*.py")):
        assert "erasekit.applying" not in _imports(path), f"{path.name} applies artifacts itself"


def test_shapesworld_completion_fills_what_the_user_left_out_and_keeps_what_they_gave():
    source = ShapesWorldSource()
    spec = complete_spec(ConceptSpec.from_lists(["star"]), source, seed=3)
    assert spec.completed == ("preserve", "templates", "retain")
    assert spec.preserve[:7] == ("circle", "square", "triangle", "heart", "cross", "ring", "diamond")
    assert "star" not in spec.preserve and len(spec.preserve) == 21
    assert all("{}" in t for t in spec.templates) and spec.templates != OBJECT_TEMPLATES
    assert len(spec.retain) == 64 and not any("star" in p.split() for p in spec.retain)
    # the same seed gives the same retain prompts; another seed others
    assert complete_spec(ConceptSpec.from_lists(["star"]), source, seed=3).retain == spec.retain
    assert complete_spec(ConceptSpec.from_lists(["star"]), source, seed=4).retain != spec.retain
    given = ConceptSpec.from_lists(["star"], ["circle"], ["square"], templates=["a {}"])
    kept = complete_spec(given, source)
    assert kept.preserve == ("square",) and kept.templates == ("a {}",) and kept.completed == ("retain",)
    # a method without a preserve term gets none; an unknown concept gets no world preserve set
    assert complete_spec(ConceptSpec.from_lists(["star"]), source, preserve=False).preserve == ()
    assert complete_spec(ConceptSpec.from_lists(["Van Gogh"]), source).preserve == ()


def test_anchor_taking_methods_get_the_source_default_anchor_unless_given_or_erased():
    source = ShapesWorldSource()
    assert [source.default_anchor(c) for c in ("star", "red", "grid", "Van Gogh")] == [
        "heart",
        "green",
        "plain",
        None,
    ]
    spec = complete_spec(ConceptSpec.from_lists(["star", "plain"]), source, anchors=True)
    assert [(t.text, t.anchor) for t in spec.targets] == [("star", "heart"), ("plain", "striped")]
    assert spec.completed[0] == "anchor" and {"heart", "striped"} <= set(spec.preserve)  # kept as they are
    # a given anchor stays; an anchor that is itself being erased is not used; off by default
    given = complete_spec(ConceptSpec.from_lists(["star"], ["circle"]), source, anchors=True)
    assert given.targets[0].anchor == "circle" and "anchor" not in given.completed
    both = complete_spec(ConceptSpec.from_lists(["star", "heart"]), source, anchors=True)
    assert [t.anchor for t in both.targets] == [None, "cross"]
    assert complete_spec(ConceptSpec.from_lists(["star"]), source).targets[0].anchor is None


def test_an_empty_source_changes_nothing_and_caption_sources_filter_the_concept():
    spec = ConceptSpec.from_lists(["dog"])
    assert complete_spec(spec, DataSource()) is spec
    source = CaptionSource(("a dog on grass", "a red car", "two cats", "hotdog stand"), name="t")
    done = complete_spec(spec, source, retain_prompts=10)
    assert done.retain == ("a red car", "two cats", "hotdog stand")  # whole words only
    assert done.preserve == () and done.templates == spec.templates and done.completed == ("retain",)


def test_packaged_coco_captions_ship_with_their_provenance():
    source = packaged_captions()
    assert len(source.captions) > 1500 and all(c.strip() for c in source.captions)
    readme = (SRC / "data" / "README.md").read_text()
    assert "CC BY 4.0" in readme and "coco_captions.txt" in readme


def test_retain_files_in_three_formats_and_their_errors(tmp_path):
    (tmp_path / "r.txt").write_text("a red car\n\n  two   cats \na red car\n")
    assert read_captions(tmp_path / "r.txt") == ["a red car", "two cats"]
    (tmp_path / "r.csv").write_text("id,prompt\n1,a boat\n2,a house\n")
    assert read_captions(tmp_path / "r.csv") == ["a boat", "a house"]
    (tmp_path / "r.jsonl").write_text(
        json.dumps({"prompt": "a tree"}) + "\n" + json.dumps({"text": "a bus"}) + "\n"
    )
    assert read_captions(tmp_path / "r.jsonl") == ["a tree", "a bus"]
    (tmp_path / "bad.csv").write_text("id,words\n1,x\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "empty.txt").write_text("\n \n")
    for name, needle in [
        ("bad.csv", "column"),
        ("bad.jsonl", "not JSON"),
        ("empty.txt", "no prompt"),
        ("nope.txt", "not found"),
    ]:
        with pytest.raises(ErasekitError, match=needle):
            read_captions(tmp_path / name)
    (tmp_path / "stars.txt").write_text("a red star\na star on a grid\n")
    with pytest.raises(ErasekitError, match="names a concept being erased"):
        complete_spec(
            ConceptSpec.from_lists(["star"]),
            WithRetain(ShapesWorldSource(), caption_file(tmp_path / "stars.txt")),
        )
    combined = WithRetain(ShapesWorldSource(), caption_file(tmp_path / "r.txt"))
    assert combined.retain_prompts(5, avoid=["car"]) == ["two cats"]
    assert combined.related_concepts("star")  # the world's inventory stays
    assert combined.describe()["retain"]["name"] == "retain-file"


def test_run_method_records_the_completed_spec_and_the_source(tiny_backend):
    from erasekit.config import build_config
    from erasekit.methods import get_method, run_method

    method = get_method("uce")
    previous, tiny_backend.data_source = getattr(tiny_backend, "data_source", None), ShapesWorldSource()
    try:
        artifact = run_method(
            method, tiny_backend, ConceptSpec.from_lists(["star"]), build_config(method.config_cls)
        )
        raw = run_method(
            method,
            tiny_backend,
            ConceptSpec.from_lists(["star"]),
            build_config(method.config_cls),
            complete=False,
        )
        no_anchor = run_method(
            method,
            tiny_backend,
            ConceptSpec.from_lists(["star"]),
            build_config(method.config_cls),
            default_anchors=False,
        ).manifest["concepts"]
    finally:
        tiny_backend.data_source = previous
    manifest = artifact.manifest
    assert manifest["data_source"]["name"] == "shapesworld"
    assert manifest["concepts"]["completed"] == ["anchor", "preserve", "templates", "retain"]
    assert manifest["concepts"]["targets"] == [{"text": "star", "anchor": "heart"}]
    assert no_anchor["targets"] == [{"text": "star", "anchor": None}]  # --no-default-anchor
    assert no_anchor["completed"] == ["preserve", "templates", "retain"]
    assert len(manifest["concepts"]["preserve"]) == 21 and "heart" in manifest["concepts"]["preserve"]
    assert raw.manifest["concepts"]["preserve"] == [] and raw.manifest["concepts"]["completed"] == []
    # the preserve set changes UCE's solve: the two edits differ
    assert any(not (artifact.tensors[k] == raw.tensors[k]).all() for k in artifact.tensors)


def test_prompts_naming_uses_the_sources_captions_else_the_templates():
    # A target's templates put a shape into a colour slot ("a {} square": "a heart square"); the
    # source's own captions name the concept the way the model was trained on it.
    captions = prompts_naming(ShapesWorldSource(), "heart", ["a {} square"], 5, seed=3)
    assert len(captions) == 5 and all("heart" in c and "square" not in c for c in captions)
    assert prompts_naming(DataSource(), "heart", ["a {} square", "{}"], 5) == ["a heart square", "heart"]


def test_esd_retain_selection_takes_the_neighbours_first_then_retain_prompts():
    import torch

    from erasekit.methods.esd import retain_selection

    source = ShapesWorldSource()
    spec = ConceptSpec.from_lists(["yellow"], preserve=source.related_concepts("yellow"))
    spec = complete_spec(spec, source)
    chosen = retain_selection(spec, 16, torch.Generator().manual_seed(0), source)
    neighbours, retain = chosen[:8], chosen[8:]
    # one caption of each other colour (the same kind: listed first) before any other concept's
    assert [next(c for c in spec.preserve if c in p.split()) for p in neighbours[:7]] == list(
        spec.preserve[:7]
    )
    assert all(p in spec.retain for p in retain) and len(retain) == 8
    assert not any("yellow" in p.split() for p in chosen)
