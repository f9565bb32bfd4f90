"""EAR / ESD-AR on the tiny in-code AR model: the math, WGA/TLM mechanics, targeted weights only,
apply/revert exact, the erase objective drops, and bad input -> one-line error / exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.applying import apply, revert
from erasekit.artifacts import Artifact
from erasekit.backends.ar import build_tiny_ar_backend
from erasekit.concepts import ConceptSpec
from erasekit.errors import ErasekitError
from erasekit.methods import run_method
from erasekit.methods.ear import (
    EAR,
    ESDAR,
    EARConfig,
    ESDARConfig,
    ear_target,
    read_pairs,
    template_pairs,
    tlm_keep,
    windows,
)

SPEC = ConceptSpec.from_lists(
    concepts=["star"], anchors=["square"], templates=["a red {}", "a {} on a plain background"]
)


@pytest.fixture(scope="module")
def ar():
    return build_tiny_ar_backend(seed=1)


def _run(ar, config: EARConfig, spec: ConceptSpec = SPEC, method=None) -> Artifact:
    return run_method(method or EAR(), ar, spec, config, seed=0)


# ---- the math ---------------------------------------------------------------------------------------
def test_ear_target_is_negatively_guided_from_the_safe_state():
    h_u, h_s = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(ear_target(h_u, h_s, 1.0), torch.tensor([0.0, 2.0]))  # s − η(u − s)
    assert torch.equal(ear_target(h_u, h_s, 0.0), h_s)
    assert torch.equal(ear_target(h_s, h_s, 3.0), h_s)  # no concept difference: keep the safe state


def test_windows_and_tlm():
    assert windows(64, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(64, 0) == [(0, 64)]
    assert tlm_keep(0.2, 1.0, 0.05, "relative") and not tlm_keep(0.04, 1.0, 0.05, "relative")
    assert tlm_keep(0.06, 100.0, 0.05, "absolute") and not tlm_keep(0.05, 100.0, 0.05, "absolute")
    assert tlm_keep(0.0, 1.0, 0.05, "off")


def test_template_pairs_swap_the_concept_for_a_replacement():
    spec = ConceptSpec.from_lists(concepts=["star"], templates=["a red {}", "an {}"], kind="object")
    pairs = template_pairs(spec, {"star": ["square", "circle"]}, synonyms=False)
    assert ("a red star", "a red square") in pairs or ("a red star", "a red circle") in pairs
    assert all("star" in u and "star" not in s for u, s in pairs)
    assert ("a star", "a square") in pairs or ("a star", "a circle") in pairs  # articles fixed


# ---- WGA / TLM mechanics -------------------------------------------------------------------------------
def test_wga_takes_one_step_per_window(ar):
    T = ar.num_image_tokens
    for window in (4, 8, 0):
        art = _run(
            ar,
            EARConfig(iterations=2, pairs_per_iteration=2, window=window, tlm="off", anchors_per_iteration=0),
        )
        per_iter = len(windows(T, window))
        assert art.manifest["training"]["optimizer_steps"] == 2 * per_iter
        assert all(len(w) == per_iter for w in art.manifest["training"]["window_loss"])


def test_tlm_masks_windows_below_the_threshold(ar):
    never = _run(ar, EARConfig(iterations=2, pairs_per_iteration=2, window=8, tlm="relative", tau=1e6))
    assert never.manifest["training"]["optimizer_steps"] == 0
    assert never.manifest["training"]["tlm_skipped_windows"] == 2 * 2
    assert all(torch.count_nonzero(t) == 0 for t in never.tensors.values())  # no step, no change
    always = _run(ar, EARConfig(iterations=2, pairs_per_iteration=2, window=8, tlm="absolute", tau=0.0))
    assert always.manifest["training"]["optimizer_steps"] == 4


# ---- the erasure ---------------------------------------------------------------------------------------
def _objective(ar, prompts_u, prompts_s, seeds, eta=1.0):
    """MSE between h_θ(u) and the EAR target on a fresh shared history (the quantity EAR minimises)."""
    with torch.no_grad():
        codes = ar.sample_tokens(prompts_u, seeds)
        return float(
            torch.nn.functional.mse_loss(
                ar.hidden_states(ar.prompt_rows(prompts_u), codes),
                ear_target(
                    ar.hidden_states(ar.prompt_rows(prompts_u), codes),
                    ar.hidden_states(ar.prompt_rows(prompts_s), codes),
                    eta,
                ),
            )
        )


def test_ear_changes_only_targeted_weights_lowers_its_objective_and_reverts_exactly(ar):
    before = {k: v.clone() for k, v in ar.named_parameters().items()}
    config = EARConfig(iterations=12, pairs_per_iteration=4, window=8, lr=3e-3, anchors_per_iteration=0)
    art = _run(ar, config)
    assert set(art.weight_edits) == set(ar.parameters_for("lm_attn_first_2"))
    assert all(torch.count_nonzero(t) > 0 for _mode, t in art.weight_edits.values())
    # the objective is measured with the *teacher's* target, so compute it before applying
    u, s = ["a red star", "a star on a plain background"], ["a red square", "a square on a plain background"]
    with torch.no_grad():
        codes = ar.sample_tokens(u, [11, 12])
        target = ear_target(
            ar.hidden_states(ar.prompt_rows(u), codes), ar.hidden_states(ar.prompt_rows(s), codes), 1.0
        )
        before_loss = torch.nn.functional.mse_loss(ar.hidden_states(ar.prompt_rows(u), codes), target)
    try:
        apply(art, ar)
        changed = {k for k, v in ar.named_parameters().items() if not torch.equal(v, before[k])}
        assert changed == set(art.weight_edits)
        with torch.no_grad():
            after_loss = torch.nn.functional.mse_loss(ar.hidden_states(ar.prompt_rows(u), codes), target)
        assert after_loss < 0.5 * before_loss
    finally:
        revert(ar)
    assert all(torch.equal(v, before[k]) for k, v in ar.named_parameters().items())
    losses = art.manifest["training"]["iteration_loss"]
    assert min(losses[-3:]) < losses[0]


def test_anchor_rows_keep_the_retain_prompts_states(ar):
    import dataclasses

    spec = dataclasses.replace(
        ConceptSpec.from_lists(concepts=["star"], anchors=["square"], templates=["a red {}"]),
        retain=("a blue circle", "a green triangle"),
    )
    kw = dict(iterations=8, pairs_per_iteration=4, window=8, lr=3e-3)
    free = _run(ar, EARConfig(**kw, anchors_per_iteration=0, uncond_rows=False), spec)
    kept = _run(ar, EARConfig(**kw, anchors_per_iteration=2, anchor_weight=10.0), spec)
    prompts = ["a blue circle", "a green triangle"]
    with torch.no_grad():
        codes = ar.sample_tokens(prompts, [3, 4])
        rows = ar.prompt_rows(prompts)
        ref = ar.hidden_states(rows, codes)
    drift = {}
    for name, art in (("free", free), ("kept", kept)):
        try:
            apply(art, ar)
            with torch.no_grad():
                drift[name] = float((ar.hidden_states(rows, codes) - ref).pow(2).mean())
        finally:
            revert(ar)
    assert drift["kept"] < drift["free"]


def test_esd_ar_erases_towards_the_unconditional_state(ar):
    spec = ConceptSpec.from_lists(concepts=["star"], templates=["a red {}"])
    art = _run(ar, ESDARConfig(iterations=2, pairs_per_iteration=2), spec, ESDAR())
    assert art.manifest["method"] == "esd_ar"
    assert art.manifest["training"]["optimizer_steps"] == 2  # one step per iteration (window 0)
    assert art.manifest["training"]["pair_examples"][0][1] == ""
    with pytest.raises(ErasekitError, match="unconditional"):
        _run(ar, ESDARConfig(iterations=1), SPEC, ESDAR())


def test_public_code_ablation_options_run(ar):
    art = _run(ar, EARConfig(iterations=1, pairs_per_iteration=2, context="none", history="separate"))
    assert art.manifest["config"]["context"] == "none" and art.tensors


# ---- bad input ------------------------------------------------------------------------------------------
def test_pair_files(tmp_path):
    good = tmp_path / "pairs.json"
    good.write_text(json.dumps({"unsafe": ["a red star", "a star"], "safe": ["a red square", "a square"]}))
    assert read_pairs(good) == [("a red star", "a red square"), ("a star", "a square")]
    ear_keys = tmp_path / "church.json"  # the EAR repository's key spelling
    ear_keys.write_text(json.dumps([{"original_prompt": "a church", "modified_prompt": "a cinema"}]))
    assert read_pairs(ear_keys) == [("a church", "a cinema")]
    csv = tmp_path / "pairs.csv"
    csv.write_text("unsafe,safe\na red star,a red circle\n")
    assert read_pairs(csv) == [("a red star", "a red circle")]
    unequal = tmp_path / "unequal.json"
    unequal.write_text(json.dumps({"unsafe": ["a", "b"], "safe": ["c"]}))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    no_pairs = tmp_path / "none.json"
    no_pairs.write_text("[]")
    for bad, match in (
        (unequal, "2 unsafe but 1 safe"),
        (empty, "empty"),
        (no_pairs, "no pairs"),
        (tmp_path / "x", "not found"),
    ):
        with pytest.raises(ErasekitError, match=match):
            read_pairs(bad)


def test_ear_on_a_diffusion_model_is_a_one_line_error(tiny_backend):
    with pytest.raises(ErasekitError, match="autoregressive"):
        EAR().erase(tiny_backend, SPEC, EARConfig(iterations=1))


def test_cli_bad_input_exits_2(tmp_path):
    from erasekit.cli.app import app
    from erasekit.cli.main import _register

    _register()
    runner = CliRunner()
    unequal = tmp_path / "unequal.json"
    unequal.write_text(json.dumps({"unsafe": ["a red star", "a star"], "safe": ["a red square"]}))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    base = [
        "erase",
        "ear",
        "--model",
        "tiny-ar",
        "--concept",
        "star",
        "--anchor",
        "square",
        "-o",
        "iterations=1",
    ]
    for pairs in (unequal, empty):
        result = runner.invoke(app, [*base, "-o", f"pairs={pairs}", "--out", str(tmp_path / "a")])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    # an AR artifact made on tiny-ar, applied to the tiny diffusion model
    ok = runner.invoke(
        app, [*base, "-o", "pairs_per_iteration=1", "-o", "window=8", "--out", str(tmp_path / "ar")]
    )
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        app,
        [
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a star",
            "--artifact",
            str(tmp_path / "ar.json"),
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert bad.exit_code == 2, bad.output
    assert "Traceback" not in bad.output


def test_a_diffusion_artifact_on_an_ar_model_is_a_one_line_error(ar):
    artifact = Artifact("uce")
    artifact.add_weight("unet.conv_in.weight", torch.zeros(1), mode="delta")
    artifact.manifest["backend"] = "sd"
    with pytest.raises(ErasekitError, match="kind 'sd'"):
        apply(artifact, ar)
