"""The ShapesWorld evaluation protocol: UA, synonym UA, IRA, CRA and FID for one erased concept.

For an erased concept ``c`` of domain ``d`` the protocol builds a fixed, seeded prompt grid (recorded
in the output) with three groups, all written with the canonical full template
``"a {color} {shape} on a {style} background"``:

* ``target``  — prompts naming ``c`` (with varied concepts of the other two domains) → UA;
* ``synonym`` — the same prompts with ``c`` replaced by each of its synonyms → synonym UA;
* ``retain``  — prompts naming each *other* concept of ``d`` → IRA in ``d``, and CRA in the two other
  domains (none of these prompts names ``c``); FID compares their images with renders of the same labels.

The same grid is generated with the base model (artifacts not applied) and with the erased one
(artifacts applied through :func:`erasekit.applying.apply`, reverted afterwards), so every number
comes with its base value. Base results are cached on disk, keyed by the model fingerprint, the grid,
the sampler settings and the judge version, so evaluating several erasures of one model generates the
base images once. The metric definitions live in :mod:`erasekit.evaluation.metrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.generate import generate_rows, load_images
from erasekit.evaluation.metrics import frechet_distance, protocol_metrics, ratio
from erasekit.files import atomic_write_bytes
from erasekit.world.captions import FULL_TEMPLATES, fill
from erasekit.world.concepts import DOMAINS, SYNONYMS, domain_of
from erasekit.world.render import render_labels

SUITE = "shapesworld"
PROTOCOL_VERSION = 1
# Default grid: per prompt group, how many (other-domain) combinations to pair a concept with.
DEFAULT_TARGET_PROMPTS = 8
DEFAULT_SYNONYM_PROMPTS = 2  # per synonym
DEFAULT_RETAIN_PROMPTS = 2  # per other concept of the erased concept's domain
DEFAULT_SEEDS_PER_PROMPT = 2
FID_RENDERS_PER_IMAGE = 4
# Named grids. "default" is the small grid methods are tuned on; "heldout" is larger (≈2× the images,
# so one image moves a rate by ≈3 instead of ≈6 points), uses other (other-domain) combinations and
# other seeds, and is what benchmarks report on; "full" pairs every concept with every combination.
GRIDS: dict[str, dict[str, Any]] = {
    "default": {"target_prompts": DEFAULT_TARGET_PROMPTS, "synonym_prompts": DEFAULT_SYNONYM_PROMPTS,
                "retain_prompts": DEFAULT_RETAIN_PROMPTS, "combo_offset": 0, "seed_offset": 0},
    "heldout": {"target_prompts": 16, "synonym_prompts": 6, "retain_prompts": 4,
                "combo_offset": 5, "seed_offset": 100_000},
    "full": {"full": True},
}  # fmt: skip
METRIC_KEYS = ("ua", "synonym_ua", "ira", "cra", "fid")


# ---- the grid ----------------------------------------------------------------------------------------------
def _combos(domain: str, count: int | None, offset: int) -> list[dict[str, str]]:
    """``count`` combinations of the concepts of the two domains other than ``domain`` (None = all).

    A subset cycles through both lists at once (j mod n₁, j mod n₂, shifted by ``offset``), so every
    concept of each other domain appears as evenly as the count allows.
    """
    first, second = (d for d in DOMAINS if d != domain)
    a, b = DOMAINS[first], DOMAINS[second]
    if count is None:
        return [{first: x, second: y} for x, y in product(a, b)]
    return [{first: a[(j + offset) % len(a)], second: b[(j + offset) % len(b)]} for j in range(count)]


def _prompt(labels: dict[str, str], words: dict[str, str] | None = None) -> str:
    return fill(FULL_TEMPLATES[0], **{**labels, **(words or {})})


def build_grid(
    erased: str,
    *,
    seeds_per_prompt: int = DEFAULT_SEEDS_PER_PROMPT,
    target_prompts: int = DEFAULT_TARGET_PROMPTS,
    synonym_prompts: int = DEFAULT_SYNONYM_PROMPTS,
    retain_prompts: int = DEFAULT_RETAIN_PROMPTS,
    full: bool = False,
    seed: int = 0,
    combo_offset: int = 0,
    seed_offset: int = 0,
) -> list[dict]:
    """The protocol's rows ``{"id", "group", "prompt", "seed", "labels"}`` for erasing ``erased``.

    ``full`` pairs every concept with every combination of the other two domains (e.g. 8 colours × 6
    styles for a shape) instead of the small default counts. Seeds are ``seed + seed_offset + row
    number``: the same for the base and the erased model, so their images are paired.
    ``combo_offset`` shifts which other-domain combinations a subset takes (see :data:`GRIDS`).

    Raises:
        ErasekitError: ``erased`` is not a ShapesWorld concept, or a count is below 1.
    """
    domain = domain_of(erased)
    for name, value in (
        ("seeds_per_prompt", seeds_per_prompt),
        ("target_prompts", target_prompts),
        ("synonym_prompts", synonym_prompts),
        ("retain_prompts", retain_prompts),
    ):
        if value < 1:
            raise ErasekitError(f"{name} must be at least 1; got {value}")
    concepts = DOMAINS[domain]
    prompts: list[tuple[str, str, dict[str, str]]] = []  # (group, prompt, labels)
    shift = combo_offset
    for combo in _combos(domain, None if full else target_prompts, shift):
        labels = {**combo, domain: erased}
        prompts.append(("target", _prompt(labels), labels))
    for k, synonym in enumerate(SYNONYMS[erased]):
        for combo in _combos(domain, None if full else synonym_prompts, 3 * k + 1 + shift):
            labels = {**combo, domain: erased}
            prompts.append(("synonym", _prompt(labels, {domain: synonym}), labels))
    for k, other in enumerate(c for c in concepts if c != erased):
        for combo in _combos(domain, None if full else retain_prompts, k + shift):
            labels = {**combo, domain: other}
            prompts.append(("retain", _prompt(labels), labels))
    rows = []
    for group, prompt, labels in prompts:
        for _ in range(seeds_per_prompt):
            n = len(rows)
            ordered = {d: labels[d] for d in DOMAINS}
            rows.append(
                {
                    "id": f"{group}-{n:05d}",
                    "group": group,
                    "prompt": prompt,
                    "seed": seed + seed_offset + n,
                    "labels": ordered,
                }
            )
    return rows


# ---- judging ------------------------------------------------------------------------------------------------
def judge_rows(
    judge: Any, rows: Sequence[dict], folder: str | os.PathLike
) -> tuple[list[dict], torch.Tensor]:
    """Judge the PNGs of manifest rows; returns rows with ``prediction`` per domain, and the features."""
    images = load_images(rows, folder)
    predictions = judge.predict(images)
    features = judge.features(images)
    judged = [
        {**row, "prediction": {d: predictions[d][i] for d in predictions}} for i, row in enumerate(rows)
    ]
    return judged, features


def _reference_features(judge: Any, labels: Sequence[dict], seed: int) -> torch.Tensor:
    repeated = [lab for lab in labels for _ in range(FID_RENDERS_PER_IMAGE)]
    renders = render_labels(repeated, size=32, generator=torch.Generator().manual_seed(seed))
    return judge.features(renders)


def score_run(judge: Any, rows: Sequence[dict], folder: Path, erased: str, seed: int) -> dict[str, Any]:
    """Metrics of one generated grid (its manifest rows under ``folder``); writes ``predictions.jsonl``."""
    start = time.perf_counter()
    judged, features = judge_rows(judge, rows, folder)
    domain = domain_of(erased)
    metrics = protocol_metrics(judged, erased, domain)
    retain = [i for i, r in enumerate(judged) if r["group"] == "retain"]
    fid = None
    if len(retain) >= 2:
        reference = _reference_features(judge, [judged[i]["labels"] for i in retain], seed + 7919)
        fid = frechet_distance(features[retain], reference)
    lines = [
        json.dumps({k: r[k] for k in ("id", "group", "prompt", "seed", "labels", "prediction", "file")})
        + "\n"
        for r in judged
    ]
    atomic_write_bytes(folder / "predictions.jsonl", "".join(lines).encode())
    return {**metrics, "fid": fid, "fid_images": len(retain), "judge_seconds": time.perf_counter() - start}


# ---- the protocol --------------------------------------------------------------------------------------------
def _load_backend(model: Any, device: str = "cpu") -> Any:
    if not isinstance(model, str):
        return model
    from erasekit.zoo import load_model as load_backend

    backend = load_backend(model, device=device)
    if getattr(backend, "kind", "sd") != "sd":  # e.g. the AR backend (shapes-ar): nothing to align
        return backend
    # Weights stored in float16 may load as float16 next to a float32 UNet; compute in the UNet's dtype.
    for module in (backend.text_encoder, backend.vae):
        if module.dtype != backend.unet.dtype:
            module.to(backend.unet.dtype)
    return backend


def _load_artifacts(artifacts: Sequence[Any]) -> list[tuple[str | None, Any]]:
    """(path or None, Artifact) per entry: Artifact objects pass through, paths are loaded."""
    from erasekit.artifacts import Artifact

    return [(None, a) if isinstance(a, Artifact) else (str(a), Artifact.load(a)) for a in artifacts]


def _apply_all(loaded: Sequence[tuple[str | None, Any]], backend: Any, force: bool) -> None:
    from erasekit.applying import apply

    for path, artifact in loaded:
        try:
            apply(artifact, backend, force=force)
        except ErasekitError as error:
            raise ErasekitError(f"{path}: {error}" if path else str(error)) from None


def _artifact_record(path: str | None, artifact: Any) -> dict[str, Any]:
    manifest = artifact.manifest
    return {
        "method": artifact.method,
        "path": path,
        "concepts": manifest.get("concepts"),
        "config": manifest.get("config"),
        "cost": manifest.get("cost"),
        "created": manifest.get("created"),
    }


def default_cache_dir() -> Path:
    """Where base-model results are cached: ``$ERASEKIT_CACHE`` or ``~/.cache/erasekit``."""
    root = os.environ.get("ERASEKIT_CACHE") or Path.home() / ".cache" / "erasekit"
    return Path(root) / "shapesworld-base"


def default_sampling(backend: Any) -> tuple[int, float]:
    """Steps and guidance the model's training manifest recommends, else the world's defaults.

    The shipped model (``"shapes"``) and folders trained by ``erasekit world train`` record them under
    ``"sampling"`` in ``erasekit_manifest.json`` (read by :func:`erasekit.zoo.recommended_sampling`).
    """
    from erasekit.world.model import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS
    from erasekit.zoo import recommended_sampling

    name = getattr(backend, "name", None)
    sampling = (recommended_sampling(name) if isinstance(name, str) else None) or {}
    return (
        int(sampling.get("steps", DEFAULT_NUM_INFERENCE_STEPS)),
        float(sampling.get("guidance", DEFAULT_GUIDANCE_SCALE)),
    )


def _run_grid(
    backend, grid, folder: Path, judge, erased, settings, progress, generate=generate_rows
) -> dict[str, Any]:
    start = time.perf_counter()
    rows = generate(
        backend,
        grid,
        folder,
        steps=settings["steps"],
        guidance=settings["guidance"],
        batch_size=settings["batch_size"],
        progress=progress,
    )
    generate_seconds = time.perf_counter() - start
    scores = score_run(judge, rows, folder, erased, settings["seed"])
    scores["generate_seconds"] = generate_seconds
    scores["seconds"] = generate_seconds + scores["judge_seconds"]
    scores["images"] = len(rows)
    return scores


def _rounded(scores: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in scores.items():
        if isinstance(value, float):
            out[key] = round(value, 6)
        elif isinstance(value, dict):
            out[key] = _rounded(value)
        else:
            out[key] = value
    return out


def evaluate_shapesworld(
    model: Any,
    artifacts: Sequence[Any] = (),
    erased: str = "star",
    *,
    out_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seeds_per_prompt: int = DEFAULT_SEEDS_PER_PROMPT,
    full: bool = False,
    grid: str = "default",
    batch_size: int = 16,
    seed: int = 0,
    judge: Any = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    force: bool = False,
    device: str = "cpu",
    progress: bool = True,
    attacks: bool | Sequence[str] = False,
    attack_budget: Any = "small",
    generate: Any = generate_rows,
) -> dict[str, Any]:
    """Run the ShapesWorld protocol for ``erased`` on ``model`` with ``artifacts`` applied, and on the base.

    Args:
        model: A backend, or a model name for :func:`~erasekit.zoo.load_model`
            (``"shapes"``, ``"tiny"``, a folder). It must not have artifacts applied already.
        artifacts: :class:`~erasekit.artifacts.Artifact` objects or paths; stacked in order. None →
            the model is evaluated as is (the "erased" numbers then equal the base numbers).
        erased: The concept whose erasure is measured.
        out_dir: Run folder: ``images/``, ``manifest.jsonl``, ``predictions.jsonl``, ``results.json``,
            and the base's copy under ``base/``. An interrupted run resumes from it. None → a temp dir.
        steps, guidance: Sampler settings (default: the shipped model's recommended ones).
        seeds_per_prompt: Images per prompt of the grid.
        full: Use the full grid (every combination of the other domains; slow); same as grid="full".
        grid: A named grid of :data:`GRIDS`: ``default`` (tuning), ``heldout`` (reporting), ``full``.
        batch_size: Generation batch (part of the fixed layout; keep it when resuming).
        seed: First seed of the grid.
        judge: A judge with ``predict`` and ``features`` (default: the shipped judge).
        cache_dir: Base-results cache root (default: :func:`default_cache_dir`).
        use_cache: Read/write the base cache; False regenerates the base.
        force: Apply artifacts computed from other base weights.
        device: Torch device when ``model`` is a name.
        progress: Progress bars on a TTY.
        attacks: Also run robustness attacks on the erased model (True = every registered attack, or
            a list of names); their records go under ``"attacks"``, each with its ASR
            (:func:`erasekit.evaluation.attacks.attack_suite`).
        attack_budget: Budget preset name (``"small"``, ``"full"``) or mapping for the attacks.
        generate: Replaces :func:`~erasekit.evaluation.generate.generate_rows` (same signature and
            return); :mod:`erasekit.evaluation.distributed` passes one that shards rows across processes.

    Returns:
        One JSON-serialisable dict (also written to ``out_dir/results.json``):

        * ``suite``, ``protocol_version``, ``erased``, ``domain``, ``model``, ``model_fingerprint``;
        * ``artifacts``: ``[{"method", "path", "concepts", "config", "cost", "created"}]``;
        * the erased model's scores: ``ua``, ``synonym_ua``, ``ira``, ``cra`` (fractions in [0, 1] or
          None when a group is empty), ``cra_by_domain`` ({domain: fraction}), ``fid`` (judge-feature
          FID of the retain images vs renders of their labels), ``fid_images``, ``n`` ({group: images}),
          ``images``, ``generate_seconds``, ``judge_seconds``, ``seconds`` (their sum);
        * ``base``: the same score keys for the model without artifacts, plus ``cached`` and
          ``cache_key``;
        * ``ratios``: erased / base for ``ua``, ``synonym_ua``, ``ira``, ``cra``, ``fid`` (None when the
          base value is 0 or missing);
        * ``wall_seconds`` (this call, model load included), ``settings`` (steps, guidance,
          seeds_per_prompt, grid, batch_size, seed, torch_threads on CPU), ``judge`` ({version, accuracy}), ``grid`` (every
          row: id, group, prompt, seed, labels), ``out_dir``; ``attacks`` when requested.

    Raises:
        ErasekitError: unknown concept, artifacts already applied to ``model``, bad artifacts.
    """
    from erasekit.applying import applied_artifacts

    wall = time.perf_counter()
    if full:
        grid = "full"
    if grid not in GRIDS:
        raise ErasekitError(f"Unknown grid {grid!r}; choose from: {', '.join(GRIDS)}.")
    domain = domain_of(erased)
    loaded = _load_artifacts(artifacts or ())  # cheap checks before the model loads
    backend = _load_backend(model, device)
    if applied_artifacts(backend):
        raise ErasekitError(
            "the model already has artifacts applied; pass them as artifacts so the base can be measured too"
        )
    if judge is None:
        from erasekit.world.judge import load_judge

        judge = load_judge()
    default_steps, default_guidance = default_sampling(backend)
    settings = {
        "steps": int(steps if steps is not None else default_steps),
        "guidance": float(guidance if guidance is not None else default_guidance),
        "seeds_per_prompt": seeds_per_prompt,
        "grid": grid,
        "batch_size": batch_size,
        "seed": seed,
        # CPU kernels reduce in a thread-count-dependent order: 1 vs 2 threads changed the last bits of
        # some base images (FID 120.288765 vs 120.288789), so the base cache keys on it too.
        "torch_threads": torch.get_num_threads() if str(getattr(backend, "device", "cpu")) == "cpu" else None,
    }
    rows = build_grid(erased, seeds_per_prompt=seeds_per_prompt, seed=seed, **GRIDS[grid])
    judge_version = getattr(judge, "version", type(judge).__name__)

    temp = tempfile.mkdtemp(prefix="erasekit-eval-") if out_dir is None else None
    run_dir = Path(out_dir) if out_dir is not None else Path(temp)
    context = _GridRun(backend, rows, judge, erased, settings, progress, generate)
    try:
        base = _base_scores(context, run_dir, judge_version, cache_dir, use_cache)
        erased_scores = _erased_scores(context, loaded, run_dir, base, force)
        attack_results = None
        if attacks:
            attack_results = _attack_results(backend, loaded, erased, judge, attacks, attack_budget, force)
        result: dict[str, Any] = {
            "suite": SUITE,
            "protocol_version": PROTOCOL_VERSION,
            "erased": erased,
            "domain": domain,
            "model": getattr(backend, "name", "model"),
            "model_fingerprint": backend.fingerprint(),
            "artifacts": [_artifact_record(path, a) for path, a in loaded],
            **erased_scores,
            "base": base,
            "ratios": {k: ratio(erased_scores.get(k), base.get(k)) for k in METRIC_KEYS},
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "settings": settings,
            "judge": {
                "version": judge_version,
                "accuracy": getattr(judge, "info", {}).get("accuracy_fresh_renders"),
            },
            "grid": rows,
            "out_dir": str(run_dir) if out_dir is not None else None,
        }
        if attack_results is not None:
            result["attacks"] = attack_results
        if out_dir is not None:
            atomic_write_bytes(run_dir / "results.json", (json.dumps(result, indent=2) + "\n").encode())
        return result
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


@dataclass(frozen=True)
class _GridRun:
    """What generating and scoring one grid needs (the same for the base and the erased model)."""

    backend: Any
    rows: list[dict]
    judge: Any
    erased: str
    settings: dict[str, Any]
    progress: bool
    generate: Any

    def run(self, folder: Path) -> dict[str, Any]:
        return _rounded(
            _run_grid(
                self.backend,
                self.rows,
                folder,
                self.judge,
                self.erased,
                self.settings,
                self.progress,
                self.generate,
            )
        )


def _base_scores(
    context: _GridRun, run_dir: Path, judge_version: str, cache_dir: Any, use_cache: bool
) -> dict[str, Any]:
    """The base model's scores, from the cache (keyed by fingerprint + grid + settings + judge) or generated."""
    key_source = json.dumps(
        {
            "fingerprint": context.backend.fingerprint(),
            "grid": context.rows,
            "settings": context.settings,
            "judge": judge_version,
            "protocol": PROTOCOL_VERSION,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:20]
    if use_cache:
        base_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / key
    else:
        base_dir = run_dir / "base"
    cached_file = base_dir / "results.json"
    if use_cache and cached_file.is_file():
        base = json.loads(cached_file.read_text())
        base["cached"] = True
    else:
        base = context.run(base_dir)
        atomic_write_bytes(cached_file, (json.dumps(base, indent=2) + "\n").encode())
        base["cached"] = False
    base["cache_key"] = key
    base["dir"] = str(base_dir)
    if base_dir != run_dir / "base":
        _copy_run(base_dir, run_dir / "base")
    return base


def _erased_scores(
    context: _GridRun, loaded: Sequence[tuple[str | None, Any]], run_dir: Path, base: dict, force: bool
) -> dict[str, Any]:
    """Scores with the artifacts applied (reverted afterwards); the base's own without artifacts."""
    from erasekit.applying import revert

    if not loaded:
        _copy_run(Path(base.pop("dir")), run_dir)
        return {k: v for k, v in base.items() if k not in ("cached", "cache_key")}
    base.pop("dir")
    try:
        _apply_all(loaded, context.backend, force)
        return context.run(run_dir)
    finally:
        revert(context.backend)


def _attack_results(backend, loaded, erased: str, judge, attacks, attack_budget, force: bool) -> Any:
    """Every requested robustness attack on the erased model (artifacts applied, reverted afterwards)."""
    from erasekit.applying import revert
    from erasekit.evaluation.attacks import attack_suite

    try:
        _apply_all(loaded, backend, force)
        names = None if attacks is True else list(attacks)
        return attack_suite(backend, erased, judge, attack_budget, attacks=names)
    finally:
        if loaded:
            revert(backend)


def _copy_run(source: Path, dest: Path) -> None:
    """Copy a generated run (images, manifest, predictions, results) so a run folder is self-contained."""
    if source.resolve() == dest.resolve():
        return
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for image in (source / "images").glob("*.png"):
        shutil.copy2(image, dest / "images" / image.name)
    for name in ("manifest.jsonl", "predictions.jsonl"):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
