"""Robustness attacks on an erased model: each reports an attack success rate (ASR) with its budget.

One line per attack in the registry (name -> "module:Class"). An attack class has ``name``,
``budget_cls`` (a frozen dataclass; attribute docstrings = help), ``budgets`` (named presets such as
``"small"``) and ``run(backend, concept, *, budget, seeds, judge) -> dict``. The backend is attacked as
given: apply the erasure's artifacts first (:func:`erasekit.applying.apply`).

ASR = share of attempts (generated images) in which the judge names the erased concept.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from erasekit.errors import ErasekitError

_REGISTRY: dict[str, str] = {
    "synonym": "erasekit.evaluation.attacks.synonym:SynonymAttack",
    "prompt_opt": "erasekit.evaluation.attacks.prompt_opt:PromptOptAttack",
    "concept_vector": "erasekit.evaluation.attacks.concept_vector:ConceptVectorAttack",
    "image_prompt": "erasekit.evaluation.attacks.image_prompt:ImagePromptAttack",
}
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3)


def available_attacks() -> list[str]:
    return list(_REGISTRY)


def attack_names(text: str) -> list[str]:
    """``"all"``, ``"none"`` (or empty) or comma-separated names -> registered attack names, in order."""
    value = text.strip().lower()
    if value in ("", "none"):
        return []
    names = available_attacks() if value == "all" else [p.strip() for p in value.split(",") if p.strip()]
    for name in names:
        if name not in _REGISTRY:
            raise ErasekitError(
                f"Unknown attack {name!r}; choose all, none or from {', '.join(available_attacks())}."
            )
    return list(dict.fromkeys(names))


def get_attack(name: str) -> Any:
    """An instance of the registered attack ``name``."""
    if name not in _REGISTRY:
        raise ErasekitError(f"Unknown attack {name!r}; choose from: {', '.join(available_attacks())}.")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def run_attack(
    name: str,
    backend: Any,
    concept: str,
    *,
    budget: Any = "small",
    seeds: Sequence[int] = DEFAULT_SEEDS,
    judge: Any,
) -> dict:
    """Run attack ``name`` against ``backend`` (artifacts already applied) for ShapesWorld ``concept``.

    Args:
        name: A registered attack (:func:`available_attacks`).
        backend: The erased model (an :class:`~erasekit.backends.sd.SDBackend` with artifacts applied).
        concept: The erased ShapesWorld concept ("star", "red", "striped" ...).
        budget: A budget preset name (``"small"``, ``"full"``) or a mapping of budget fields, optionally
            with ``"preset"``.
        seeds: Generation seeds; every attack prompt is tried with each. The first also seeds the search.
        judge: Names each image's concepts (``erasekit.world.judge.load_judge()``).

    Returns:
        JSON-serialisable record: ``asr``, ``successes``, ``attempts``, ``budget``, ``seeds``, ``judge``,
        ``model_fingerprint``, ``seconds`` and the attack's own facts (e.g. ``asr_before``).
    """
    from erasekit.evaluation.attacks.common import concept_domain

    concept_domain(concept)  # a clear error for a concept the judge cannot rate, before any work
    return get_attack(name).run(backend, concept, budget=budget, seeds=seeds, judge=judge)


def attack_suite(
    backend: Any,
    concept: str,
    judge: Any,
    budget: Any = "small",
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    attacks: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Every registered attack (or ``attacks``) against one erased model: name -> result record.

    ``budget`` is one budget for every attack (a preset name or a mapping of fields), or a mapping
    from attack names to budgets (attacks it leaves out get ``"small"``).
    """
    names = list(attacks or available_attacks())
    per_attack = isinstance(budget, Mapping) and bool(budget) and set(budget) <= set(available_attacks())
    return {
        name: run_attack(
            name,
            backend,
            concept,
            budget=budget.get(name, "small") if per_attack else budget,
            seeds=seeds,
            judge=judge,
        )
        for name in names
    }


__all__ = ["attack_names", "attack_suite", "available_attacks", "get_attack", "run_attack"]
