"""``clip-score`` preset: prompt–image agreement of generated images, with a CLIP model from a local folder.

CLIP score (Hessel et al. 2021) = 100 · max(cos(E_I(image), E_T(prompt)), 0), averaged over a prompt
CSV (the COCO-30k format: ``prompt,evaluation_seed``). Pins: the CSV's sha256 and seeds, steps,
guidance, and the CLIP folder with its weights' sha256. Utility check after erasure: a drop on
unrelated prompts means the erasure damaged the model.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from erasekit.evaluation.presets.common import generate, read_prompt_csv, record

NAME, VERSION = "clip-score", "1"


@dataclass(frozen=True)
class ClipScoreSettings:
    """Pinned settings of preset ``clip-score`` v1."""

    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Guidance scale."""


class Scorer(Protocol):
    version: dict

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


def run_clip_score(
    backend: Any,
    prompts_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    clip_folder: str | os.PathLike | None = None,
    scorer: Scorer | None = None,
    settings: ClipScoreSettings = ClipScoreSettings(),
    limit: int | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run preset ``clip-score``: generate each CSV row with its seed; mean CLIP score.

    Args:
        clip_folder: A local CLIP folder (``save_pretrained`` layout, safetensors); or pass ``scorer``.
        scorer: An object with ``score(images, prompts) -> [N]`` and ``version`` (tests inject one).
    """
    from erasekit.errors import ErasekitError

    started = time.perf_counter()
    if scorer is None:
        if clip_folder is None:
            raise ErasekitError(
                "The clip-score preset needs a local CLIP folder: pass clip_folder (e.g. --clip PATH)."
            )
        from erasekit.backends.vision import ClipScorer

        scorer = ClipScorer(clip_folder, device=str(getattr(backend, "device", "cpu")))
    rows, prompt_pins = read_prompt_csv(prompts_csv, limit=limit)
    images, _, _ = generate(
        backend, rows, out_dir, steps=settings.steps, guidance=settings.guidance, batch_size=batch_size
    )
    prompts = [r["prompt"] for r in rows]
    scores = torch.cat(
        [scorer.score(images[i : i + 32], prompts[i : i + 32]) for i in range(0, len(prompts), 32)]
    )
    metrics = {
        "clip_score": float(scores.mean()),
        "clip_score_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "images": len(scores),
    }
    pins = {"prompts": prompt_pins, **asdict(settings), "clip": scorer.version}
    return record(NAME, VERSION, backend, pins=pins, metrics=metrics, started=started, out_dir=out_dir)
