"""Evaluation: seeded resumable generation with a manifest, metrics, and the ShapesWorld protocol."""

from erasekit.evaluation.generate import generate_rows, load_images, merge_manifests, read_manifest
from erasekit.evaluation.metrics import frechet_distance, protocol_metrics
from erasekit.evaluation.prompt_file import score_prompt_file
from erasekit.evaluation.shapesworld import build_grid, evaluate_shapesworld

__all__ = [
    "build_grid",
    "evaluate_shapesworld",
    "frechet_distance",
    "generate_rows",
    "load_images",
    "merge_manifests",
    "protocol_metrics",
    "read_manifest",
    "score_prompt_file",
]
