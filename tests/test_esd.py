"""ESD properties: the loss falls, only the targeted weights move, no second UNet, the model is restored."""

from __future__ import annotations

import copy
import gc
from dataclasses import replace

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import run_method
from erasekit.methods.esd import (
    ESD,
    ESDConfig,
    erase_prompts,
    esd_target,
    keep_preserved,
    paper_eta,
    row_covariance,
)

STAR = ConceptSpec.from_lists(["star"])


def _snapshot(backend) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.named_parameters().items()}


def test_loss_decreases(tiny_backend):
    # ddim_steps=1: every x_t is fresh noise at the first timestep, so the loss history is not dominated
    # by which timestep was drawn; a large lr makes a dozen steps enough on the tiny model.
    config = build_config(ESDConfig, None, ["iterations=12", "ddim_steps=1", "lr=2e-3"])
    artifact = run_method(ESD(), tiny_backend, STAR, config, seed=0)
    loss = artifact.manifest["training"]["loss"]
    assert len(loss) == 12
    assert sum(loss[-4:]) < 0.5 * sum(loss[:4])


@pytest.mark.parametrize(
    ("variant", "target"), [("x", "cross_attn"), ("u", "unet_non_cross"), ("kv", "cross_attn_kv")]
)
def test_only_targeted_weights_change(tiny_backend, variant, target):
    config = build_config(ESDConfig, None, [f"variant={variant}", "iterations=2", "ddim_steps=2", "lr=1e-3"])
    before = _snapshot(tiny_backend)
    artifact = run_method(ESD(), tiny_backend, STAR, config, seed=0)
    targeted = set(tiny_backend.parameters_for(target))
    assert set(artifact.manifest["weights"]) == targeted
    assert all(mode == "delta" for mode in artifact.manifest["weights"].values())
    if variant == "u":
        assert not any(".attn2." in n or "time_embedding" in n for n in targeted)
    apply(artifact, tiny_backend)
    try:
        after = _snapshot(tiny_backend)
    finally:
        revert(tiny_backend)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= targeted
    assert all(torch.equal(before[k], after[k]) for k in before if k not in targeted)


def test_teacher_is_not_a_second_unet(tiny_backend, monkeypatch):
    deepcopy = copy.deepcopy

    def no_module_deepcopy(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError(f"ESD deep-copied a {type(obj).__name__}")
        return deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_module_deepcopy)
    unet_type = type(tiny_backend.unet)
    counts: list[int] = []
    step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):  # count live UNets while training is under way
        counts.append(sum(type(o) is unet_type for o in gc.get_objects()))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    artifact = run_method(
        ESD(), tiny_backend, STAR, build_config(ESDConfig, None, ["iterations=2", "ddim_steps=2"])
    )
    assert counts == [1, 1]
    # the only copies kept are the trained parameters' originals: ESD-x trains a small part of the UNet
    trained = artifact.manifest["training"]["trained_parameters"]
    assert trained < 0.5 * sum(p.numel() for p in tiny_backend.unet.parameters())


def test_model_restored_when_training_fails(tiny_backend, monkeypatch):
    before = _snapshot(tiny_backend)
    calls = {"n": 0}
    predict = tiny_backend.predict_noise

    def failing_predict(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # ddim_steps=1: a teacher and a student call per iteration; 6 = 3rd student
            raise RuntimeError("boom")
        return predict(*args, **kwargs)

    monkeypatch.setattr(tiny_backend, "predict_noise", failing_predict)
    with pytest.raises(RuntimeError, match="boom"):
        ESD().erase(tiny_backend, STAR, ESDConfig(iterations=3, ddim_steps=1, lr=1e-2))
    after = tiny_backend.named_parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad or p.grad is not None for p in after.values())


def test_target_is_negative_guidance():
    eps_uncond, eps_concept = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    # η = 1: reflect the concept prediction through the unconditional one
    torch.testing.assert_close(esd_target(eps_uncond, eps_concept, 1.0), torch.tensor([-1.0, 3.0]))
    torch.testing.assert_close(esd_target(eps_uncond, eps_concept, 0.5), torch.tensor([0.0, 2.5]))


@pytest.mark.parametrize(
    "spec",
    [
        ConceptSpec.from_lists(["star"], anchors=["square"]),
        ConceptSpec.from_lists(["star"], preserve=["circle"]),
    ],
)
def test_anchor_or_preserve_is_a_user_error(tiny_backend, spec):
    with pytest.raises(ErasekitError):
        ESD().erase(tiny_backend, spec, ESDConfig(iterations=1))


def test_preserve_without_the_retain_term_says_how_to_keep_it(tiny_backend):
    spec = ConceptSpec.from_lists(["star"], preserve=["circle"])
    with pytest.raises(ErasekitError, match="retain_weight=1"):
        ESD().erase(tiny_backend, spec, ESDConfig(iterations=1))


def test_retain_term_without_retain_prompts_is_a_user_error(tiny_backend):
    with pytest.raises(ErasekitError, match="--retain FILE"):
        ESD().erase(tiny_backend, STAR, ESDConfig(iterations=1, retain_weight=1.0))


def _retain_drift(backend, artifact, cache) -> float:
    """Relative change of the model's prediction on the cached retain states once ``artifact`` applies."""
    with torch.no_grad():
        apply(artifact, backend)
        try:
            after = backend.predict_noise(cache["x"], cache["t"], cache["conds"][cache["owner"]])
        finally:
            revert(backend)
    return float((after - cache["target"]).norm() / cache["target"].norm())


def test_retain_term_holds_the_retain_prompts(tiny_backend):
    # The same run (seed, iterations, lr) with and without the retain term: with it, the retain
    # prompts' predictions move far less, and preserve prompts join the retain pool.
    spec = replace(
        ConceptSpec.from_lists(["star"], preserve=["circle"]), retain=("a red square", "a blue ring")
    )
    base = ["iterations=30", "ddim_steps=3", "lr=1e-3", "retain_batch=6"]
    held = run_method(
        ESD(),
        tiny_backend,
        spec,
        build_config(ESDConfig, None, [*base, "retain_weight=20"]),
        seed=0,
        complete=False,
    )
    training = held.manifest["training"]
    # the pool (2 retain prompts + circle in every template) is under retain_prompts=16: all of it
    assert sorted(training["retain_prompts"]) == sorted(
        ["a red square", "a blue ring", *spec.prompts("circle")]
    )
    assert len(training["retain_loss"]) == 30
    free = run_method(ESD(), tiny_backend, STAR, build_config(ESDConfig, None, base), seed=0, complete=False)
    cache = ESD._retain_cache(
        tiny_backend, spec, build_config(ESDConfig, None, base), torch.Generator().manual_seed(0)
    )
    assert _retain_drift(tiny_backend, held, cache) < 0.5 * _retain_drift(tiny_backend, free, cache)


def test_templates_prompts_train_on_every_template(tiny_backend, monkeypatch):
    seen: list[str] = []
    encode = tiny_backend.encode_prompts

    def recording_encode(prompts):
        seen.extend(prompts)
        return encode(prompts)

    monkeypatch.setattr(tiny_backend, "encode_prompts", recording_encode)
    spec = ConceptSpec.from_lists(["star"], templates=["a {} on grass", "two {} toys"])
    ESD().erase(tiny_backend, spec, ESDConfig(iterations=1, ddim_steps=1, prompts="templates"))
    assert {"a star on grass", "two star toys"} <= set(seen) and "star" not in seen
    # each is guided away from its own caption without the concept
    assert erase_prompts(spec, "templates") == [
        ("a star on grass", "on grass"),
        ("two star toys", "two toys"),
    ]
    assert erase_prompts(spec, "concept") == [("star", "")]


def test_reference_convention_is_the_papers_eta_plus_one():
    # esd_sd.py's target ε_c − g (ε_c − ε_∅), written out, equals eq. 3 with η = g − 1
    eps_uncond, eps_concept = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    g = 2.0
    script_target = eps_concept - g * (eps_concept - eps_uncond)
    torch.testing.assert_close(esd_target(eps_uncond, eps_concept, paper_eta(g, "reference")), script_target)
    assert build_config(ESDConfig, None, ["eta=2", "eta_convention=reference"]).paper_eta == 1.0
    assert build_config(ESDConfig, None, ["eta=2"]).paper_eta == 2.0
    # the reference preset is the script's defaults, its η in its own convention: the paper's η = 1
    reference = build_config(ESDConfig, None, ["preset=reference"])
    assert (reference.eta, reference.eta_convention, reference.paper_eta) == (2.0, "reference", 1.0)
    assert (reference.iterations, reference.lr, reference.trajectory_model) == (200, 5e-5, "original")
    # eta_convention=reference with η ≤ 1 would be paper η ≤ 0: refused
    with pytest.raises(ErasekitError, match="η must be > 0"):
        build_config(ESDConfig, None, ["eta=1", "eta_convention=reference"])


def test_old_negative_guidance_says_how_to_migrate():
    with pytest.raises(ErasekitError) as info:
        build_config(ESDConfig, None, ["negative_guidance=2"])
    message = str(info.value)
    assert "\n" not in message and "-o eta=2" in message and "eta_convention=reference" in message


def test_trajectory_from_the_original_model_leaves_the_model_unchanged(tiny_backend):
    before = {k: v.clone() for k, v in tiny_backend.named_parameters().items()}
    config = ESDConfig(iterations=4, ddim_steps=3, lr=1e-2, trajectory_model="original")
    # seed 1 draws DDIM step indices 2, 1, 0, 2: x_t after step 0 depends on the model (k = 0 would be
    # the initial noise for both, as seed 0's first five draws are)
    artifact = run_method(ESD(), tiny_backend, STAR, config, seed=1)
    trained = run_method(ESD(), tiny_backend, STAR, ESDConfig(iterations=4, ddim_steps=3, lr=1e-2), seed=1)
    after = tiny_backend.named_parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the first iteration's x_t is the same (nothing trained yet); later ones come from other models
    original, current = artifact.manifest["training"]["loss"], trained.manifest["training"]["loss"]
    assert original[0] == current[0]
    assert original[1:] != current[1:]


@pytest.mark.parametrize(
    "override",
    [
        "iterations=0",
        "lr=0",
        "lr=-1e-5",
        "eta=0",
        "eta=-1",
        "variant=z",
        "ddim_steps=0",
        "retain_weight=-1",
        "retain_prompts=0",
        "retain_batch=0",
        "prompts=words",
        "preserve_weight=-1",
        "preserve_ridge=0",
        "preserve_prompts=0",
    ],
)
def test_bad_config_is_a_user_error(override):
    with pytest.raises(ErasekitError):
        build_config(ESDConfig, None, [override])


def test_preserve_concepts_are_filled_in_only_for_the_retain_term_or_the_resolve(tiny_backend):
    from erasekit.world.source import ShapesWorldSource

    previous, tiny_backend.data_source = getattr(tiny_backend, "data_source", None), ShapesWorldSource()
    try:
        plain = run_method(ESD(), tiny_backend, STAR, ESDConfig(iterations=1, ddim_steps=1), seed=0)
        held = run_method(
            ESD(), tiny_backend, STAR, ESDConfig(iterations=1, ddim_steps=1, retain_weight=1.0), seed=0
        )
        resolved = run_method(
            ESD(),
            tiny_backend,
            STAR,
            ESDConfig(iterations=1, ddim_steps=1, variant="kv", preserve_weight=1.0),
            seed=0,
        )
    finally:
        tiny_backend.data_source = previous
    # the paper's ESD has no preserve term: its manifest lists none
    assert (
        plain.manifest["concepts"]["preserve"] == []
        and "preserve" not in plain.manifest["concepts"]["completed"]
    )
    assert "retain_loss" not in plain.manifest["training"]
    # with the retain term the source's related concepts fill in, the erased one's own kind first
    preserve = held.manifest["concepts"]["preserve"]
    assert preserve[:7] == ShapesWorldSource().same_kind_concepts("star")
    prompts = held.manifest["training"]["retain_prompts"]
    assert len(prompts) == 32 and not any("star" in p.split() for p in prompts)
    # so with the re-solve, whose keep side is the source's captions of them and its retain prompts
    assert resolved.manifest["concepts"]["preserve"] == preserve
    resolve = resolved.manifest["training"]["resolve"]
    # the whole pool, under preserve_prompts=256: each preserve concept's captions and 64 retain prompts
    assert 64 < resolve["keep_prompts"] <= 256 and resolve["erase_prompts"] > 1


def test_keep_preserved_keeps_the_erase_rows_and_frees_the_keep_rows():
    # Erase rows span e0, keep rows e1, nothing spans e2. In that basis C_E = diag(4, 0, 0) and
    # C_P = diag(0, 9, 0), so ΔW' = ΔW diag(1, ρ/(λ·9 + ρ), 1): the erase direction and the
    # unconstrained one keep the trained delta, the keep direction loses it.
    eye = torch.eye(3, dtype=torch.float64)
    erase, keep = 2 * eye[:1].repeat(5, 1), 3 * eye[1:2].repeat(7, 1)
    delta = torch.arange(6, dtype=torch.float64).reshape(2, 3) + 1
    weight, ridge = 2.0, 0.01
    rho = ridge * (4 + weight * 9) / 3  # relative to the mean eigenvalue of C_E + λ C_P
    c_erase, c_keep = row_covariance(erase), row_covariance(keep)
    new = keep_preserved(delta, c_erase, c_keep, weight, ridge)
    torch.testing.assert_close(new[:, 0], delta[:, 0])
    torch.testing.assert_close(new[:, 2], delta[:, 2])
    torch.testing.assert_close(new[:, 1], delta[:, 1] * rho / (weight * 9 + rho))
    # a larger λ frees the keep rows more
    assert keep_preserved(delta, c_erase, c_keep, 20.0, ridge)[:, 1].abs().max() < new[:, 1].abs().max()


def _kv_change(backend, artifact, prompts) -> float:
    """Mean norm of the change the artifact's key/value deltas make to ``prompts``' keys and values."""
    (stream,) = backend.text_linear_inputs(prompts, "cross_attn_kv")
    rows = stream.inputs.flatten(0, 1)
    deltas = [artifact.tensors[f"weights/{name}"] for name in stream.weights]
    return float(torch.stack([(rows @ d.T).norm(dim=1).mean() for d in deltas]).mean())


def test_preserve_weight_keeps_the_keep_prompts_and_the_concepts_edit(tiny_backend):
    # The same run with and without the re-solve: the prompts to keep barely change any more, the
    # erased concept's prompts keep most of what ESD learned, and only key/value weights are edited.
    spec = replace(STAR, retain=("a red square", "a blue ring", "a green circle", "a yellow heart"))
    base = ["variant=kv", "iterations=8", "ddim_steps=2", "lr=1e-2"]
    free = run_method(ESD(), tiny_backend, spec, build_config(ESDConfig, None, base), seed=0, complete=False)
    kept = run_method(
        ESD(),
        tiny_backend,
        spec,
        build_config(ESDConfig, None, [*base, "preserve_weight=1"]),
        seed=0,
        complete=False,
    )
    assert set(kept.manifest["weights"]) == set(tiny_backend.parameters_for("cross_attn_kv"))
    resolve = kept.manifest["training"]["resolve"]
    assert resolve["keep_prompts"] == 4 and resolve["resolved_weights"] == len(kept.manifest["weights"])
    # the manifest's own account agrees: most of the change on the concept's prompts is left, little
    # of it on the prompts to keep
    assert resolve["erase_change_ratio"] > 0.5 and resolve["keep_change_ratio"] < 0.4
    assert _kv_change(tiny_backend, kept, list(spec.retain)) < 0.35 * _kv_change(
        tiny_backend, free, list(spec.retain)
    )
    concept_prompts = ["star", *spec.prompts("star")]
    assert _kv_change(tiny_backend, kept, concept_prompts) > 0.5 * _kv_change(
        tiny_backend, free, concept_prompts
    )


def test_preserve_weight_needs_variant_kv_and_prompts_to_keep(tiny_backend):
    with pytest.raises(ErasekitError, match="variant=kv"):
        build_config(ESDConfig, None, ["preserve_weight=1"])
    with pytest.raises(ErasekitError, match="--retain FILE"):
        ESD().erase(tiny_backend, STAR, ESDConfig(iterations=1, variant="kv", preserve_weight=1.0))
