"""All-but-One: the unconditional score is preserved and the target's guidance follows the alternative's."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.backends.sd import SDBackend
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import get_method, run_method

FAST = ["steps=60", "sample_steps=3", "trajectories=1", "batch_size=4", "lr=3e-3"]
TEMPLATES = ["a photo of a {}"]


def guidance(backend, x, t, prompt):
    cond = backend.encode_prompts([prompt, ""])
    eps_c = backend.predict_noise(x, t, cond[:1].expand(len(x), -1, -1))
    eps_u = backend.predict_noise(x, t, cond[1:].expand(len(x), -1, -1))
    return eps_c - eps_u, eps_u


@pytest.fixture
def probe():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, 8, 8, generator=g), torch.linspace(100, 900, 6).long()


@torch.no_grad()
def test_uncond_score_kept_and_target_guidance_moves_to_the_anchor(tiny_backend, tiny_pipeline, probe):
    x, t = probe
    method = get_method("abo")
    concepts = ConceptSpec.from_lists(["cat"], anchors=["dog"], preserve=["car"], templates=TEMPLATES)
    artifact = run_method(method, tiny_backend, concepts, build_config(method.config_cls, None, FAST))
    assert all(name.startswith("unet.") and ".attn2.to_" in name for name in artifact.manifest["weights"])

    base = SDBackend(tiny_pipeline, name="tiny")
    g_target, eps_u = guidance(base, x, t, "a photo of a cat")
    g_anchor, _ = guidance(base, x, t, "a photo of a dog")
    g_keep, _ = guidance(base, x, t, "a photo of a car")
    apply(artifact, tiny_pipeline)
    g_target_new, eps_u_new = guidance(base, x, t, "a photo of a cat")
    g_keep_new, _ = guidance(base, x, t, "a photo of a car")

    # ε(x, ∅) stays within tolerance (relative L2 over the probe batch).
    assert (eps_u_new - eps_u).norm() / eps_u.norm() < 0.05
    assert artifact.manifest["training"]["uncond_drift"] < 0.05
    # The target's guidance term moved most of the way to the anchor's.
    before, after = (g_target - g_anchor).norm(), (g_target_new - g_anchor).norm()
    assert after < 0.5 * before
    # A preserved concept's guidance moved much less than the target's did.
    assert (g_keep_new - g_keep).norm() < (g_target_new - g_target).norm()


@torch.no_grad()
def test_without_anchor_the_target_guidance_is_removed(tiny_backend, tiny_pipeline, probe):
    x, t = probe
    method = get_method("abo")
    concepts = ConceptSpec.from_lists(["cat"], templates=TEMPLATES)
    config = build_config(method.config_cls, None, FAST + ["no_anchor=unconditional"])
    artifact = run_method(method, tiny_backend, concepts, config)
    base = SDBackend(tiny_pipeline, name="tiny")
    g_before, _ = guidance(base, x, t, "a photo of a cat")
    apply(artifact, tiny_pipeline)
    try:
        g_after, _ = guidance(base, x, t, "a photo of a cat")
    finally:
        revert(tiny_pipeline)
    assert g_after.norm() < 0.5 * g_before.norm()


def test_without_anchor_the_target_follows_its_prompt_without_the_concept(tiny_backend, tiny_pipeline, probe):
    from erasekit.methods.abo import alternative_prompt

    assert alternative_prompt("a photo of a {}", None, "remove") == "a photo of"
    assert alternative_prompt("a {} on a striped background", None, "remove") == "on a striped background"
    assert alternative_prompt("a green {} on a grid", None, "remove") == "a green on a grid"
    assert alternative_prompt("{}", None, "remove") is None  # nothing left: no guidance
    assert alternative_prompt("a photo of a {}", "dog", "remove") == "a photo of a dog"
    x, t = probe
    method = get_method("abo")
    concepts = ConceptSpec.from_lists(["cat"], templates=["a photo of a {}"])
    artifact = run_method(method, tiny_backend, concepts, build_config(method.config_cls, None, FAST))
    base = SDBackend(tiny_pipeline, name="tiny")
    g_cat, _ = guidance(base, x, t, "a photo of a cat")
    g_rest, _ = guidance(base, x, t, "a photo of")
    apply(artifact, tiny_pipeline)
    try:
        g_after, _ = guidance(base, x, t, "a photo of a cat")
    finally:
        revert(tiny_pipeline)
    assert (g_after - g_rest).norm() < 0.5 * (g_cat - g_rest).norm()


def test_bad_config_raises_one_line_errors():
    method = get_method("abo")
    for override in ("steps=0", "lr=-1", "guidance=0.5", "uncond_weight=-1"):
        with pytest.raises(ErasekitError):
            build_config(method.config_cls, None, [override])
