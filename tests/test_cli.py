"""Every command of erase / generate / methods / env on the tiny model, and every user mistake → exit 2.

Commands run in-process through typer's CliRunner (one import of torch for the whole file); one test
goes through the installed entry point in a subprocess to check what a user's terminal shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from erasekit.artifacts import Artifact
from erasekit.cli.app import app
from erasekit.cli.main import _register
from erasekit.config import describe_config
from erasekit.methods import _REGISTRY, get_method

_register()
runner = CliRunner()
METHOD = "uce"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def smoke(method: str = METHOD) -> list[str]:
    """`-o` flags that make ``method`` a seconds-scale run on the tiny model."""
    out = []
    for item in get_method(method).smoke_overrides:
        out += ["-o", item]
    return out


def assert_user_error(result, *needles: str) -> str:
    """Exit 2, one line on stderr, no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    message = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ")
    for needle in needles:
        assert needle.lower() in message.lower(), message
    return message


# ---- test-only methods ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagesConfig:
    images_dir: str | None = None
    """Folder of images."""
    mode: Literal["a", "b"] = "a"
    """A choice."""


class ImagesMethod:
    """Records how many files it was shown; edits one tensor by that count."""

    name: ClassVar[str] = "test-images"
    paper: ClassVar[str] = "test"
    config_cls: ClassVar[type] = ImagesConfig
    smoke_overrides: ClassVar[tuple[str, ...]] = ()

    def erase(self, backend, concepts, config, *, generator=None):
        count = len(os.listdir(config.images_dir)) if config.images_dir else 0
        name, param = next(iter(backend.parameters_for("cross_attn_kv").items()))
        artifact = Artifact(self.name, manifest={"images_seen": count})
        artifact.add_weight(name, torch.full_like(param, float(count)))
        return artifact


@pytest.fixture
def images_method(monkeypatch):
    monkeypatch.setitem(_REGISTRY, "test-images", f"{__name__}:ImagesMethod")
    return "test-images"


# ---- the happy path ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    """One UCE erasure through the CLI (shared by the generate tests)."""
    out = tmp_path_factory.mktemp("erase") / "star"
    result = invoke(
        "erase", METHOD, "--model", "tiny", "--concept", "star", "--anchor", "circle",
        "--preserve", "square", "--seed", "3", *smoke(), "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_erase_writes_artifact_and_reports_json(erased):
    out, summary = erased
    assert Path(summary["artifact"]) == out.with_name("star.safetensors")
    assert Path(summary["artifact"]).is_file() and Path(summary["manifest"]).is_file()
    assert summary["method"] == METHOD and summary["concepts"] == ["star"]
    assert summary["seconds"] > 0 and summary["artifact_bytes"] > 0 and summary["edited_parameters"] > 0
    artifact = Artifact.load(out)
    manifest = artifact.manifest
    assert manifest["method"] == METHOD and manifest["seed"] == 3
    assert manifest["concepts"]["targets"] == [{"text": "star", "anchor": "circle"}]
    assert manifest["concepts"]["preserve"] == ["square"]
    assert manifest["base_model"] == "tiny" and manifest["base_fingerprint"].startswith("sha256")
    for override in get_method(METHOD).smoke_overrides:  # the -o flags reached the config
        key, value = override.split("=", 1)
        assert str(manifest["config"][key]).lower() == value.lower()
    # Only leftover files are the two artifact files (atomic writes leave no temp files).
    assert sorted(p.name for p in out.parent.iterdir()) == ["star.json", "star.safetensors"]


def test_erase_human_summary(tmp_path, images_method):
    result = invoke("erase", images_method, "--model", "tiny", "--concept", "star", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "artifact:" in result.stdout and "a.safetensors" in result.stdout


def test_erase_with_config_file_and_override(tmp_path, images_method):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"mode": "b"}))
    result = invoke(
        "erase", images_method, "--model", "tiny", "--concept", "star", "--config", config,
        "--out", tmp_path / "x", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Artifact.load(tmp_path / "x").manifest["config"]["mode"] == "b"
    result = invoke(
        "erase", images_method, "--model", "tiny", "--concept", "star", "--config", config,
        "-o", "mode=a", "--out", tmp_path / "y",
    )  # fmt: skip
    assert Artifact.load(tmp_path / "y").manifest["config"]["mode"] == "a"  # -o wins over the file


def test_images_reach_a_method_with_images_dir(tmp_path, images_method):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(images / f"{i}.png")
    result = invoke(
        "erase", images_method, "--model", "tiny", "--concept", "star", "--images", images,
        "--out", tmp_path / "a", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    artifact = Artifact.load(tmp_path / "a")
    assert artifact.manifest["images_seen"] == 3
    assert artifact.manifest["config"]["images_dir"] == str(images)


def read_manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_generate_with_artifact_writes_pngs_and_manifest(erased, tmp_path):
    stem, summary = erased
    out = tmp_path / "gen"
    result = invoke(
        "generate", "--model", "tiny", "--artifact", summary["artifact"], "--prompt", "a star",
        "--n", 3, "--seed", 5, "--steps", 2, "--guidance", 3.0, "--batch-size", 2, "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = read_manifest(out)
    assert [r["seed"] for r in rows] == [5, 6, 7]
    assert report["images"] == [r["file"] for r in rows]
    assert (report["steps"], report["guidance"]) == (2, 3.0)
    for row in rows:
        assert row["prompt"] == "a star" and row["steps"] == 2 and row["guidance"] == 3.0
        assert row["model"] == "tiny"
        assert row["artifacts"] == [{"path": summary["artifact"], "method": METHOD}]
        image = Image.open(out / row["file"])
        assert image.size == (16, 16) and image.mode == "RGB"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_generate_is_seeded_batch_independent_and_artifact_changes_images(erased, tmp_path):
    _stem, summary = erased
    common = ["generate", "--model", "tiny", "--prompt", "a star", "--steps", 2]

    def pixels(folder, index=0):
        return np.asarray(Image.open(folder / read_manifest(folder)[index]["file"]))

    invoke(*common, "--n", 1, "--seed", 6, "--out", tmp_path / "plain")
    invoke(*common, "--n", 1, "--seed", 6, "--out", tmp_path / "plain2")
    invoke(*common, "--n", 1, "--seed", 6, "--artifact", summary["artifact"], "--out", tmp_path / "erased")
    invoke(*common, "--n", 2, "--seed", 5, "--batch-size", 2, "--out", tmp_path / "batch")
    assert np.array_equal(pixels(tmp_path / "plain"), pixels(tmp_path / "plain2"))
    # seed 6 alone == seed 6 as the second image of a batch
    assert np.array_equal(pixels(tmp_path / "plain"), pixels(tmp_path / "batch", 1))
    assert not np.array_equal(pixels(tmp_path / "plain"), pixels(tmp_path / "erased"))


def test_generate_stacks_artifacts_in_order(erased, tmp_path, images_method):
    _stem, summary = erased
    invoke("erase", images_method, "--model", "tiny", "--concept", "cat", "--out", tmp_path / "b")
    out = tmp_path / "gen"
    result = invoke(
        "generate", "--model", "tiny", "--artifact", summary["artifact"], "--artifact", tmp_path / "b",
        "--prompt", "a cat", "--steps", 1, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [a["method"] for a in read_manifest(out)[0]["artifacts"]] == [METHOD, "test-images"]


def test_methods_json_lists_registered_methods_with_fields():
    result = invoke("methods", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    names = [m["name"] for m in table["methods"]]
    assert names == sorted(_REGISTRY) and {"uce", "esd"} <= set(names)
    for row in table["methods"]:
        assert row["paper"]
        config_cls = get_method(row["name"]).config_cls
        assert [f["name"] for f in row["fields"]] == [f.name for f in dataclasses.fields(config_cls)]
        assert row["fields"] == json.loads(json.dumps(describe_config(config_cls), default=str))
        assert all(f["help"] for f in row["fields"]), f"{row['name']}: every config field needs a docstring"
    assert "cross_attn_kv" in table["targets"]
    human = invoke("methods")
    assert human.exit_code == 0 and all(name in human.stdout for name in names)


def test_env_json():
    result = invoke("env", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["versions"]["torch"] == torch.__version__
    assert report["clip_tokenizer"]["ok"] and report["clip_tokenizer"]["vocab_size"] == 49408
    assert report["device"] and report["torch_threads"] >= 1
    assert {"tiny", "shapes", "shapes-ar", "code-lm"} <= set(report["models"])  # the zoo's names
    text = invoke("env")
    assert text.exit_code == 0 and "shapes-ar" in text.stdout


def test_methods_does_not_import_diffusers():
    """`erasekit methods` through the real entry point (every command module registered) stays light."""
    code = (
        "import sys\n"
        "from erasekit.cli.main import main\n"
        "sys.argv = ['erasekit', 'methods', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "heavy = [m for m in ('diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, f'erasekit methods imported {heavy}: import them lazily inside commands'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["methods"]


# ---- user mistakes: one line, exit 2 ------------------------------------------------------------------
def erase_args(tmp_path: Path, *extra: str, method: str = METHOD) -> list[str]:
    return ["erase", method, "--model", "tiny", "--out", str(tmp_path / "a"), *extra]


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--concept", "star"], ["unknown method"]),  # with method "nope", below
        ([], ["no concept"]),
        (["--concept", ""], ["empty"]),
        (["--concept", "   "], ["empty"]),
        (["--concept", "star", "--concept", "Star "], ["twice"]),
        (["--concept", "star", "--preserve", "star"], ["twice"]),
        (
            ["--concept", "star", "--concept", "cat", "--anchor", "a", "--anchor", "b", "--anchor", "c"],
            ["anchor"],
        ),
        (["--concept", "star", "--kind", "music"], ["kind"]),
        (["--concept", "star", "-o", "no_such_field=1"], ["no_such_field"]),
        (["--concept", "star", "-o", "novalue"], ["key=value"]),
        (["--concept", "star", "--config", "/nonexistent/c.json"], ["not found"]),
        (["--concept", "star", "--images", "."], ["images"]),
    ],
)
def test_erase_user_mistakes(tmp_path, extra, needles):
    method = "nope" if "unknown method" in needles else METHOD
    assert_user_error(invoke(*erase_args(tmp_path, *extra, method=method)), *needles)
    assert not (tmp_path / "a.safetensors").exists()


def test_erase_bad_override_type_and_choice(tmp_path, images_method):
    numeric = next(f for f in describe_config(get_method(METHOD).config_cls) if f["type"] in ("int", "float"))
    assert_user_error(
        invoke(*erase_args(tmp_path, "--concept", "star", "-o", f"{numeric['name']}=abc")), numeric["name"]
    )
    assert_user_error(
        invoke(*erase_args(tmp_path, "--concept", "star", "-o", "mode=c", method=images_method)), "one of"
    )


def test_erase_bad_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_user_error(invoke(*erase_args(tmp_path, "--concept", "star", "--config", bad)), "json")
    bad.write_text("[1, 2]")
    assert_user_error(invoke(*erase_args(tmp_path, "--concept", "star", "--config", bad)), "object")


def test_erase_missing_images_folder(tmp_path, images_method):
    args = erase_args(tmp_path, "--concept", "star", "--images", tmp_path / "none", method=images_method)
    assert_user_error(invoke(*args), "not found")


def test_erase_out_is_a_folder(tmp_path):
    result = invoke("erase", METHOD, "--model", "tiny", "--concept", "star", "--out", tmp_path)
    assert_user_error(result, "folder")


@pytest.mark.parametrize("model", ["/nonexistent/model", "no-such-model", "missing/hub-model"])
def test_missing_model(tmp_path, model):
    result = invoke("erase", METHOD, "--model", model, "--concept", "star", "--out", tmp_path / "a")
    assert_user_error(result)
    assert_user_error(invoke("generate", "--model", model, "--prompt", "x", "--out", tmp_path / "g"))


def test_model_folder_without_model_index(tmp_path):
    result = invoke("erase", METHOD, "--model", tmp_path, "--concept", "star", "--out", tmp_path / "a")
    assert_user_error(result, "model_index.json")


@pytest.mark.parametrize(
    "index",
    ["{}", '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'],
)
def test_incomplete_model_folder(tmp_path, index):
    (tmp_path / "model_index.json").write_text(index)
    result = invoke("generate", "--model", tmp_path, "--prompt", "x", "--out", tmp_path / "g")
    assert_user_error(result, "complete stable diffusion pipeline folder")


@pytest.mark.parametrize("device", ["cuda:7", "xyz", "meta"])
def test_unavailable_device(tmp_path, device):
    result = invoke(
        "generate", "--model", "tiny", "--device", device, "--prompt", "x", "--out", tmp_path / "g"
    )
    assert_user_error(result, device)
    result = invoke(
        "erase", METHOD, "--model", "tiny", "--device", device, "--concept", "x", "--out", tmp_path / "a"
    )
    assert_user_error(result, device)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickled_checkpoint_needs_allow_pickle(tmp_path, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"\x80\x04not really a pickle")
    result = invoke("erase", METHOD, "--model", checkpoint, "--concept", "star", "--out", tmp_path / "a")
    assert_user_error(result, "--allow-pickle")
    result = invoke("generate", "--model", checkpoint, "--prompt", "x", "--out", tmp_path / "g")
    assert_user_error(result, "--allow-pickle")


def test_unsupported_and_corrupt_model_files(tmp_path):
    text = tmp_path / "model.txt"
    text.write_text("hi")
    assert_user_error(
        invoke("generate", "--model", text, "--prompt", "x", "--out", tmp_path / "g"), "unsupported"
    )
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"garbage")
    assert_user_error(invoke("generate", "--model", corrupt, "--prompt", "x", "--out", tmp_path / "g"))


def _tiny_artifact(tmp_path: Path, fingerprint: str | None = None) -> Path:
    from erasekit.zoo import load_model as load_backend

    backend = load_backend("tiny")
    name, param = next(iter(backend.parameters_for("cross_attn_kv").items()))
    artifact = Artifact("test", manifest={"base_fingerprint": fingerprint or backend.fingerprint()})
    artifact.add_weight(name, torch.ones_like(param))
    artifact.save(tmp_path / "art")
    return tmp_path / "art"


def test_generate_missing_and_corrupt_artifacts(tmp_path):
    gen = ["generate", "--model", "tiny", "--prompt", "x", "--steps", 1, "--out", tmp_path / "g"]
    assert_user_error(invoke(*gen, "--artifact", tmp_path / "missing"), "not found")
    stem = _tiny_artifact(tmp_path)
    tensors = stem.with_name("art.safetensors")
    good = tensors.read_bytes()
    tensors.write_bytes(good[: len(good) // 2])  # truncated
    assert_user_error(invoke(*gen, "--artifact", stem), "corrupt")
    tensors.write_bytes(b"\x00" * 64)
    assert_user_error(invoke(*gen, "--artifact", stem), "corrupt")
    tensors.write_bytes(good)
    manifest = stem.with_name("art.json")
    manifest.write_text("{")
    assert_user_error(invoke(*gen, "--artifact", stem), "corrupt")
    assert not (tmp_path / "g").exists()


def test_generate_fingerprint_mismatch_needs_force(tmp_path):
    stem = _tiny_artifact(tmp_path, fingerprint="sha256-sampled:" + "0" * 32)
    gen = ["generate", "--model", "tiny", "--prompt", "x", "--steps", 1, "--artifact", stem]
    assert_user_error(invoke(*gen, "--out", tmp_path / "g"), "--force")
    result = invoke(*gen, "--force", "--out", tmp_path / "forced")
    assert result.exit_code == 0, result.output
    assert len(read_manifest(tmp_path / "forced")) == 1


@pytest.mark.parametrize("flag, value", [("--n", 0), ("--steps", 0), ("--seed", -1), ("--batch-size", 0)])
def test_generate_bad_numbers(tmp_path, flag, value):
    result = invoke("generate", "--model", "tiny", "--prompt", "x", flag, value, "--out", tmp_path / "g")
    assert_user_error(result, flag)


def test_entry_point_prints_one_line_without_traceback(tmp_path):
    """What a user's terminal shows, through the real console script."""
    result = subprocess.run(
        [sys.executable, "-m", "erasekit", "erase", "nope", "--model", "tiny", "--concept", "x", "--out", str(tmp_path / "a")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Traceback" not in result.stderr and "unknown method" in result.stderr.lower()


def test_erase_on_a_shapesworld_model_uses_its_preset_unless_one_is_named(tmp_path):
    """The model recommends `shapesworld`; the manifest records the preset and that it came from the model."""
    import json

    out = tmp_path / "star"
    result = invoke("erase", "uce", "--model", "shapes", "--concept", "star", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["config"]["preset"] == "shapesworld" and manifest["preset_from"] == "model"
    named = tmp_path / "star-paper"
    result = invoke(
        "erase", "uce", "--model", "shapes", "--concept", "star", "-o", "preset=paper", "--out", named
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(named.with_suffix(".json").read_text())
    assert manifest["config"]["preset"] == "paper" and "preset_from" not in manifest


def test_erase_summary_says_when_a_self_checking_method_did_not_verify():
    from erasekit.cli.erase import _human

    summary = {
        "concepts": ["circle"],
        "method": "fewshot",
        "seconds": 1.0,
        "peak_memory_bytes": 2**20,
        "artifact": "runs/c.safetensors",
        "artifact_bytes": 2**20,
        "edited_parameters": 3,
        "adapters": 0,
        "hooks": 0,
        "manifest": "runs/c.json",
    }
    assert "not verified" not in _human(summary)
    assert "not verified" not in _human({**summary, "verified": True})
    assert "not verified" in _human({**summary, "verified": False})
