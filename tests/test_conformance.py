"""The conformance suite every registered method passes (parametrised over the registry).

A method joins automatically by its registry line. It runs on the tiny pipeline with its
``smoke_overrides`` and a tiny concept spec: by default erase "star" with no anchor and no preserve
set; a method that needs other inputs declares ``smoke_concepts`` — keyword arguments for
:meth:`ConceptSpec.from_lists` (e.g. ``{"concepts": ["star"], "anchors": ["square"]}``).

Each method runs once per module (shared by the tests below) plus once more for the determinism
check; tests that apply the artifact revert it in ``finally`` so the shared backend stays clean.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from erasekit.applying import apply, revert
from erasekit.artifacts import Artifact
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config, config_to_dict, describe_config
from erasekit.errors import ErasekitError
from erasekit.methods import available_methods, get_method, run_method
from erasekit.zoo import load_model as load_backend

DEFAULT_SMOKE_CONCEPTS: dict[str, Any] = {"concepts": ["star"]}
SEED = 1234


@dataclass
class Run:
    method: Any
    backend: Any
    concepts: ConceptSpec
    config: Any
    artifact: Artifact
    before: dict[str, torch.Tensor]


def _snapshot(backend) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.named_parameters().items()}


def _smoke_spec(method) -> ConceptSpec:
    return ConceptSpec.from_lists(**getattr(method, "smoke_concepts", DEFAULT_SMOKE_CONCEPTS))


def _output_for(backend, prompts: list[str]) -> torch.Tensor:
    """The denoiser's predictions for ``prompts`` at a fixed latent and timestep (text encoding included)."""
    with torch.no_grad():
        if backend.kind == "ar":  # AR models: next-image-token logits over a fixed token history
            codes = torch.arange(backend.num_image_tokens).repeat(len(prompts), 1) % backend.codebook_size
            return backend.next_token_logits(backend.prompt_rows(prompts), codes)
        if backend.kind == "causal_lm":  # code LMs: next-token logits of the prompts as text
            batch = backend.encode(prompts)
            return backend.logits(batch.input_ids, batch.attention_mask)
        latents = backend.initial_latents([7] * len(prompts))
        return backend.predict_noise(latents, 500, backend.encode_prompts(prompts))


@pytest.fixture(scope="module", params=available_methods())
def run(request) -> Run:
    method = get_method(request.param)
    if getattr(method, "backend_kind", "sd") == "ar":  # EAR / ESD-AR: the tiny AR model built in code
        from erasekit.backends.ar import build_tiny_ar_backend

        backend = build_tiny_ar_backend()
    elif getattr(method, "backend_kind", "sd") == "causal_lm":  # code-LM unlearning: tiny random Llama
        from erasekit.codeworld.tiny import build_tiny_code_lm_backend

        backend = build_tiny_code_lm_backend()
    else:
        backend = load_backend("tiny")  # what the tiny_backend fixture builds, shared by this module's tests
    concepts = _smoke_spec(method)
    config = build_config(method.config_cls, None, list(method.smoke_overrides))
    before = _snapshot(backend)
    artifact = run_method(method, backend, concepts, config, seed=SEED)
    return Run(method, backend, concepts, config, artifact, before)


def test_method_declares_the_protocol(run):
    method = run.method
    assert method.name in available_methods() and get_method(method.name).name == method.name
    assert method.paper.strip()
    # every method takes the run's seeded generator (run_method passes it; --seed reaches every method)
    assert "generator" in inspect.signature(method.erase).parameters
    assert dataclasses.is_dataclass(method.config_cls)
    assert method.config_cls.__dataclass_params__.frozen
    assert all(field["help"] for field in describe_config(method.config_cls)), (
        "every config field needs a docstring"
    )
    with pytest.raises(ErasekitError):
        build_config(method.config_cls, None, ["no_such_field=1"])


def test_backend_unchanged_after_erase(run):
    after = run.backend.named_parameters()
    assert set(after) == set(run.before)
    assert all(torch.equal(run.before[k], after[k]) for k in after)
    assert not any(p.requires_grad for p in after.values())
    for name, module in run.backend.named_modules().items():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"{name} left with a hook"


def test_artifact_save_load_round_trip(run, tmp_path):
    run.artifact.save(tmp_path / "erased")
    loaded = Artifact.load(tmp_path / "erased.json")
    assert loaded.method == run.method.name
    assert set(loaded.tensors) == set(run.artifact.tensors) and loaded.tensors
    assert all(torch.equal(loaded.tensors[k], run.artifact.tensors[k]) for k in loaded.tensors)
    manifest = loaded.manifest
    for key in ("method", "config", "concepts", "base_fingerprint", "versions", "seed", "cost"):
        assert key in manifest, key
    assert manifest["seed"] == SEED
    assert manifest["base_fingerprint"] == run.backend.fingerprint()
    assert ConceptSpec.from_dict(manifest["concepts"]) == run.concepts
    assert {"seconds", "peak_memory_bytes", "artifact_bytes"} <= set(manifest["cost"])


def test_manifest_config_round_trips_through_build_config(run):
    recorded = run.artifact.manifest["config"]
    rebuilt = build_config(run.method.config_cls, None, None, **recorded)
    assert rebuilt == run.config
    assert config_to_dict(rebuilt) == recorded


def test_apply_changes_only_named_parameters_and_the_output_then_reverts_exactly(run):
    backend, artifact = run.backend, run.artifact
    # the erased concept in every prompt template (gated methods may act on some contexts only)
    prompts = run.concepts.prompts(run.concepts.targets[0].text)
    output_before = _output_for(backend, prompts)
    try:
        apply(artifact, backend)
        applied = _snapshot(backend)
        output_after = _output_for(backend, prompts)
    finally:
        revert(backend)
    changed = {k for k in run.before if not torch.equal(run.before[k], applied[k])}
    assert changed <= set(artifact.manifest.get("weights", {})), "a parameter outside the artifact changed"
    assert not torch.allclose(output_before, output_after, rtol=0, atol=1e-7), "erasure changed nothing"
    reverted = backend.named_parameters()
    assert all(torch.equal(run.before[k], reverted[k]) for k in run.before)
    assert torch.equal(_output_for(backend, prompts), output_before), "hooks or adapters survived revert"


def test_same_seed_gives_identical_tensors(run):
    again = run_method(run.method, run.backend, run.concepts, run.config, seed=SEED)
    assert set(again.tensors) == set(run.artifact.tensors)
    assert all(torch.equal(again.tensors[k], run.artifact.tensors[k]) for k in again.tensors)
