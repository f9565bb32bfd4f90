"""Shared fixtures: offline, seeded, thread-limited; tiny SD pipelines built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two shared cores: oversubscribed torch threads can be 40x slower.
torch.set_num_threads(int(os.environ.get("ERASEKIT_TEST_THREADS", "1")))


@pytest.fixture
def tiny_backend():
    """A fresh tiny SD backend (random seeded weights, real CLIP tokenizer); cheap to build."""
    from erasekit.zoo import load_model as load_backend

    return load_backend("tiny")


@pytest.fixture
def tiny_pipeline():
    """A fresh stock diffusers StableDiffusionPipeline with the tiny architecture."""
    from erasekit.backends.tiny import build_tiny_pipeline

    return build_tiny_pipeline()
