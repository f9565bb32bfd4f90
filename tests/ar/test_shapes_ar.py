"""The shipped ShapesWorld-AR model: it loads through the zoo, `erasekit generate` works, its images
pass the judge, and EAR erases "star" (the judge sees fewer stars) while another shape holds."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.methods import get_method, run_method
from erasekit.world.ar_assets import SHIPPED_AR_DIR
from erasekit.world.captions import prompt_for
from erasekit.world.concepts import COLORS, STYLES


@pytest.fixture(scope="module")
def shapes_ar():
    from erasekit.zoo import load_model

    return load_model("shapes-ar")


@pytest.fixture(scope="module")
def judge():
    from erasekit.world.judge import load_judge

    return load_judge()


def _prompts(shape: str, n: int) -> tuple[list[str], list[dict]]:
    labels = [{"shape": shape, "color": COLORS[i % 8], "style": STYLES[(3 * i + 1) % 6]} for i in range(n)]
    return [prompt_for(**lab) for lab in labels], labels


def _shape_rate(backend, judge, shape: str, n: int = 16, seed: int = 100) -> float:
    prompts, _ = _prompts(shape, n)
    images = backend.sample(prompts, list(range(seed, seed + n)))
    return sum(p == shape for p in judge.predict(images)["shape"]) / n


def test_the_shipped_model_is_small_and_documented():
    import json

    size = sum(f.stat().st_size for f in SHIPPED_AR_DIR.rglob("*") if f.is_file())
    assert size < 12 * 2**20
    manifest = json.loads((SHIPPED_AR_DIR / "erasekit_manifest.json").read_text())
    assert manifest["ar"]["loss_curve"] and manifest["vq"]["loss_curve"] and manifest["seed"] == 0
    assert manifest["ar"]["loss_curve"][-1]["ema_loss"] < manifest["ar"]["loss_curve"][0]["ema_loss"]


def test_images_pass_the_judge(shapes_ar, judge):
    prompts, labels = [], []
    for shape in ("circle", "star", "heart", "diamond"):
        p, lab = _prompts(shape, 8)
        prompts += p
        labels += lab
    images = shapes_ar.sample(prompts, list(range(len(prompts))))
    assert images.shape == (32, 3, 32, 32)
    accuracy = judge.accuracy(images, labels)
    assert min(accuracy.values()) >= 0.9, accuracy  # the full-grid gate (≥ 0.95) is in benchmarks/


def test_generate_command_works_on_shapes_ar(tmp_path):
    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    _register()
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            "shapes-ar",
            "--prompt",
            "a red star",
            "--n",
            "2",
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "g").glob("*.png"))) == 2


@pytest.mark.slow
def test_ear_erases_star_and_keeps_circle(shapes_ar, judge):
    """EAR with a reduced budget (8 iterations) on the shipped model: stars drop, circles stay.

    Slow because one EAR run on shapes-ar took 100-200 s on the shared 2-core CPU (load 4-8), above
    the ~60 s a default-run test may take; the tiny-model EAR tests in test_ear.py run by default.
    """
    before = {k: v.clone() for k, v in shapes_ar.named_parameters().items()}
    star_before = _shape_rate(shapes_ar, judge, "star")
    circle_before = _shape_rate(shapes_ar, judge, "circle")
    method = get_method("ear")
    config = method.config_cls(iterations=8)
    artifact = run_method(method, shapes_ar, ConceptSpec.from_lists(["star"]), config, seed=0)
    try:
        apply(artifact, shapes_ar)
        star_after = _shape_rate(shapes_ar, judge, "star")
        circle_after = _shape_rate(shapes_ar, judge, "circle")
    finally:
        revert(shapes_ar)
    assert all(torch.equal(v, before[k]) for k, v in shapes_ar.named_parameters().items())
    assert star_before >= 0.8 and star_after <= 0.3, (star_before, star_after)
    assert circle_after >= circle_before - 0.2, (circle_before, circle_after)
