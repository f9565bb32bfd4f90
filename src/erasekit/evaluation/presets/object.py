"""``object`` preset: does the erased object class still come out? Top-k accuracy of a local classifier.

Prompts for the erased class (and optional retained classes) come from an ImageNette-format CSV
(``prompt,class,evaluation_seed``) or, without one, from ``"an image of a {class}"``-style templates
with seeds 0…n−1. Each generated image counts as a top-k hit when the class is among the
classifier's k highest logits. Erasure works when the erased class's top-1 accuracy falls while the
retained classes' stays. Pins: prompts (file sha256 or templates), seeds, steps, guidance, the
classifier folder and weights sha256, and k.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.presets.common import generate, read_prompt_csv, record, seeds_sha256

NAME, VERSION = "object", "1"
TEMPLATES: tuple[str, ...] = ("an image of a {}", "a photo of a {}")


@dataclass(frozen=True)
class ObjectSettings:
    """Pinned settings of preset ``object`` v1."""

    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Guidance scale."""
    top_k: tuple[int, ...] = (1, 5)
    """Accuracies reported (top-1 and top-5)."""
    images_per_class: int = 10
    """Images per class when prompts come from the templates (seeds 0…n−1)."""


class Classifier(Protocol):
    labels: list[str]
    version: dict

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


def top_k_hits(logits: torch.Tensor, label: int, k: int) -> torch.Tensor:
    """Per image whether ``label`` is among the ``k`` highest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == label).any(1)


def _label_index(labels: Sequence[str], name: str) -> int:
    lowered = [label.lower() for label in labels]
    # Hugging Face ImageNet labels read "tench, Tinca tinca": match the full label or its first synonym.
    for i, label in enumerate(lowered):
        if name.lower() == label or name.lower() in [part.strip() for part in label.split(",")]:
            return i
    raise ErasekitError(
        f"The classifier has no class {name!r}; its classes include: {', '.join(labels[:8])}…."
    )


def run_object(
    backend: Any,
    erased_class: str,
    out_dir: str | os.PathLike,
    *,
    classifier_folder: str | os.PathLike | None = None,
    classifier: Classifier | None = None,
    retain_classes: Sequence[str] = (),
    prompts_csv: str | os.PathLike | None = None,
    settings: ObjectSettings = ObjectSettings(),
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run preset ``object``: top-k accuracy on the erased class (and each retained class)."""
    started = time.perf_counter()
    if classifier is None:
        if classifier_folder is None:
            raise ErasekitError(
                "The object preset needs a local image classifier folder: pass classifier_folder."
            )
        from erasekit.backends.vision import ImageClassifier

        classifier = ImageClassifier(classifier_folder, device=str(getattr(backend, "device", "cpu")))
    classes = [erased_class, *retain_classes]
    indices = {c: _label_index(classifier.labels, c) for c in classes}  # fail before generating
    if prompts_csv is not None:
        all_rows, prompt_pins = read_prompt_csv(prompts_csv, extra_columns=("class",))
        rows = [r for r in all_rows if r["class"] in classes]
        if missing := [c for c in classes if not any(r["class"] == c for r in rows)]:
            raise ErasekitError(f"{prompts_csv} has no rows for class(es) {', '.join(missing)}.")
        prompt_pins["rows_used"] = len(rows)
    else:
        rows = [
            {"prompt": TEMPLATES[s % len(TEMPLATES)].format(c), "seed": s, "class": c}
            for c in classes
            for s in range(settings.images_per_class)
        ]
        prompt_pins = {
            "templates": list(TEMPLATES),
            "seeds_sha256": seeds_sha256([r["seed"] for r in rows]),
            "rows": len(rows),
        }
    images, _, _ = generate(
        backend, rows, out_dir, steps=settings.steps, guidance=settings.guidance, batch_size=batch_size
    )
    logits = classifier.logits(images)
    per_class = {}
    for name in classes:
        mask = torch.tensor([r["class"] == name for r in rows])
        per_class[name] = {
            f"top{k}": float(top_k_hits(logits[mask], indices[name], k).float().mean())
            for k in settings.top_k
        } | {"images": int(mask.sum())}
    metrics = {"erased": per_class[erased_class], "retained": {c: per_class[c] for c in retain_classes}}
    if retain_classes:
        metrics["retained_mean_top1"] = sum(per_class[c].get("top1", 0.0) for c in retain_classes) / len(
            retain_classes
        )
    pins = {
        "prompts": prompt_pins,
        **asdict(settings),
        "classifier": classifier.version,
        "classes": {c: indices[c] for c in classes},
    }
    return record(
        NAME,
        VERSION,
        backend,
        pins=pins,
        metrics=metrics,
        started=started,
        out_dir=out_dir,
        erased_class=erased_class,
    )
