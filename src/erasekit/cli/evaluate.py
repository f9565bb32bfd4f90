"""``erasekit evaluate``: the ShapesWorld protocol (UA / IRA / CRA / FID vs. the base), or a prompt file.

Cheap checks (suite, concept, prompt file, artifact files) run before the model loads, so a typo
costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from erasekit.cli.app import app, emit, user_errors
from erasekit.errors import ErasekitError

SUITES = ("shapesworld", "memorization")


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", help="`shapes`, `tiny` or a diffusers folder.")],
    artifact: Annotated[
        list[Path] | None,
        typer.Option(
            "--artifact", help="Erasure artifact to apply (repeatable; stacked in order).", show_default=False
        ),
    ] = None,
    suite: Annotated[
        str, typer.Option("--suite", help="Evaluation suite: shapesworld, or memorization (code LMs).")
    ] = "shapesworld",
    forget: Annotated[
        str | None,
        typer.Option(
            "--forget",
            help="memorization suite: the forget set (JSONL or code files; `model` = the model's own).",
            show_default=False,
        ),
    ] = None,
    erased: Annotated[
        str | None,
        typer.Option(
            "--erased", help="The erased ShapesWorld concept (star, red, striped …).", show_default=False
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help='Score this JSONL prompt file instead ({"prompt", "seed", "labels": {"shape", "color", "style"}} rows).',
            show_default=False,
        ),
    ] = None,
    rows: Annotated[
        Path | None,
        typer.Option(
            "--rows", help="With --prompts: write per-row predictions (JSONL) here.", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run folder: images/, manifest.jsonl, predictions.jsonl, results.json, base/. Reruns resume.",
            show_default=False,
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="The full prompt grid (every combination; slow); = --grid full.")
    ] = False,
    grid: Annotated[
        str,
        typer.Option(
            "--grid",
            help="Prompt grid: default (small; tune on it), heldout (≈2× images, other prompts and seeds; report on it) or full.",
        ),
    ] = "default",
    steps: Annotated[
        int | None, typer.Option("--steps", help="Sampling steps (default: the model's).", show_default=False)
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option("--guidance", help="Guidance scale (default: the model's).", show_default=False),
    ] = None,
    seeds_per_prompt: Annotated[int, typer.Option("--seeds-per-prompt", help="Images per grid prompt.")] = 2,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Generation batch (keep it when resuming a run).")
    ] = 16,
    seed: Annotated[int, typer.Option("--seed", help="First seed of the prompt grid.")] = 0,
    judge_path: Annotated[
        Path | None, typer.Option("--judge", help="Judge folder (default: the shipped ShapesWorld judge).")
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Regenerate the base model's images instead of using the cache."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply artifacts made from other base weights.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            help="Shard generation over N local processes (identical results; docs/scaling.md).",
        ),
    ] = 1,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch CPU threads (default: torch's choice; 1 is fastest on a busy CPU).",
            show_default=False,
        ),
    ] = None,
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            help="Robustness attacks to run on the erased model after the grid: all, none, or names "
            "(comma-separated: synonym, prompt_opt, concept_vector); their ASRs join the result.",
        ),
    ] = "none",
    attack_budget: Annotated[
        str,
        typer.Option(
            "--attack-budget",
            help='Attack budget: a preset (small, full) or a JSON file {"ATTACK": {"preset": "small", FIELD: VALUE}}.',
        ),
    ] = "small",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Measure an erasure on ShapesWorld: UA, synonym UA, IRA, CRA and FID, each beside the base model's."""
    if suite not in SUITES:
        raise ErasekitError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    artifacts = [str(path) for path in artifact or []]
    if suite == "memorization":  # code LMs: logic in evaluation/memorization_suite.py
        from erasekit.evaluation import memorization_suite as mem

        result = mem.evaluate_memorization(
            model, artifacts, forget, seed=seed, force=force, device=device, out=out
        )
        emit(result, as_json, mem.human)
        return
    _check_options(steps, seeds_per_prompt, batch_size, threads, rows, prompts, artifact or [])
    attack_names, attack_budget = _parse_attacks(attacks, attack_budget)
    _check_attacks(attack_names, prompts, artifacts)
    if prompts is not None:
        if processes > 1 or distributed_launch():
            raise ErasekitError(
                "--prompts files are scored in one process; drop --processes (or accelerate launch)"
            )
        from erasekit.evaluation.prompt_file import read_prompt_file

        read_prompt_file(prompts)  # malformed rows fail before the model loads
        judge = _judge(judge_path)
        result = _score_prompts(
            model, artifacts, prompts, rows, out, steps, guidance, batch_size, judge, force, device
        )
        emit(result, as_json, _human_prompts)
        return
    protocol = {
        "out_dir": out,
        "steps": steps,
        "guidance": guidance,
        "seeds_per_prompt": seeds_per_prompt,
        "grid": "full" if full else grid,
        "batch_size": batch_size,
        "seed": seed,
        "use_cache": not no_cache,
        "force": force,
        "attacks": attack_names,
        "attack_budget": attack_budget,
    }
    _run_shapesworld(model, artifacts, erased, protocol, judge_path, processes, device, as_json)


def _check_options(
    steps: int | None,
    seeds_per_prompt: int,
    batch_size: int,
    threads: int | None,
    rows: Path | None,
    prompts: Path | None,
    artifact_paths: list[Path],
) -> None:
    """The option checks that need no model; sets ``--threads``; fails on a bad artifact file."""
    from erasekit.artifacts import Artifact

    if steps is not None and steps < 1:
        raise ErasekitError(f"--steps must be at least 1; got {steps}")
    if seeds_per_prompt < 1 or batch_size < 1:
        raise ErasekitError("--seeds-per-prompt and --batch-size must be at least 1")
    if threads is not None:
        if threads < 1:
            raise ErasekitError(f"--threads must be at least 1; got {threads}")
        import torch

        torch.set_num_threads(threads)
    if rows is not None and prompts is None:
        raise ErasekitError("--rows writes per-row predictions of --prompts; pass --prompts FILE.jsonl too")
    for path in artifact_paths:
        _load_artifact(path, Artifact)  # a missing or corrupt file fails before the model loads


def _check_attacks(attack_names: list[str], prompts: Path | None, artifacts: list[str]) -> None:
    if attack_names and prompts is not None:
        raise ErasekitError(
            "--attacks runs with the ShapesWorld grid (--erased), not with --prompts; drop one"
        )
    if attack_names and not artifacts:
        raise ErasekitError("--attacks attacks an erased model; pass the erasure with --artifact PATH")


def _run_shapesworld(
    model: str,
    artifacts: list[str],
    erased: str | None,
    protocol: dict,
    judge_path: Path | None,
    processes: int,
    device: str,
    as_json: bool,
) -> None:
    """The ShapesWorld protocol on ``erased``: in this process, or sharded over ``processes``."""
    if erased is None:
        raise ErasekitError(
            "pass --erased CONCEPT (the concept the artifacts erase), or --prompts FILE.jsonl"
        )
    from erasekit.world.concepts import domain_of

    domain_of(erased)
    from erasekit.evaluation.shapesworld import GRIDS

    if protocol["grid"] not in GRIDS:
        raise ErasekitError(f"unknown --grid {protocol['grid']!r}; choose from: {', '.join(GRIDS)}")
    from erasekit.evaluation import distributed

    if processes > 1 and not distributed_launch():
        raise typer.Exit(code=distributed.relaunch(processes))  # N workers run this command again
    protocol = {**protocol, "judge": _judge(judge_path)}
    from erasekit.evaluation.shapesworld import evaluate_shapesworld

    if distributed_launch():  # under accelerate launch / --processes
        result = distributed.run_sharded(
            lambda backend, generate: evaluate_shapesworld(
                backend, artifacts, erased, generate=generate, **protocol
            ),
            model=model,
            artifacts=artifacts,
            force=protocol["force"],
            device=device,
        )
        if result is not None:  # the main process reports; the others stay quiet
            emit(result, as_json, human_table)
        return
    result = evaluate_shapesworld(model, artifacts, erased, device=device, **protocol)
    emit(result, as_json, human_table)


def _parse_attacks(text: str, budget: str) -> tuple[list[str], Any]:
    """``--attacks`` as registered attack names ([] for none) and ``--attack-budget`` resolved and checked.

    The budget is a preset name for every attack, or a JSON file mapping attack names to budget
    mappings; each attack's budget is resolved here so that a typo fails before the model loads.
    """
    from erasekit.evaluation.attacks import attack_names, available_attacks, get_attack
    from erasekit.evaluation.attacks.common import resolve_budget

    known = available_attacks()
    try:
        names = attack_names(text)
    except ErasekitError as error:
        raise ErasekitError(f"--attacks: {error}") from None
    if not names:
        return [], budget
    spec: Any = budget
    if budget.endswith(".json"):
        try:
            spec = json.loads(Path(budget).read_text())
        except FileNotFoundError:
            raise ErasekitError(f"--attack-budget {budget}: file not found") from None
        except json.JSONDecodeError as error:
            raise ErasekitError(f"--attack-budget {budget}: not valid JSON ({error.msg})") from None
        if not isinstance(spec, dict) or not set(spec) <= set(known):
            raise ErasekitError(
                f"--attack-budget {budget}: write an object keyed by attack names ({', '.join(known)})"
            )
    resolved = {}
    for name in names:
        attack = get_attack(name)
        one = spec.get(name, "small") if isinstance(spec, dict) else spec
        try:
            resolved[name] = resolve_budget(attack.budget_cls, attack.budgets, one)
        except ErasekitError as error:
            raise ErasekitError(f"--attack-budget ({name}): {error}") from None
    return list(resolved), resolved


def distributed_launch() -> bool:
    """Whether this process was started by accelerate / torchrun / MPI with several processes."""
    from erasekit.evaluation import distributed

    return distributed.launched_world_size() > 1


def _load_artifact(path: Path, artifact_cls: Any) -> Any:
    try:
        return artifact_cls.load(path)
    except ErasekitError as error:
        raise ErasekitError(f"--artifact {path}: {error}") from None


def _judge(path: Path | None) -> Any:
    from erasekit.world.judge import load_judge

    return load_judge(path)


def _score_prompts(model, artifacts, prompts, rows, out, steps, guidance, batch_size, judge, force, device):
    from erasekit.evaluation.prompt_file import score_prompt_file

    result = score_prompt_file(
        model,
        artifacts,
        prompts,
        rows_out=rows,
        out_dir=out,
        steps=steps,
        guidance=guidance,
        batch_size=batch_size,
        judge=judge,
        force=force,
        device=device,
    )
    if out is not None:
        from erasekit.files import atomic_write_bytes

        atomic_write_bytes(Path(out) / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def human_table(result: dict) -> str:
    """The protocol's numbers as a small text table (erased, base, ratio)."""
    base, ratios = result.get("base", {}), result.get("ratios", {})
    names = "+".join(a["method"] for a in result.get("artifacts", [])) or "(no artifact)"
    lines = [
        f"ShapesWorld: erasing {result['erased']} ({result['domain']}) with {names} on {result['model']}",
        f"{'metric':<12}{'erased':>9}{'base':>9}{'ratio':>8}   erased 95 % interval (Wilson), successes/n",
    ]
    labels = {"ua": "UA", "synonym_ua": "synonym UA", "ira": "IRA", "cra": "CRA", "fid": "FID"}
    intervals, counts = result.get("intervals") or {}, result.get("counts") or {}
    for key, label in labels.items():
        digits = 2 if key == "fid" else 3
        row = f"{label:<12}{_fmt(result.get(key), digits):>9}{_fmt(base.get(key), digits):>9}"
        row += f"{_fmt(ratios.get(key), 2):>8}"
        if intervals.get(key):
            low, high = intervals[key]
            row += f"   [{low:.2f}, {high:.2f}]  {counts[key][0]}/{counts[key][1]}"
        lines.append(row)
    cached = " (base cached)" if base.get("cached") else ""
    n = result.get("n", {})
    lines.append(
        f"{sum(n.values()) if n else '?'} images per model; {result['wall_seconds']:.1f} s wall{cached}"
        + (f"; run folder {result['out_dir']}" if result.get("out_dir") else "")
    )
    for name, record in (result.get("attacks") or {}).items():
        if isinstance(record, dict) and "asr" in record:
            lines.append(f"attack {name}: ASR {_fmt(record['asr'])}")
    return "\n".join(lines)


def _human_prompts(result: dict) -> str:
    parts = [f"{d} {acc:.3f} ({result['counts'][d]} rows)" for d, acc in result["accuracy"].items()]
    accuracy = "; ".join(parts) or "no labelled rows"
    return f"{result['n']} prompts scored in {result['seconds']:.1f} s — accuracy: {accuracy}"
