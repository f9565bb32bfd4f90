"""Artifact format (round trip, corruption, atomic writes) and apply/revert/stack semantics on the tiny pipeline."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import erasekit.artifacts as artifacts_module
from erasekit.applying import applied, applied_artifacts, apply, revert
from erasekit.artifacts import Artifact, InferenceHook, artifact_paths, register_hook_kind
from erasekit.backends.base import fingerprint_components, named_parameters_of
from erasekit.errors import ErasekitError


def _snapshot(backend):
    return {k: v.detach().clone() for k, v in backend.named_parameters().items()}


def _delta_artifact(backend, target="cross_attn_kv", scale=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    artifact = Artifact("test", manifest={"base_fingerprint": backend.fingerprint()})
    for name, param in backend.parameters_for(target).items():
        artifact.add_weight(name, torch.randn(param.shape, generator=gen) * scale)
    return artifact


def test_apply_revert_bit_exact_and_stack_any_order(tiny_backend, tmp_path):
    before = _snapshot(tiny_backend)
    a = _delta_artifact(tiny_backend, seed=1)
    b = _delta_artifact(tiny_backend, target="text_mlp", seed=2)
    a.save(tmp_path / "a")
    a = Artifact.load(tmp_path / "a.safetensors")
    apply(a, tiny_backend)
    apply(b, tiny_backend)
    after = _snapshot(tiny_backend)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(tiny_backend.parameters_for("cross_attn_kv")) | set(
        tiny_backend.parameters_for("text_mlp")
    )
    revert(tiny_backend, a)  # out of order: b stays applied
    assert [x.method for x in applied_artifacts(tiny_backend)] == ["test"]
    for name in tiny_backend.parameters_for("cross_attn_kv"):
        assert torch.equal(tiny_backend.named_parameters()[name], before[name])
    revert(tiny_backend)
    final = _snapshot(tiny_backend)
    assert all(torch.equal(before[k], final[k]) for k in before)


def test_applied_context_manager_reverts_on_exit_and_on_error_and_keeps_others(tiny_backend):
    before = _snapshot(tiny_backend)
    outer = _delta_artifact(tiny_backend, target="text_mlp", seed=3)
    a, b = _delta_artifact(tiny_backend, seed=4), _delta_artifact(tiny_backend, seed=5)
    apply(outer, tiny_backend)
    try:
        with_outer = _snapshot(tiny_backend)
        with applied([a, b], tiny_backend) as model:
            assert model is tiny_backend
            assert [x is y for x, y in zip(applied_artifacts(tiny_backend), [outer, a, b])] == [True] * 3
            inside = _snapshot(tiny_backend)
        assert any(not torch.equal(inside[k], with_outer[k]) for k in inside)
        assert all(torch.equal(with_outer[k], v) for k, v in _snapshot(tiny_backend).items())
        with pytest.raises(RuntimeError, match="boom"), applied(a, tiny_backend):
            raise RuntimeError("boom")
        assert applied_artifacts(tiny_backend) == [outer]
        assert all(torch.equal(with_outer[k], v) for k, v in _snapshot(tiny_backend).items())
    finally:
        revert(tiny_backend)
    assert all(torch.equal(before[k], v) for k, v in _snapshot(tiny_backend).items())


# ---- file format -------------------------------------------------------------------------------------------


def _small_artifact() -> Artifact:
    artifact = Artifact("test", manifest={"base_fingerprint": "sha256-sampled:x", "seed": 1})
    artifact.add_weight("unet.a.weight", torch.arange(6.0).reshape(2, 3))
    artifact.add_weight("unet.b.weight", torch.ones(3), mode="replace")
    artifact.add_adapter("unet.c", torch.ones(2, 4), torch.ones(5, 2), scale=0.5)
    return artifact


def test_round_trip_keeps_tensors_and_manifest(tmp_path):
    artifact = _small_artifact()
    tensor_path = artifact.save(tmp_path / "x")
    assert (tensor_path, tensor_path.with_suffix(".json")) == artifact_paths(tmp_path / "x")
    for spelling in ("x", "x.safetensors", "x.json"):
        loaded = Artifact.load(tmp_path / spelling)
        assert loaded.method == "test"
        assert loaded.tensors.keys() == artifact.tensors.keys()
        assert all(torch.equal(loaded.tensors[k], artifact.tensors[k]) for k in artifact.tensors)
        assert loaded.manifest["weights"] == {"unet.a.weight": "delta", "unet.b.weight": "replace"}
        assert loaded.manifest["adapters"] == {"unet.c": {"scale": 0.5, "rank": 2}}
        assert loaded.manifest["format_version"] == artifacts_module.FORMAT_VERSION


def _corrupt(path, how):
    tensors, manifest = artifact_paths(path)
    if how == "truncated tensors":
        data = tensors.read_bytes()
        tensors.write_bytes(data[: len(data) // 2])
    elif how == "garbage tensors":
        tensors.write_bytes(b"\x00" * 100)
    elif how == "empty tensors":
        tensors.write_bytes(b"")
    elif how == "invalid json":
        manifest.write_text("{")
    elif how == "not an object":
        manifest.write_text("[1]")
    else:
        data = json.loads(manifest.read_text())
        if how == "no method":
            del data["method"]
        elif how == "weights not a dict":
            data["weights"] = ["unet.a.weight"]
        elif how == "unknown weight mode":
            data["weights"]["unet.a.weight"] = "multiply"
        elif how == "hook without tensors":
            data["hooks"] = [{"kind": "k", "target": "unet", "config": {}}]
        elif how == "hooks not a list":
            data["hooks"] = "abc"
        elif how == "format version not a number":
            data["format_version"] = "2"
        elif how == "newer format":
            data["format_version"] = artifacts_module.FORMAT_VERSION + 1
        elif how == "extra tensor in manifest":
            data["weights"]["unet.z.weight"] = "delta"
        elif how == "tensor missing from manifest":
            del data["weights"]["unet.a.weight"]
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "how",
    [
        "truncated tensors",
        "garbage tensors",
        "empty tensors",
        "invalid json",
        "not an object",
        "no method",
        "weights not a dict",
        "unknown weight mode",
        "hook without tensors",
        "hooks not a list",
        "format version not a number",
        "newer format",
        "extra tensor in manifest",
        "tensor missing from manifest",
    ],
)
def test_corrupt_artifact_raises_one_line_error(tmp_path, how):
    _small_artifact().save(tmp_path / "x")
    _corrupt(tmp_path / "x", how)
    with pytest.raises(ErasekitError) as info:
        Artifact.load(tmp_path / "x")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("missing", ["x.safetensors", "x.json"])
def test_missing_half_of_an_artifact(tmp_path, missing):
    _small_artifact().save(tmp_path / "x")
    (tmp_path / missing).unlink()
    with pytest.raises(ErasekitError, match="not found"):
        Artifact.load(tmp_path / "x")


def test_atomic_write_leaves_no_temp_files_and_keeps_old_result_on_failure(tmp_path, monkeypatch):
    _small_artifact().save(tmp_path / "x")
    _small_artifact().save(tmp_path / "x")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in tmp_path.iterdir())  # not mkstemp's 0600
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts_module, "save_file", crash)
    changed = _small_artifact()
    changed.manifest["seed"] = 2
    with pytest.raises(OSError):
        changed.save(tmp_path / "x")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old result intact, no temp file


# ---- apply / revert ---------------------------------------------------------------------------------------
def test_fingerprint_mismatch_raises_unless_forced(tiny_backend):
    before = _snapshot(tiny_backend)
    artifact = _delta_artifact(tiny_backend)
    artifact.manifest["base_fingerprint"] = "sha256-sampled:" + "0" * 32
    with pytest.raises(ErasekitError, match="force"):
        apply(artifact, tiny_backend)
    assert all(torch.equal(v, tiny_backend.named_parameters()[k]) for k, v in before.items())
    apply(artifact, tiny_backend, force=True)
    assert applied_artifacts(tiny_backend) == [artifact]
    revert(tiny_backend)
    assert all(torch.equal(v, tiny_backend.named_parameters()[k]) for k, v in before.items())


def test_incompatible_artifact_raises(tiny_backend):
    name = next(iter(tiny_backend.parameters_for("cross_attn_kv")))
    wrong_shape = Artifact("test")
    wrong_shape.add_weight(name, torch.zeros(3, 3))
    missing = Artifact("test")
    missing.add_weight("unet.no.such.weight", torch.zeros(1))
    for artifact, needle in ((wrong_shape, "shape"), (missing, "lacks")):
        with pytest.raises(ErasekitError, match=needle):
            apply(artifact, tiny_backend)
    assert applied_artifacts(tiny_backend) == []


def test_stacking_two_deltas_on_one_tensor_adds_both(tiny_backend):
    name, param = next(iter(tiny_backend.parameters_for("cross_attn_kv").items()))
    base = param.detach().clone()
    d1, d2 = torch.randn(param.shape), torch.randn(param.shape)
    a, b = Artifact("a"), Artifact("b")
    a.add_weight(name, d1)
    b.add_weight(name, d2)
    apply(a, tiny_backend)
    apply(b, tiny_backend)
    assert torch.equal(param, base + d1 + d2)
    revert(tiny_backend, a)
    assert torch.equal(param, base + d2)  # bit-exact: recomputed from the original, not subtracted
    revert(tiny_backend, b)
    assert torch.equal(param, base)
    with pytest.raises(ErasekitError, match="not applied"):
        revert(tiny_backend, a)


def test_replace_then_delta_order_matters(tiny_backend):
    name, param = next(iter(tiny_backend.parameters_for("cross_attn_kv").items()))
    base = param.detach().clone()
    replace, delta = Artifact("r"), Artifact("d")
    replace.add_weight(name, torch.zeros(param.shape), mode="replace")
    delta.add_weight(name, torch.ones(param.shape))
    apply(replace, tiny_backend)
    apply(delta, tiny_backend)
    assert torch.equal(param, torch.ones(param.shape))
    revert(tiny_backend)
    assert torch.equal(param, base)


def _linear_and_conv(backend):
    modules = backend.named_modules()
    linear = next(iter(backend.modules_for("cross_attn_kv")))
    conv = "unet.conv_in"
    assert isinstance(modules[linear], nn.Linear) and isinstance(modules[conv], nn.Conv2d)
    return modules, linear, conv


def test_adapters_add_low_rank_output_and_revert_exactly(tiny_backend):
    modules, linear_name, conv_name = _linear_and_conv(tiny_backend)
    linear, conv = modules[linear_name], modules[conv_name]
    gen = torch.Generator().manual_seed(0)
    down = torch.randn(2, linear.in_features, generator=gen)
    up = torch.randn(linear.out_features, 2, generator=gen)
    conv_down = torch.randn(3, conv.in_channels, *conv.kernel_size, generator=gen)
    conv_up = torch.randn(conv.out_channels, 3, 1, 1, generator=gen)
    artifact = Artifact("adapter")
    artifact.add_adapter(linear_name, down, up, scale=0.5)
    artifact.add_adapter(conv_name, conv_down, conv_up, scale=2.0)
    x = torch.randn(2, 5, linear.in_features, generator=gen)
    image = torch.randn(1, conv.in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        plain, plain_conv = linear(x), conv(image)
        apply(artifact, tiny_backend)
        adapted, adapted_conv = linear(x), conv(image)
        revert(tiny_backend)
        reverted, reverted_conv = linear(x), conv(image)
    torch.testing.assert_close(adapted, plain + 0.5 * (x @ down.T @ up.T))
    low_rank = nn.functional.conv2d(nn.functional.conv2d(image, conv_down, padding=conv.padding), conv_up)
    torch.testing.assert_close(adapted_conv, plain_conv + 2.0 * low_rank)
    assert torch.equal(reverted, plain) and torch.equal(reverted_conv, plain_conv)
    assert not linear._forward_hooks and not conv._forward_hooks


@register_hook_kind("test-affine")
class AffineHook(InferenceHook):
    """Test-only hook: output · factor + bias; as a gate, exposes gamma from its config."""

    def attach(self):
        self.gamma = torch.tensor(self.config["gamma"]) if "gamma" in self.config else 1.0
        factor, bias = self.config.get("factor", 1.0), self.tensors["bias"]

        def hook(module, args, output):
            return output * factor + bias

        return [self.module.register_forward_hook(hook)]


def test_hooks_apply_and_revert_exactly_and_gate_adapters(tiny_backend, tmp_path):
    modules, linear_name, _conv = _linear_and_conv(tiny_backend)
    linear = modules[linear_name]
    x = torch.randn(2, 3, linear.in_features)
    bias = torch.randn(linear.out_features)
    artifact = Artifact("hooked")
    artifact.add_hook("test-affine", linear_name, {"bias": bias}, {"factor": 3.0})
    artifact.save(tmp_path / "h")
    artifact = Artifact.load(tmp_path / "h")
    with torch.no_grad():
        plain = linear(x)
        apply(artifact, tiny_backend)
        hooked = linear(x)
        revert(tiny_backend)
        reverted = linear(x)
    torch.testing.assert_close(hooked, plain * 3.0 + bias)
    assert torch.equal(reverted, plain) and not linear._forward_hooks

    # A gate hook's gamma scales the artifact's adapters, one value per batch row.
    gated = Artifact("gated")
    other = next(n for n in tiny_backend.modules_for("cross_attn_kv") if n != linear_name)
    gated.add_hook("test-affine", other, {"bias": torch.zeros(1)}, {"gamma": [0.0, 1.0]}, gate=True)
    down, up = torch.randn(2, linear.in_features), torch.randn(linear.out_features, 2)
    gated.add_adapter(linear_name, down, up)
    with torch.no_grad():
        apply(gated, tiny_backend)
        out = linear(x)
        revert(tiny_backend)
    torch.testing.assert_close(out[0], plain[0])  # gamma 0: adapter off
    torch.testing.assert_close(out[1], plain[1] + x[1] @ down.T @ up.T)  # gamma 1: adapter on


def test_unknown_hook_kind_in_file_raises(tiny_backend, tmp_path):
    modules, linear_name, _conv = _linear_and_conv(tiny_backend)
    artifact = Artifact("hooked")
    artifact.add_hook("test-affine", linear_name, {"bias": torch.zeros(1)})
    artifact.save(tmp_path / "h")
    manifest = tmp_path / "h.json"
    manifest.write_text(manifest.read_text().replace("test-affine", "from-the-future"))
    with pytest.raises(ErasekitError, match="upgrade"):
        apply(Artifact.load(tmp_path / "h"), tiny_backend)


def test_stock_diffusers_pipeline_gets_the_same_edits(tiny_backend, tiny_pipeline):
    """An artifact made on the backend applies to a plain diffusers pipeline of the same weights."""
    artifact = _delta_artifact(tiny_backend, target="cross_attn_kv+text_mlp")
    assert artifact.manifest["base_fingerprint"] == fingerprint_components(
        {"unet": tiny_pipeline.unet, "text_encoder": tiny_pipeline.text_encoder}
    )

    def pipeline_params():
        return named_parameters_of({"unet": tiny_pipeline.unet, "text_encoder": tiny_pipeline.text_encoder})

    def image():
        generator = torch.Generator().manual_seed(0)
        out = tiny_pipeline("a star", num_inference_steps=2, generator=generator, output_type="np")
        return torch.from_numpy(out.images)

    before = {k: v.detach().clone() for k, v in pipeline_params().items()}
    plain = image()
    apply(artifact, tiny_backend)
    apply(artifact, tiny_pipeline)
    backend_params = tiny_backend.named_parameters()
    assert all(torch.equal(p, backend_params[n]) for n, p in pipeline_params().items())
    assert not torch.equal(image(), plain)
    revert(tiny_pipeline)
    assert all(torch.equal(p, before[n]) for n, p in pipeline_params().items())
    assert torch.equal(image(), plain)
