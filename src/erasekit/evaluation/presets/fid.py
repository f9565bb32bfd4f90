"""``fid`` / ``kid`` preset: distance between generated images and a folder of reference images.

FID (Heusel et al. 2017, eq. 6) between Gaussian fits of Inception-v3 pool features
(:func:`erasekit.evaluation.metrics.frechet_distance`), and KID (Bińkowski et al. 2018): the unbiased
MMD² with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over seeded random subsets.

Features come from (in this order) an injected extractor (tests use a tiny one), or Inception weights
at a local path through torchmetrics (``pip install torchmetrics[image]``; e.g. the
``pt_inception-2015-12-05`` file torch-fidelity uses). Nothing is downloaded: without either, the
preset refuses with one line saying what to pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.metrics import frechet_distance
from erasekit.evaluation.presets.common import (
    file_sha256,
    generate,
    read_image_folder,
    read_prompt_csv,
    record,
)

NAME, VERSION = "fid", "1"


@dataclass(frozen=True)
class FidSettings:
    """Pinned settings of preset ``fid`` v1."""

    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Guidance scale."""
    kid_subsets: int = 100
    """Random subsets KID is averaged over."""
    kid_subset_size: int = 1000
    """Images per KID subset (capped at the smaller set's size)."""
    kid_seed: int = 0
    """Seeds the KID subsets."""
    reference_size: int | None = None
    """Resize reference images to this side (None: keep; they must then share one size)."""


class FeatureExtractor:
    """Images [N, 3, H, W] in [0, 1] -> features [N, D], with a name and a version for the pins."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str, version: str):
        self.fn, self.name, self.version = fn, name, version

    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [self.fn(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
            )


def inception_extractor(weights: str | os.PathLike) -> FeatureExtractor:
    """torchmetrics' FID Inception-v3 (2048-d pool features) from a local weights file."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ErasekitError(
            f"Inception weights {path} not found; pass the local pt_inception-2015-12-05 file."
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise ErasekitError(
            "FID with Inception weights needs torchmetrics: pip install 'torchmetrics[image]' (or pass a feature extractor)."
        ) from None
    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    )
    net.eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        return net((images.clamp(0, 1) * 255).round().to(torch.uint8))

    return FeatureExtractor(features, "torchmetrics-inception-v3-compat", f"sha256:{file_sha256(path)}")


def kid(
    features1: torch.Tensor, features2: torch.Tensor, *, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """KID: mean and std over subsets of the unbiased MMD² with k(x, y) = (xᵀy / d + 1)³."""
    x, y = features1.double(), features2.double()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ErasekitError("KID needs at least 2 images in each set.")
    generator = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=generator)[:m]]
        b = y[torch.randperm(len(y), generator=generator)[:m]]
        k_aa, k_bb, k_ab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
        off = (k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
        values.append(float(off - 2 * k_ab.mean()))
    values_t = torch.tensor(values)
    return float(values_t.mean()), float(values_t.std()) if subsets > 1 else 0.0


def run_fid(
    backend: Any,
    prompts_csv: str | os.PathLike,
    reference_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    features: FeatureExtractor | None = None,
    inception_weights: str | os.PathLike | None = None,
    settings: FidSettings = FidSettings(),
    limit: int | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run preset ``fid``: generate each CSV row with its seed; FID and KID against the reference folder."""
    started = time.perf_counter()
    if features is None:
        if inception_weights is None:
            raise ErasekitError(
                "FID/KID need Inception weights from a local path (nothing is downloaded): pass inception_weights (--inception PATH)."
            )
        features = inception_extractor(inception_weights)
    reference, reference_pins = read_image_folder(reference_folder, size=settings.reference_size)
    rows, prompt_pins = read_prompt_csv(prompts_csv, limit=limit)
    if len(rows) < 2:
        raise ErasekitError("FID/KID need at least 2 generated images; use more prompt rows.")
    images, _, _ = generate(
        backend, rows, out_dir, steps=settings.steps, guidance=settings.guidance, batch_size=batch_size
    )
    generated_features, reference_features = features(images), features(reference)
    kid_mean, kid_std = kid(
        generated_features,
        reference_features,
        subsets=settings.kid_subsets,
        subset_size=settings.kid_subset_size,
        seed=settings.kid_seed,
    )
    metrics = {
        "fid": frechet_distance(generated_features, reference_features),
        "kid": kid_mean,
        "kid_std": kid_std,
        "generated_images": len(images),
        "reference_images": len(reference),
    }
    pins = {
        "prompts": prompt_pins,
        "reference": reference_pins,
        **asdict(settings),
        "features": {"name": features.name, "version": features.version},
    }
    return record(NAME, VERSION, backend, pins=pins, metrics=metrics, started=started, out_dir=out_dir)
