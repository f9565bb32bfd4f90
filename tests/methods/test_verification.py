"""The erasure check (a diffusion classifier with the original model as referee) on the shipped model.

It must see what the judge sees: the base model's star samples are recognised as stars, and after an
erasure of "star" they are not, while the preserve concepts' samples stay recognised.
"""

from __future__ import annotations

import random

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.methods import get_method, run_method
from erasekit.methods.verification import Verifier
from erasekit.sources import complete_spec


@pytest.fixture(scope="module")
def shapes():
    from erasekit.zoo import load_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model("shapes")


def test_the_original_model_recognises_the_concept_before_and_not_after_an_erasure(shapes):
    spec = complete_spec(ConceptSpec.from_lists(["star"]), shapes.data_source)
    verifier = Verifier(
        shapes,
        spec,
        samples=12,
        keep_samples=12,
        keep_concepts=6,
        max_candidates=7,
        timesteps=6,
        steps=10,
        guidance=3.0,
        generator=torch.Generator().manual_seed(0),
        rng=random.Random(0),
    )
    assert verifier.erase[0].candidates and "star" not in verifier.erase[0].candidates
    shapes_kind = {"circle", "square", "triangle", "heart", "cross", "ring", "diamond"}
    assert set(verifier.erase[0].candidates) <= shapes_kind
    # the preservation check looks at the target's own kind first
    assert [p.concept for p in verifier.keep] == ["circle", "square", "triangle", "heart", "cross", "ring"]
    before = verifier.check(shapes)
    assert before["present"]["star"] >= 0.9 and verifier.baseline_kept >= 0.8
    uce = get_method("uce")
    artifact = run_method(
        uce,
        shapes,
        ConceptSpec.from_lists(["star"]),
        build_config(uce.config_cls),
        seed=0,
        default_anchors=True,
    )
    apply(artifact, shapes)  # UCE edits the UNet: sample with the erasure, classify with the original
    try:
        images = verifier.sample(shapes)
    finally:
        revert(shapes)
    after = verifier.classify(shapes, images)
    assert after["present"]["star"] <= 0.25, after
    assert after["kept"] >= verifier.baseline_kept - 0.2, after


def test_the_preservation_check_spends_most_samples_on_the_targets_own_kind():
    from erasekit.methods.verification import keep_allocation

    near = [f"n{i}" for i in range(7)]
    far = [f"f{i}" for i in range(14)]
    plan = keep_allocation(near, far, 24, 12, random.Random(0))
    assert [n for c, n in plan if c in near] == [3] * 7  # 3/4 of 24 over 7, rounded up
    assert [n for c, n in plan if c in far] == [1, 1, 1] and sum(n for _, n in plan) == 24
    # nothing of the targets' kind: an even split over a seeded sample, as many concepts as allowed
    even = keep_allocation([], far, 24, 12, random.Random(0))
    assert len(even) == 12 and {n for _, n in even} == {2}
    assert [n for _, n in keep_allocation(near, [], 24, 12, random.Random(0))] == [4] * 7
    assert keep_allocation(near, far, 0, 12, random.Random(0)) == []
