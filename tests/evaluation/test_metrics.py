"""The protocol's metric definitions on hand-made predictions, and the Fréchet distance's properties."""

from __future__ import annotations

import pytest
import torch

from erasekit.evaluation.metrics import (
    accuracy,
    cross_domain_retain,
    frechet_distance,
    frechet_distance_from_stats,
    in_domain_retain,
    protocol_metrics,
    ratio,
    unlearning_accuracy,
)


def row(group, labels, prediction):
    return {"group": group, "labels": labels, "prediction": prediction}


def test_unlearning_accuracy_counts_images_without_the_concept():
    assert unlearning_accuracy(["star", "circle", None, "star"], "star") == 0.5
    assert unlearning_accuracy(["star"] * 3, "star") == 0.0
    assert unlearning_accuracy([None, "heart"], "star") == 1.0  # drawing nothing erases too
    assert unlearning_accuracy([], "star") is None  # not measured, not "failed"


def test_accuracy_and_length_mismatch():
    assert accuracy(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    assert accuracy([], []) is None
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_ira_ignores_rows_of_the_erased_concept_and_counts_the_domain_only():
    rows = [
        row("retain", {"shape": "circle", "color": "red"}, {"shape": "circle", "color": "blue"}),
        row("retain", {"shape": "heart", "color": "red"}, {"shape": "star", "color": "red"}),
        row("target", {"shape": "star", "color": "red"}, {"shape": "circle", "color": "red"}),
    ]
    # circle right, heart wrong; the colour mistake does not count for IRA; the star row is excluded.
    assert in_domain_retain(rows, "star", "shape") == 0.5


def test_cra_pools_other_domains_over_prompts_without_the_concept():
    rows = [
        row(
            "retain",
            {"shape": "circle", "color": "red", "style": "plain"},
            {"shape": "star", "color": "red", "style": "grid"},
        ),
        row(
            "retain",
            {"shape": "heart", "color": "blue", "style": "dotted"},
            {"shape": "heart", "color": "blue", "style": "dotted"},
        ),
        row(
            "target",
            {"shape": "star", "color": "green", "style": "plain"},
            {"shape": "star", "color": "red", "style": "grid"},
        ),
    ]
    cra, per_domain = cross_domain_retain(rows, "star", "shape")
    assert per_domain == {"color": 1.0, "style": 0.5}
    assert cra == pytest.approx(3 / 4)  # the star row (both wrong) is not counted; shape never counts


def test_protocol_metrics_on_a_hand_made_grid():
    rows = [
        row("target", {"shape": "star", "color": "red"}, {"shape": "star", "color": "red"}),
        row("target", {"shape": "star", "color": "red"}, {"shape": None, "color": None}),
        row("target", {"shape": "star", "color": "blue"}, {"shape": "circle", "color": "blue"}),
        row("target", {"shape": "star", "color": "blue"}, {"shape": "heart", "color": "blue"}),
        row("synonym", {"shape": "star", "color": "red"}, {"shape": "star", "color": "red"}),
        row("synonym", {"shape": "star", "color": "red"}, {"shape": "star", "color": "red"}),
        row("retain", {"shape": "circle", "color": "green"}, {"shape": "circle", "color": "green"}),
        row("retain", {"shape": "ring", "color": "green"}, {"shape": "circle", "color": "white"}),
    ]
    m = protocol_metrics(rows, "star", "shape")
    assert m["ua"] == 0.75
    assert m["synonym_ua"] == 0.0
    assert m["ira"] == 0.5
    assert m["cra"] == 0.5 and m["cra_by_domain"] == {"color": 0.5}
    assert m["n"] == {"target": 4, "synonym": 2, "retain": 2}


def test_wilson_intervals_cover_the_rate_stay_in_bounds_and_shrink_with_n():
    from erasekit.evaluation.metrics import wilson_interval

    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(16, 16)
    assert high == 1.0 and 0.80 < low < 0.81  # 16 of 16: [0.806, 1]
    assert wilson_interval(0, 16)[0] == 0.0
    low, high = wilson_interval(29, 32)
    assert abs(low - 0.7578) < 1e-3 and abs(high - 0.9676) < 1e-3  # textbook Wilson values
    assert wilson_interval(60, 64)[1] - wilson_interval(60, 64)[0] < high - low  # more images, narrower
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_protocol_metrics_report_counts_and_intervals_for_every_rate():
    rows = [
        row("target", {"shape": "star", "color": "red"}, {"shape": "circle", "color": "red"}),
        row("target", {"shape": "star", "color": "red"}, {"shape": "star", "color": "red"}),
        row("synonym", {"shape": "star", "color": "red"}, {"shape": "ring", "color": "red"}),
        row("retain", {"shape": "circle", "color": "green"}, {"shape": "circle", "color": "green"}),
        row("retain", {"shape": "ring", "color": "green"}, {"shape": "circle", "color": "white"}),
    ]
    m = protocol_metrics(rows, "star", "shape")
    assert m["counts"] == {"ua": [1, 2], "synonym_ua": [1, 1], "ira": [1, 2], "cra": [1, 2]}
    for key in ("ua", "synonym_ua", "ira", "cra"):
        low, high = m["intervals"][key]
        assert low <= m[key] <= high


def test_protocol_metrics_for_a_colour_erasure_uses_the_colour_domain():
    rows = [
        row("target", {"shape": "star", "color": "red"}, {"shape": "star", "color": "orange"}),
        row("retain", {"shape": "star", "color": "blue"}, {"shape": "star", "color": "blue"}),
    ]
    m = protocol_metrics(rows, "red", "color")
    assert m["ua"] == 1.0 and m["ira"] == 1.0 and m["cra_by_domain"] == {"shape": 1.0}
    assert m["synonym_ua"] is None


def test_protocol_metrics_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="erased"):
        protocol_metrics([row("retain", {"shape": "star"}, {"shape": "star"})], "star", "shape")
    with pytest.raises(ValueError, match="group"):
        protocol_metrics([row("other", {"shape": "star"}, {"shape": "star"})], "star", "shape")


def test_ratio():
    assert ratio(0.9, 1.0) == 0.9
    assert ratio(None, 1.0) is None and ratio(0.5, 0.0) is None


def test_fid_is_zero_for_identical_sets_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    distances = [frechet_distance(x, x + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0
    # a mean shift of s in every one of 16 dims adds exactly 16 s^2
    assert distances[2] == pytest.approx(16.0, rel=1e-6)


def test_fid_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])), torch.diag(torch.tensor([4.0, 1.0, 1.0]))
    # sum (sqrt a - sqrt b)^2 = (1-2)^2 + (2-1)^2 + (3-1)^2 = 6; mean term 5
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(11.0, abs=1e-9)


def test_fid_handles_singular_covariances_and_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 64, generator=g)  # fewer samples than dimensions: rank-deficient covariance
    y = torch.randn(10, 64, generator=g)
    value = frechet_distance(x, y)
    assert value > 0 and value == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert frechet_distance(x, 3 * x) > frechet_distance(x, 1.5 * x) > 0
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)
