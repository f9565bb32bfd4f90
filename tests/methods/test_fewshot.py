"""Few-shot text-encoder unlearning: properties on the tiny pipeline (seconds)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import get_method, run_method

FAST = [
    "num_images=2",
    "batch_size=2",
    "views=2",
    "probes=4",
    "generate_steps=2",
    "preserve_weight=0",
    "verify=0",
]


def erase(backend, overrides, concepts=None):
    method = get_method("fewshot")
    config = build_config(method.config_cls, None, FAST + overrides)
    concepts = concepts or ConceptSpec.from_lists(
        ["cat"], preserve=["dog"], templates=["a photo of a {}", "{}"]
    )
    return run_method(method, backend, concepts, config, seed=0)


def test_only_text_encoder_changes_and_unet_is_bit_equal(tiny_backend, tiny_pipeline):
    artifact = erase(tiny_backend, ["lr=1e-3", "epochs=2", "stop_rule=none", "max_drift=0"])
    assert artifact.manifest["weights"], "no parameter changed"
    assert all(name.startswith("text_encoder.") for name in artifact.manifest["weights"])
    # The default target is every layer's MLP plus the last layer's attention, for any depth.
    names = set(artifact.manifest["weights"])
    assert any(".layers.0.mlp.fc1." in n for n in names)
    assert any(".layers.1.self_attn." in n for n in names)
    assert not any(".layers.0.self_attn." in n for n in names)

    unet_before = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in tiny_pipeline.text_encoder.state_dict().items()}
    apply(artifact, tiny_pipeline)
    for key, value in tiny_pipeline.unet.state_dict().items():
        assert torch.equal(value, unet_before[key]), key
    changed = [
        k for k, v in tiny_pipeline.text_encoder.state_dict().items() if not torch.equal(v, text_before[k])
    ]
    assert changed


def test_denoising_loss_of_the_concept_goes_up(tiny_backend):
    report = erase(tiny_backend, ["lr=3e-3", "epochs=3", "stop_rule=none", "max_drift=0"]).manifest[
        "training"
    ]
    assert report["steps_run"] == report["steps_max"] == 3
    assert report["probe_loss_final"] > report["probe_loss_initial"]


def test_loss_bound_stops_the_ascent(tiny_backend):
    report = erase(
        tiny_backend, ["lr=1e-2", "epochs=20", "stop_rule=initial", "stop_factor=1.0001", "max_drift=0"]
    ).manifest["training"]
    assert report["stopped_by"] == "loss_bound"
    assert report["steps_run"] < report["steps_max"]
    assert report["probe_loss_final"] >= report["loss_ceiling"]


def test_trust_region_undoes_the_step_that_leaves_it(tiny_backend):
    artifact = erase(tiny_backend, ["lr=1e-2", "epochs=5", "stop_rule=none", "max_drift=1e-9"])
    report = artifact.manifest["training"]
    assert report["stopped_by"] == "trust_region"
    assert report["steps_run"] == 0
    assert not artifact.manifest.get("weights")  # the only step was undone: nothing changed


@torch.no_grad()
def test_drift_penalty_keeps_preserved_prompts_closer(tiny_backend, tiny_pipeline):
    from erasekit.backends.sd import SDBackend

    base = SDBackend(tiny_pipeline, name="tiny")
    before = base.encode_prompts(["a photo of a dog", "dog"])
    drifts = []
    for weight in (0, 100):
        artifact = erase(tiny_backend, ["lr=1e-2", "epochs=4", "stop_rule=none", f"preserve_weight={weight}"])
        apply(artifact, tiny_pipeline)
        drifts.append(float((base.encode_prompts(["a photo of a dog", "dog"]) - before).norm()))
        revert(tiny_pipeline)
    assert drifts[1] < 0.5 * drifts[0]


def test_zero_shot_generates_its_own_images_or_raises(tiny_backend):
    report = erase(tiny_backend, ["epochs=1"]).manifest["training"]
    assert report["image_source"] == ["generated"]
    with pytest.raises(ErasekitError, match="--images"):
        erase(tiny_backend, ["zero_shot=error"])


def test_images_dir_and_shapesworld_renders(tiny_backend, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (24, 20), (200, 10 * i, 10)).save(tmp_path / f"{i}.png")
    report = erase(tiny_backend, ["epochs=1", f"images_dir={tmp_path}"]).manifest["training"]
    assert report["image_source"] == ["images_dir"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ErasekitError, match="No PNG/JPG"):
        erase(tiny_backend, ["epochs=1", f"images_dir={tmp_path / 'empty'}"])

    from erasekit.world.source import ShapesWorldSource

    # The model's data source supplies real images when it can render the concept (ShapesWorld can).
    previous, tiny_backend.data_source = getattr(tiny_backend, "data_source", None), ShapesWorldSource()
    try:
        report = erase(tiny_backend, ["epochs=1"], ConceptSpec.from_lists(["star"])).manifest["training"]
    finally:
        tiny_backend.data_source = previous
    assert report["image_source"] == ["shapesworld"]


def test_bad_inputs_raise_one_line_errors(tiny_backend):
    method = get_method("fewshot")
    with pytest.raises(ErasekitError):
        build_config(method.config_cls, None, ["lr=0"])
    with pytest.raises(ErasekitError):
        build_config(method.config_cls, None, ["stop_rule=sometimes"])
    with pytest.raises(ErasekitError, match="text encoder only"):
        erase(tiny_backend, ["target=cross_attn_kv"])


def test_shapesworld_renders_are_captioned_truthfully_and_the_mismatch_swaps_the_concept():
    from erasekit.concepts import swap_word
    from erasekit.world import domain_of
    from erasekit.world.source import ShapesWorldSource

    generator = torch.Generator().manual_seed(0)
    for concept in ("heart", "blue", "dotted"):
        images, labels, all_captions = ShapesWorldSource().labelled_images(concept, 4, 32, generator)
        assert images.shape == (4, 3, 32, 32) and all(lab[domain_of(concept)] == concept for lab in labels)
        for label, captions in zip(labels, all_captions):
            assert captions and all(concept in re.findall(r"\w+", c) for c in captions)
            # every attribute a caption names is the render's own (no template's fixed "a green {}")
            words = {w for c in captions for w in re.findall(r"\w+", c)}
            named = {v for k, v in label.items() if v in words}
            assert named >= {concept}
            assert not words & ({"red", "green", "blue", "star", "circle", "plain"} - set(label.values()))
    assert swap_word("a red star on a dotted background", "red", "orange") == (
        "an orange star on a dotted background"
    )
    assert swap_word("an orange cross", "orange", "red") == "a red cross"
    assert swap_word("a starry star", "star", "ring") == "a starry ring"  # whole words only


def test_past_the_cap_a_stalled_ascent_relaxes_the_trust_region_and_nothing_else_changes(tiny_backend):
    """relax_steps: only a concept still below the loss bound at the step cap trains on, with λ
    halved at every stalled check; one that reaches the bound within the cap trains exactly as
    without it (bit-equal deltas)."""
    lam = ["preserve_weight=10", "epochs=2", "check_every=1", "stall_fraction=1"]
    stalled = erase(tiny_backend, lam + ["stop_factor=100", "relax_steps=4"])
    training = stalled.manifest["training"]
    assert training["steps_max"] == 2 and training["relax_steps_run"] == 4
    weights = [h["preserve_weight"] for h in training["history"]]
    assert weights[:2] == [10.0, 10.0] and weights[-1] == pytest.approx(10.0 / 2**4)
    capped = erase(tiny_backend, lam + ["stop_factor=100", "relax_steps=0"]).manifest["training"]
    assert capped["relax_steps_run"] == 0 and capped["stopped_by"] == "steps"
    within = ["lr=1e-2", "epochs=20", "stop_rule=initial", "stop_factor=1.0001"]
    quick = [erase(tiny_backend, lam + within + [f"relax_steps={n}"]) for n in (0, 4)]
    report = quick[0].manifest["training"]
    assert report["stopped_by"] == "loss_bound" and 1 <= report["steps_run"] < report["steps_max"]
    assert quick[0].tensors and quick[1].manifest["training"]["relax_steps_run"] == 0
    assert all(torch.equal(quick[0].tensors[k], quick[1].tensors[k]) for k in quick[0].tensors)


def test_timesteps_follow_the_weights_of_equal_slices_of_the_schedule():
    from erasekit.methods.fewshot import timesteps_at

    u = torch.linspace(0, 0.999, 200)
    assert torch.equal(timesteps_at(u, torch.ones(10), 1000), (u * 1000).long())  # uniform
    one_hot = torch.zeros(10)
    one_hot[7] = 1.0
    t = timesteps_at(u, one_hot, 1000)
    assert int(t.min()) >= 700 and int(t.max()) <= 799  # all in slice 7, spread over it
    assert int(t.max()) - int(t.min()) > 90
    skewed = timesteps_at(u, torch.tensor([1.0, 3.0]), 1000)
    assert float((skewed >= 500).float().mean()) == pytest.approx(0.75, abs=0.01)
    assert torch.all(skewed[1:] >= skewed[:-1])  # a quantile function


def test_paper_preset_is_the_plain_ascent():
    config = build_config(get_method("fewshot").config_cls, None, ["preset=paper"])
    assert (config.verify, config.restarts, config.timestep_mix, config.stop_rule) == (0, 0, 0.0, "none")
    assert config.concept_mask == (0.0,)


@pytest.mark.parametrize("present, kept", [(1.0, 1.0), (0.0, 1.0), (0.0, 0.5)])
def test_verification_decides_stop_continue_and_restart(tiny_backend, monkeypatch, present, kept):
    """The control flow around the check (the classifier's quality is tested on ShapesWorld): erased
    and kept -> stop "verified" at the first check; still recognised -> train to the cap, then restart
    from the original weights; erased but the rest damaged -> λ doubles and training goes on."""
    from erasekit.methods import verification

    calls = []

    def fake_check(self, backend, confirm=False):  # the first call is the original model's baseline
        calls.append(1)
        return {"present": {"cat": present}, "kept": 1.0 if len(calls) == 1 else kept}

    monkeypatch.setattr(verification.Verifier, "check", fake_check)
    monkeypatch.setattr(verification.Verifier, "_own_share", lambda self, b, x0, caps: 1.0)
    quick = [o for o in FAST if o != "verify=0"]
    artifact = erase(
        tiny_backend,
        quick
        + ["lr=1e-2", "epochs=3", "relax_steps=0", "stop_rule=initial", "stop_factor=1e-6", "verify=2"]
        + ["verify_every=1", "verify_backoff=1", "verify_timesteps=1", "restarts=1", "preserve_weight=1"],
    )
    training = artifact.manifest["training"]
    assert training["verification"]["erase"] == {"cat": ["dog"]}
    attempts = training["attempts"]
    if present == 0.0 and kept == 1.0:
        assert training["stopped_by"] == "verified" and training["steps_run"] == 0
        assert [a["stopped_by"] for a in attempts] == ["verified"]
        assert training["verified"] is True
    else:
        assert [a["stopped_by"] for a in attempts] == ["steps", "steps"]  # one restart, both to the cap
        assert [a["concept_mask"] for a in attempts] == [0.0, 0.5]  # the restart trains on the masked loss
        assert training["verified"] is False  # what `erasekit erase` reports as "not verified"
        assert training["steps_run"] == training["steps_max"] == 3
        expected = 1.0 * 2**3 if kept < 1.0 else 1.0  # doubled at each of the 3 checks, else untouched
        assert training["preserve_weight_final"] == expected


def test_a_verified_attempt_beats_an_earlier_unconfirmed_tie(tiny_backend, monkeypatch):
    """An attempt whose last check at the cap passed but was never confirmed scores 0, as a verified one
    does: the verified one (the later attempt here) must be the one returned."""
    from erasekit.methods import fewshot

    scripted = iter(["steps", "verified"])

    def fake_train(self, backend, concepts, config, params, data, generator, rng, verifier, mix):
        stopped = next(scripted)
        check = {"step": 3, "present": {"cat": 0.0}, "kept": 1.0}
        return {
            "stopped_by": stopped,
            "verified": stopped == "verified",
            "verification": {"baseline_kept": 1.0, "checks": [check]},
        }

    monkeypatch.setattr(fewshot.FewShot, "_train", fake_train)
    monkeypatch.setattr(fewshot.Verifier, "active", True, raising=False)
    monkeypatch.setattr(fewshot.Verifier, "__init__", lambda self, *a, **k: None)
    quick = [o for o in FAST if o != "verify=0"] + ["verify=2", "restarts=2"]
    training = erase(tiny_backend, quick).manifest["training"]
    assert [a["stopped_by"] for a in training["attempts"]] == ["steps", "verified"]
    assert [a["score"] for a in training["attempts"]] == [0.0, 0.0]
    assert training["stopped_by"] == "verified" and training["verified"] is True


class _HalfBackend:
    """A denoiser whose prediction reads the caption only in the left half of the image."""

    def encode_prompts(self, prompts):
        return torch.tensor([[[float(len(p))]] for p in prompts])

    def predict_noise(self, x_t, t, cond):
        out = torch.zeros_like(x_t)
        out[..., : x_t.shape[-1] // 2] = cond[:, :1, :1, None]
        return out + x_t


def test_concept_mask_weights_where_swapping_the_concept_changes_the_prediction():
    from erasekit.methods.fewshot import ConceptMask, FewShotConfig, weighted_mse

    backend = _HalfBackend()
    concepts = ConceptSpec.from_lists(["cat"], preserve=["horse", "ox"], templates=["a {}"])
    data = [{"concept": "cat", "captions": [["a cat here"], ["one cat"]]}]
    mask = ConceptMask(backend, concepts, data, FewShotConfig(), random.Random(0), 0.5)
    assert mask.alternatives == {"cat": ["horse", "ox"]}  # no data source: the preserve list
    x_t = torch.randn(2, 3, 4, 4)
    t = torch.zeros(2, dtype=torch.long)
    captions = ["a cat here", "one cat"]
    weight = mask.weights(backend, x_t, t, captions, mask.swaps(captions, ["cat", "cat"], None))
    # the caption changes the left half only: there d is twice its mean, elsewhere 0
    assert torch.allclose(weight[..., :2], torch.full_like(weight[..., :2], 0.5 + 0.5 * 2))
    assert torch.allclose(weight[..., 2:], torch.full_like(weight[..., 2:], 0.5))
    assert torch.allclose(weight.flatten(1).mean(1), torch.ones(2))  # the loss keeps its scale
    drawn = mask.swaps(captions, ["cat", "cat"], random.Random(1))
    assert len(drawn) == 1  # one alternative drawn per caption, the concept word swapped out
    assert all(re.search(r"\b(horse|ox)\b", s) and "cat" not in s for s in drawn[0])
    # a caption the concept word does not change (no swap) is trained on the plain loss
    same = mask.weights(backend, x_t[:1], t[:1], ["a cat here"], [["a cat here"]])
    assert torch.equal(same, torch.ones_like(same))
    assert mask.weights(backend, x_t, t, captions, []) is None  # no alternative: no mask
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.isclose(weighted_mse(pred, target, None), torch.nn.functional.mse_loss(pred, target))


def test_concept_mask_trains_and_is_recorded(tiny_backend):
    report = erase(tiny_backend, ["lr=3e-3", "epochs=2", "stop_rule=none", "concept_mask=0.5"]).manifest[
        "training"
    ]
    assert report["mask_alternatives"] == {"cat": ["dog"]}
    assert report["probe_loss_final"] > report["probe_loss_initial"]
    plain = erase(tiny_backend, ["epochs=1", "stop_rule=none"]).manifest["training"]  # default: 0 first
    assert plain["mask_alternatives"] is None and plain["concept_mask"] == 0


def test_one_preserve_concept_losing_its_samples_fails_the_keep_check_even_when_the_pool_passes():
    from types import SimpleNamespace

    from erasekit.methods.fewshot import FewShotConfig, kept_enough
    from erasekit.methods.verification import Verifier

    keep = [
        SimpleNamespace(concept="white", prompts=["a"] * 3),
        SimpleNamespace(concept="star", prompts=["b"]),
    ]
    verifier = SimpleNamespace(baseline_kept=1.0, baseline_each={"white": 3, "star": 1}, keep=keep)
    verifier.most_lost = lambda check: Verifier.most_lost(verifier, check)
    config = FewShotConfig()  # pooled: at most 1/16 fewer; each: at most half of a concept's samples
    assert kept_enough(verifier, {"kept": 23 / 24, "kept_each": {"white": 2, "star": 1}}, config)
    assert not kept_enough(verifier, {"kept": 23 / 24, "kept_each": {"white": 1, "star": 1}}, config)
    assert not kept_enough(verifier, {"kept": 23 / 24, "kept_each": {"white": 3, "star": 0}}, config)
    assert not kept_enough(verifier, {"kept": 21 / 24, "kept_each": {"white": 3, "star": 1}}, config)
    assert kept_enough(verifier, {"kept": None}, config)
