"""The shipped ShapesWorld model folder and the training recipe (a two-step smoke run)."""

from __future__ import annotations

import json

import pytest
import torch

from erasekit.world.model import MANIFEST_NAME, SHIPPED_MODEL_DIR, micro_config, tiny_config


def _folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.skipif(
    not (SHIPPED_MODEL_DIR / "model_index.json").is_file(), reason="shipped model not built yet"
)
def test_shipped_folder_loads_offline_and_fits_the_size_budget():
    from diffusers import StableDiffusionPipeline

    assert _folder_bytes(SHIPPED_MODEL_DIR) <= 40 * 1024 * 1024
    # The plain call users make: every component must come up in float32 (weights are stored in fp16).
    pipe = StableDiffusionPipeline.from_pretrained(
        SHIPPED_MODEL_DIR, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    assert {m.dtype for m in (pipe.unet, pipe.text_encoder, pipe.vae)} == {torch.float32}
    assert len(pipe.tokenizer) == 49408
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    arch = tiny_config()
    assert list(pipe.unet.config.block_out_channels) == arch["unet"]["block_out_channels"]
    out = pipe(
        ["a red star on a striped background"],
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    manifest = json.loads((SHIPPED_MODEL_DIR / MANIFEST_NAME).read_text())
    for key in ("command", "seed", "wall_seconds", "machine", "images_seen", "final_loss_ema", "recipe"):
        assert key in manifest, key


def _unet_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_train_smoke_two_steps_deterministic_and_resumable_from_a_vae(tmp_path):
    """The recipe end to end on the micro architecture: render, VAE, encode, UNet, export, reload.

    The CLI run with the same flags must give bit-identical weights (seeded), and a run reusing the
    first run's VAE must reuse its encoded dataset.
    """
    from erasekit.world.model import load_shipped_pipeline
    from erasekit.world.train import TrainConfig, main, train

    flags = dict(
        arch="micro",
        jitters_per_combo=1,
        no_shape_per_style=1,
        vae_steps=2,
        vae_batch=2,
        steps=2,
        batch=2,
        sample_steps=0,
        checkpoint_minutes=0,
    )
    folder = train(TrainConfig(out_dir=str(tmp_path / "a"), **flags))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["steps"] == 2 and manifest["images_seen"] == 4 and manifest["seed"] == 0
    pipe = load_shipped_pipeline(folder)
    assert list(pipe.unet.config.block_out_channels) == micro_config()["unet"]["block_out_channels"]
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert main([f"--out-dir={tmp_path / 'b'}", *argv]) == 0
    a, b = _unet_weights(folder), _unet_weights(tmp_path / "b" / "pipeline")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert main([f"--out-dir={tmp_path / 'c'}", f"--vae-from={tmp_path / 'a'}", *argv]) == 0
    assert "reused" in (tmp_path / "c" / "train.log").read_text()
    manifest = json.loads((tmp_path / "c" / "pipeline" / MANIFEST_NAME).read_text())
    assert manifest["vae_stage"]["trained_in"] == str(tmp_path / "a")
