"""Evaluation metrics as pure functions: the ShapesWorld protocol's UA / IRA / CRA, and a Fréchet distance.

Definitions (issue 3; UnlearnCanvas, Zhang et al. 2024, uses the same three notions):

* **UA** (unlearning accuracy) — over images whose prompt names the erased concept ``c`` (domain
  ``d``): the share in which the judge's ``d`` prediction is *not* ``c``. Higher = better erased.
  **Synonym UA** is the same over prompts that name ``c`` by a synonym.
* **IRA** (in-domain retain accuracy) — over images whose prompt names another concept ``c' ≠ c`` of
  domain ``d``: the share in which the judge's ``d`` prediction is ``c'``.
* **CRA** (cross-domain retain accuracy) — over images whose prompt does not name ``c``: the judge's
  accuracy in the *other* domains, pooled over every (image, labelled other domain) pair.
* **FID** — the Fréchet distance between Gaussian fits of two feature sets (Heusel et al. 2017, eq. 6):
  ``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½})``, here in the judge's feature space.

An empty set of images gives ``None`` (not 0): "not measured" must never read as "failed".
Imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

Prediction = Mapping[str, "str | None"]


def unlearning_accuracy(predicted: Sequence[str | None], erased: str) -> float | None:
    """Share of predictions that are not ``erased`` (UA). None for no predictions."""
    if not predicted:
        return None
    return sum(p != erased for p in predicted) / len(predicted)


def accuracy(predicted: Sequence[str | None], expected: Sequence[str | None]) -> float | None:
    """Share of positions where prediction equals label. None for empty input."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} labels")
    if not predicted:
        return None
    return sum(p == e for p, e in zip(predicted, expected)) / len(predicted)


def in_domain_retain(rows: Sequence[Mapping], erased: str, domain: str) -> float | None:
    """IRA: accuracy in ``domain`` over rows labelled with another concept of that domain.

    Args:
        rows: Dicts with ``labels`` (the prompt's concepts) and ``prediction`` (the judge's), per domain.
        erased: The erased concept (rows labelled with it are excluded).
        domain: The erased concept's domain.
    """
    kept = [r for r in rows if r["labels"].get(domain) is not None and r["labels"][domain] != erased]
    return accuracy([r["prediction"][domain] for r in kept], [r["labels"][domain] for r in kept])


def cross_domain_retain(
    rows: Sequence[Mapping], erased: str, domain: str
) -> tuple[float | None, dict[str, float | None]]:
    """CRA: accuracy in the domains other than ``domain``, over rows whose labels do not contain ``erased``.

    Returns:
        The pooled accuracy over every (row, labelled other domain) pair, and the accuracy per domain.
    """
    kept = [r for r in rows if r["labels"].get(domain) != erased]
    hits, total, per_domain = 0, 0, {}
    others = sorted({d for r in kept for d in r["labels"] if d != domain})
    for other in others:
        pairs = [(r["prediction"][other], r["labels"][other]) for r in kept if other in r["labels"]]
        per_domain[other] = accuracy([p for p, _ in pairs], [e for _, e in pairs])
        hits += sum(p == e for p, e in pairs)
        total += len(pairs)
    return (hits / total if total else None), per_domain


def protocol_metrics(rows: Sequence[Mapping], erased: str, domain: str) -> dict[str, object]:
    """UA, synonym UA, IRA and CRA from judged rows of the ShapesWorld grid.

    Args:
        rows: Dicts with ``group`` (``"target"``: prompt names ``erased``; ``"synonym"``: names it by a
            synonym; ``"retain"``: does not name it), ``labels`` and ``prediction`` per domain.
        erased: The erased concept; ``domain`` its domain.

    Returns:
        ``{"ua", "synonym_ua", "ira", "cra", "cra_by_domain", "n": {group: count}, "counts": {rate:
        [successes, trials]}, "intervals": {rate: [low, high] 95 % Wilson interval or None}}``.
    """
    groups: dict[str, list[Mapping]] = {"target": [], "synonym": [], "retain": []}
    for row in rows:
        if row["group"] not in groups:
            raise ValueError(f"unknown group {row['group']!r}; expected one of {sorted(groups)}")
        groups[row["group"]].append(row)
    for row in groups["retain"]:
        if row["labels"].get(domain) == erased:
            raise ValueError(f"retain row {row.get('id', row)} names the erased concept {erased!r}")
    cra, cra_by_domain = cross_domain_retain(groups["retain"], erased, domain)
    counts = rate_counts(rows, erased, domain)
    return {
        "counts": {k: list(v) for k, v in counts.items()},
        "intervals": {k: _listed(wilson_interval(*v)) for k, v in counts.items()},
        "ua": unlearning_accuracy([r["prediction"][domain] for r in groups["target"]], erased),
        "synonym_ua": unlearning_accuracy([r["prediction"][domain] for r in groups["synonym"]], erased),
        "ira": in_domain_retain(groups["retain"], erased, domain),
        "cra": cra,
        "cra_by_domain": cra_by_domain,
        "n": {g: len(v) for g, v in groups.items()},
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval for a binomial rate ``successes / n`` (95 % for the default z).

    Wilson (1927): centre (p̂ + z²/2n) / (1 + z²/n), half-width z √(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n).
    Unlike the normal approximation it stays inside [0, 1] and is not empty at p̂ = 0 or 1, which is
    where erasure rates live (16 images all erased: UA 1.0, interval [0.81, 1.0]). None for n = 0.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_counts(rows: Sequence[Mapping], erased: str, domain: str) -> dict[str, tuple[int, int]]:
    """(successes, trials) behind UA, synonym UA, IRA and CRA for judged protocol rows."""
    target = [r for r in rows if r["group"] == "target"]
    synonym = [r for r in rows if r["group"] == "synonym"]
    retain = [r for r in rows if r["group"] == "retain"]
    kept = [r for r in retain if r["labels"].get(domain) not in (None, erased)]
    cross = [
        (r["prediction"][d], r["labels"][d])
        for r in retain
        if r["labels"].get(domain) != erased
        for d in sorted(r["labels"])
        if d != domain
    ]
    return {
        "ua": (sum(r["prediction"][domain] != erased for r in target), len(target)),
        "synonym_ua": (sum(r["prediction"][domain] != erased for r in synonym), len(synonym)),
        "ira": (sum(r["prediction"][domain] == r["labels"][domain] for r in kept), len(kept)),
        "cra": (sum(p == e for p, e in cross), len(cross)),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` (None when either is missing or the base is 0)."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


# ---- Fréchet distance --------------------------------------------------------------------------------------
def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [F] and unbiased covariance [F, F] of features [N, F], in float64."""
    x = torch.as_tensor(features).to(torch.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features [N >= 2, F]; got {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues → 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance_from_stats(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (eq. 6 of Heusel et al. 2017).

    tr((Σ₁Σ₂)^{½}) is computed as Σ √λ of the symmetric PSD matrix Σ₁^{½} Σ₂ Σ₁^{½}, which has the same
    eigenvalues and stays stable for the singular covariances of small samples.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets [N₁, F] and [N₂, F].

    Small samples bias FID upwards; compare values only at equal sample sizes (the protocol does).
    """
    return frechet_distance_from_stats(*gaussian_fit(features1), *gaussian_fit(features2))
