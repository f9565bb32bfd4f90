"""UCE properties: erased embeddings project onto their anchors', preserved ones stay, eq. 7 is met."""

from __future__ import annotations

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.errors import ErasekitError
from erasekit.methods import run_method
from erasekit.methods.uce import (
    UCE,
    UCEConfig,
    collect_embeddings,
    from_last_positions,
    uce_right_factor,
)


def _edited_weights(backend, artifact) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(W_old, W*) of every K/V projection, read from the model before and after applying."""
    params = backend.parameters_for("cross_attn_kv")
    old = {k: p.detach().clone() for k, p in params.items()}
    apply(artifact, backend)
    try:
        return {k: (old[k], params[k].detach().clone()) for k in params}
    finally:
        revert(backend)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("tokens", ["all", "prompt", "last"])
def test_start_token_is_kept_in_every_mode(tiny_backend, tokens):
    # The start token's embedding is in every prompt, the unconditional one included: moving its keys
    # and values would change every prompt's output.
    spec = ConceptSpec.from_lists(["star"])
    artifact = run_method(UCE(), tiny_backend, spec, UCEConfig(tokens=tokens, lamb=1e-3), seed=0)
    with torch.no_grad():
        start = tiny_backend.encode_prompts([""])[:, 0]
    for w_old, w_new in _edited_weights(tiny_backend, artifact).values():
        assert _relative_error(start @ w_new.T, start @ w_old.T) < 1e-2


@pytest.mark.parametrize("tokens", ["prompt", "last"])
def test_erased_concepts_map_onto_anchors_and_preserved_stay(tiny_backend, tokens):
    # Two concepts at once, each with its own anchor, and a preserve set. Few vectors in 32 dims: the
    # constraints are consistent, so with a small λ eq. 7 meets them almost exactly.
    spec = ConceptSpec.from_lists(
        ["star", "heart"], anchors=["square", "circle"], preserve=["triangle", "moon"]
    )
    config = build_config(UCEConfig, None, ["lamb=1e-4", f"tokens={tokens}"])
    artifact = run_method(UCE(), tiny_backend, spec, config, seed=0)
    erase, anchor, preserve = collect_embeddings(tiny_backend, spec, config)
    weights = _edited_weights(tiny_backend, artifact)
    assert set(weights) == set(artifact.manifest["weights"])
    assert len(weights) >= 4  # K and V of every cross-attention layer
    for w_old, w_new in weights.values():
        assert _relative_error(erase @ w_new.T, anchor @ w_old.T) < 1e-2  # W* c_i ≈ v_i* = W_old a_i
        assert _relative_error(preserve @ w_new.T, preserve @ w_old.T) < 1e-2  # W* c_j ≈ W_old c_j
        # and the edit is real: before it, the concepts' projections were far from their anchors'
        assert _relative_error(erase @ w_old.T, anchor @ w_old.T) > 0.1


def test_all_tokens_is_a_least_squares_compromise_that_moves_towards_the_anchor(tiny_backend):
    # "all" edits every padded position: more vectors than dimensions, so eq. 7 is a least-squares fit.
    spec = ConceptSpec.from_lists(["star"], preserve=["circle"])
    config = UCEConfig()
    artifact = run_method(UCE(), tiny_backend, spec, config, seed=0)
    erase, anchor, preserve = collect_embeddings(tiny_backend, spec, config)
    assert erase.shape[0] == tiny_backend.token_ids([""]).shape[1]
    for w_old, w_new in _edited_weights(tiny_backend, artifact).values():
        before = _relative_error(erase @ w_old.T, anchor @ w_old.T)
        after = _relative_error(erase @ w_new.T, anchor @ w_old.T)
        assert after < 0.5 * before


def test_factorised_form_equals_eq7_literally():
    gen = torch.Generator().manual_seed(0)
    d, out = 12, 7
    c_e, a, c_p = (torch.randn(n, d, generator=gen, dtype=torch.float64) for n in (3, 3, 5))
    w_old = torch.randn(out, d, generator=gen, dtype=torch.float64)
    config = UCEConfig(erase_scale=0.7, preserve_scale=2.0, lamb=0.3)
    # eq. 7 written out: (η_e Σ v* cᵀ + η_p Σ W_old c cᵀ + λ W_old)(η_e Σ c cᵀ + η_p Σ c cᵀ + λ I)⁻¹
    v_star = a @ w_old.T
    left = 0.7 * v_star.T @ c_e + 2.0 * w_old @ c_p.T @ c_p + 0.3 * w_old
    right = 0.7 * c_e.T @ c_e + 2.0 * c_p.T @ c_p + 0.3 * torch.eye(d, dtype=torch.float64)
    w_star = left @ torch.inverse(right)
    k = uce_right_factor(c_e, a, c_p, config)
    torch.testing.assert_close(w_old @ (torch.eye(d, dtype=torch.float64) + k), w_star)


def test_directions_outside_the_edited_embeddings_are_untouched():
    gen = torch.Generator().manual_seed(1)
    d = 16
    c_e, a, c_p = (torch.randn(n, d, generator=gen) for n in (2, 2, 3))
    k = uce_right_factor(c_e, a, c_p, UCEConfig(lamb=0.5))
    basis = torch.linalg.qr(torch.cat([c_e, c_p]).T.double(), mode="complete").Q
    orthogonal = basis[:, 5:]  # orthogonal to every erase and preserve embedding
    assert float((k @ orthogonal).abs().max()) < 1e-10


def test_no_anchor_maps_to_the_unconditional_prompt(tiny_backend):
    spec = ConceptSpec.from_lists(["star"])
    config = UCEConfig(tokens="prompt")
    _erase, anchor, _preserve = collect_embeddings(tiny_backend, spec, config)
    with torch.no_grad():
        empty = tiny_backend.encode_prompts([""])[0]
    torch.testing.assert_close(anchor, empty[: anchor.shape[0]])


def test_templates_multiply_the_edited_contexts(tiny_backend):
    spec = ConceptSpec.from_lists(["star"], anchors=["square"], templates=["{}", "a photo of a {}"])
    plain = collect_embeddings(tiny_backend, spec, UCEConfig(tokens="last"))[0]
    templated = collect_embeddings(tiny_backend, spec, UCEConfig(tokens="last", use_templates=True))[0]
    assert plain.shape[0] == 2 and templated.shape[0] == 4  # start token + last word, per context


@pytest.mark.parametrize(
    "override",
    ["lamb=-1", "lamb=0", "erase_scale=0", "preserve_scale=-0.5", "tokens=middle", "lamb=abc", "preset=nope"],
)
def test_bad_config_is_a_user_error(override):
    with pytest.raises(ErasekitError):
        build_config(UCEConfig, None, [override])


def test_erased_prompt_generates_like_its_anchor(tiny_backend):
    # tokens=all moves the whole context of "star" onto that of "square": after the edit, sampling
    # "star" must give (nearly) the images "square" gave with the same seeds, which it did not before.
    # Guidance 1 samples from the conditional branch alone: the edit also moves the unconditional
    # prompt (nothing preserves it), which is a different property from the one tested here.
    def images(prompt: str) -> torch.Tensor:
        return tiny_backend.sample([prompt] * 2, [3, 4], steps=4, guidance=1.0)

    spec = ConceptSpec.from_lists(["star"], anchors=["square"])
    artifact = run_method(UCE(), tiny_backend, spec, UCEConfig(lamb=1e-3), seed=0)
    star, square = images("star"), images("square")
    apply(artifact, tiny_backend)
    try:
        star_erased = images("star")
    finally:
        revert(tiny_backend)
    assert (star_erased - square).abs().mean() < 0.1 * (star - square).abs().mean()


# ---- the alignment of the script released with the paper (tokens=from_last) ------------------------------
def test_from_last_aligns_last_word_tokens_and_cuts_both_to_one_length():
    start, end = 100, 200
    concept = torch.tensor([start, 1, 2, 3, end, end, end, end])  # three words: last word at 3
    anchor = torch.tensor([start, 7, end, end, end, end, end, end])  # one word: last word at 1
    c, a = from_last_positions(concept, anchor, end)
    assert c == [3, 4, 5, 6, 7] and a == [1, 2, 3, 4, 5]  # last word ↔ last word, end ↔ end, …
    empty = torch.tensor([start, end, end, end, end, end, end, end])
    c, a = from_last_positions(concept, empty, end)
    assert c == [3, 4, 5, 6, 7] and a == [0, 1, 2, 3, 4]  # the empty prompt's "last word" is its start


def _unconditional_drift(backend, artifact) -> float:
    """Largest relative change of the unconditional prompt's keys/values over all its positions."""
    with torch.no_grad():
        empty = backend.encode_prompts([""])[0].double()
    drifts = [
        _relative_error(empty @ w_new.double().T, empty @ w_old.double().T)
        for w_old, w_new in _edited_weights(backend, artifact).values()
    ]
    return max(drifts)


def test_paper_preset_preserves_the_unconditional_prompt(tiny_backend):
    spec = ConceptSpec.from_lists(["star"])
    paper = build_config(UCEConfig, None, ["preset=paper"])
    assert (paper.tokens, paper.preserve_unconditional) == ("from_last", True)
    without = build_config(UCEConfig, None, ["preset=paper", "preserve_unconditional=false"])
    drift_paper = _unconditional_drift(tiny_backend, run_method(UCE(), tiny_backend, spec, paper))
    drift_without = _unconditional_drift(tiny_backend, run_method(UCE(), tiny_backend, spec, without))
    assert drift_paper < 0.5 * drift_without
    # and it still erases: the concept's last word token moves towards the anchor's row
    erase, anchor, _ = collect_embeddings(tiny_backend, spec, paper)
    artifact = run_method(UCE(), tiny_backend, spec, paper)
    for w_old, w_new in _edited_weights(tiny_backend, artifact).values():
        assert _relative_error(erase[:1] @ w_new.T, anchor[:1] @ w_old.T) < 0.5 * _relative_error(
            erase[:1] @ w_old.T, anchor[:1] @ w_old.T
        )


def test_empty_preserve_concept_is_the_unconditional_prompt(tiny_backend):
    # --preserve "" and preserve_unconditional=true ask for the same thing: the same edit
    config = UCEConfig(tokens="from_last")
    by_concept = run_method(UCE(), tiny_backend, ConceptSpec.from_lists(["star"], preserve=[""]), config)
    by_flag = run_method(
        UCE(),
        tiny_backend,
        ConceptSpec.from_lists(["star"]),
        UCEConfig(tokens="from_last", preserve_unconditional=True),
    )
    assert by_concept.tensors.keys() == by_flag.tensors.keys()
    assert all(torch.equal(by_concept.tensors[k], by_flag.tensors[k]) for k in by_flag.tensors)
    # the unconditional prompt is not put into templates
    spec = ConceptSpec.from_lists(["star"], preserve=["", "circle"])
    assert spec.prompts("") == [""]
    _, _, preserve = collect_embeddings(tiny_backend, spec, UCEConfig(use_templates=True))
    length = tiny_backend.token_ids([""]).shape[1]
    assert preserve.shape[0] == length * (1 + len(spec.templates))
    # in every token mode the unconditional prompt is kept at every position
    only_empty = ConceptSpec.from_lists(["star"], preserve=[""])
    for tokens in ("prompt", "last"):
        assert collect_embeddings(tiny_backend, only_empty, UCEConfig(tokens=tokens))[2].shape[0] == length


@pytest.mark.parametrize(
    "concepts, preserve, needle",
    [
        ([""], [], "empty"),  # "" is never a concept to erase
        (["star"], ["", ""], "twice"),
        (["star"], ["  "], "empty"),  # from_lists strips: whitespace is "" after all
    ],
)
def test_empty_text_is_only_a_preserve_concept_once(concepts, preserve, needle):
    if preserve == ["  "]:
        assert ConceptSpec.from_lists(concepts, preserve=preserve).preserve == ("",)
        with pytest.raises(ErasekitError, match="only whitespace"):
            ConceptSpec(targets=ConceptSpec.from_lists(concepts).targets, preserve=("  ",))
        return
    with pytest.raises(ErasekitError, match=needle) as info:
        ConceptSpec.from_lists(concepts, preserve=preserve)
    assert "\n" not in str(info.value)


def test_methods_without_unconditional_preserve_refuse_it(tiny_backend):
    from erasekit.methods.esd import ESD, ESDConfig

    spec = ConceptSpec.from_lists(["star"], preserve=[""])
    with pytest.raises(ErasekitError, match='preserve the unconditional prompt ""') as info:
        run_method(ESD(), tiny_backend, spec, ESDConfig(iterations=1))
    assert "\n" not in str(info.value)
