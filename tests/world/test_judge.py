"""The shipped ShapesWorld judge: accuracy on fresh renders, "none" for empty images, its API and recipe."""

from __future__ import annotations

import json

import pytest
import torch

from erasekit.errors import ErasekitError
from erasekit.world import COLORS, SHAPES, STYLES, render, render_labels, sample_labels
from erasekit.world.judge import (
    CLASSES,
    JUDGE_DIR,
    JudgeConfig,
    augment,
    load_judge,
    save_judge,
    train_judge,
)

# Not the judge's training (seed 1) or evaluation (seed 1000) seeds.
FRESH_SEED = 424242


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def fresh():
    generator = torch.Generator().manual_seed(FRESH_SEED)
    labels = sample_labels(400, generator, p_no_shape=0.1)
    return render_labels(labels, generator=generator), labels


def test_shipped_judge_is_at_least_99_percent_right_per_domain(judge, fresh):
    images, labels = fresh
    accuracy = judge.accuracy(images, labels)
    assert set(accuracy) == {"shape", "color", "style"}
    for domain, value in accuracy.items():
        assert value >= 0.99, f"{domain}: {value:.3f}"


def test_background_only_renders_are_judged_none(judge):
    styles = list(STYLES) * 5
    images = render(
        [None] * len(styles), [None] * len(styles), styles, generator=torch.Generator().manual_seed(7)
    )
    predictions = judge.predict(images)
    assert predictions["shape"] == [None] * len(styles)
    assert predictions["color"] == [None] * len(styles)
    assert predictions["style"] == styles  # the background is still named


def test_every_shape_and_colour_is_recognised(judge):
    shapes = [s for s in SHAPES for _ in COLORS]
    colors = [c for _ in SHAPES for c in COLORS]
    styles = [STYLES[i % len(STYLES)] for i in range(len(shapes))]
    predictions = judge.predict(render(shapes, colors, styles, generator=torch.Generator().manual_seed(3)))
    assert predictions["shape"] == shapes
    assert predictions["color"] == colors


def test_recorded_accuracy_meets_the_bar(judge):
    info = json.loads((JUDGE_DIR / "judge.json").read_text())
    for domain in ("shape", "color", "style"):
        assert info["accuracy_fresh_renders"][domain] >= 0.99
    assert (JUDGE_DIR / "judge.safetensors").stat().st_size < 2 * 2**20
    assert judge.version == info["weights_sha256"][:16]


def test_api_shapes_probabilities_and_other_sizes(judge, fresh):
    images, labels = fresh
    probabilities = judge.probabilities(images[:10])
    for domain, classes in CLASSES.items():
        assert probabilities[domain].shape == (10, len(classes))
        assert torch.allclose(probabilities[domain].sum(-1), torch.ones(10), atol=1e-5)
    assert judge.features(images[:10]).shape == (10, judge.config.feature_dim)
    # other sizes are resized to the judge's 32x32: a 64x64 render is judged as well as a 32x32 one
    big = render_labels(labels[:60], size=64, generator=torch.Generator().manual_seed(FRESH_SEED))
    assert min(judge.accuracy(big, labels[:60]).values()) >= 0.95
    small = judge.predict(images[:4, :, ::2, ::2])  # 16x16 input (the tiny test pipeline's size)
    assert all(len(v) == 4 for v in small.values())


@pytest.mark.parametrize("bad", [torch.zeros(3, 32, 32), torch.zeros(2, 1, 32, 32), [[0.0]]])
def test_bad_inputs_are_user_errors(judge, bad):
    with pytest.raises(ErasekitError, match="images"):
        judge.predict(bad)


def test_missing_judge_folder_is_a_user_error(tmp_path):
    with pytest.raises(ErasekitError, match="judge-train"):
        load_judge(tmp_path)


def test_augment_keeps_range_and_is_seeded(fresh):
    images = fresh[0][:16]
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert 0 <= a.min() and a.max() <= 1 and not torch.equal(a, images)


def test_training_recipe_is_deterministic_and_round_trips(tmp_path):
    config = JudgeConfig(steps=3, batch=8, pool=48, eval_images=24)
    first = train_judge(config, progress=False)
    second = train_judge(config, progress=False)
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key
    save_judge(first, tmp_path)
    loaded = load_judge(tmp_path)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.features(x), first.features(x))
    assert loaded.info["accuracy_fresh_renders"].keys() >= {"shape", "color", "style"}
