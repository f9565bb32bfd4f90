"""The shipped code-lm really memorised its 16x secrets, and CodeEraser really removes them."""

from __future__ import annotations

import json

import pytest

from erasekit.codeworld.source import SHIPPED_CODE_LM_DIR
from erasekit.codeworld.train import MANIFEST_NAME
from erasekit.evaluation.memorization import extraction, perplexity, secret_examples, secret_ma

pytestmark = pytest.mark.skipif(
    not (SHIPPED_CODE_LM_DIR / "config.json").is_file(), reason="code-lm not shipped"
)


@pytest.fixture(scope="module")
def code_lm():
    from erasekit.zoo import load_model

    return load_model("code-lm")


def test_shipped_manifest_records_recipe_curve_and_memorisation():
    manifest = json.loads((SHIPPED_CODE_LM_DIR / MANIFEST_NAME).read_text())
    assert manifest["recipe"]["steps"] == manifest["curve"][-1]["step"] + 1
    assert manifest["corpus"]["generator"] == "erasekit.codeworld"
    assert manifest["memorization"]["secrets_16x"]["greedy_extraction"] >= 0.8


def test_shipped_model_extracts_its_16x_secrets_but_not_unseen_ones(code_lm):
    source = code_lm.data_source
    sixteen = secret_examples(code_lm, source.planted_samples(16))
    unseen = secret_examples(code_lm, source.unseen_samples())
    assert len(sixteen) == 32 and len(unseen) == 40
    assert sum(extraction(code_lm, sixteen)) / len(sixteen) >= 0.8
    assert sum(extraction(code_lm, unseen)) == 0
    assert sum(secret_ma(code_lm, unseen)) / len(unseen) < 0.3


@pytest.mark.slow
def test_codeeraser_on_code_lm_drops_forget_extraction_and_keeps_perplexity(code_lm, tmp_path):
    """Slow (about a minute of CPU): a full CodeEraser run on the shipped model with the paper's γ, λ, α."""
    from erasekit.applying import apply, revert
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods import get_method, run_method

    source = code_lm.data_source
    forget, _other = source.forget_split(2)
    path = tmp_path / "forget.jsonl"
    path.write_text("".join(json.dumps({"text": s.text}) + "\n" for s in forget))
    examples = secret_examples(code_lm, forget)
    heldout = source.heldout_texts(100)
    ppl_before = perplexity(code_lm, heldout)
    method = get_method("codeeraser")
    artifact = run_method(
        method,
        code_lm,
        ConceptSpec.from_lists(["secrets"]),
        build_config(method.config_cls, None, [f"forget_file={path}"]),
    )
    assert artifact.manifest["unlearning"]["stop_reason"] != "max_epochs"
    try:
        apply(artifact, code_lm)
        extracted = sum(extraction(code_lm, examples)) / len(examples)
        ppl_after = perplexity(code_lm, heldout)
    finally:
        revert(code_lm)
    assert extracted <= 0.0625  # at most 1 of 16
    assert ppl_after < 1.15 * ppl_before  # measured: 1.614 vs 1.518 with the defaults
