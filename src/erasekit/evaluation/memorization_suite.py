"""``erasekit evaluate --suite memorization``: secret memorisation of a code LM before and after artifacts.

The numbers come from :mod:`erasekit.evaluation.memorization` (MA, EL_n, greedy / sampled extraction in
file context, held-out perplexity, completion of held-out functions). The forget set is ``--forget``
(or the model's own, ``model``); secrets not in it (collateral), unseen secrets, held-out files and
functions come from the model's data source when it has them (the shipped code-lm does).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from erasekit.errors import ErasekitError

SUITE = "memorization"


def check_lm_artifact(artifact: Any, backend: Any, label: str) -> None:
    """One-line errors for an artifact made for another kind of model or another tokenizer."""
    made_for = artifact.manifest.get("backend")
    if made_for != "causal_lm":
        raise ErasekitError(
            f"{label} was made for a {made_for or 'diffusion'} model, not a causal LM; pass an artifact from a code-LM method (codeeraser, ga, ga_kl)."
        )
    recorded = artifact.manifest.get("unlearning", {}).get("tokenizer_fingerprint")
    if recorded and recorded != backend.tokenizer_fingerprint():
        raise ErasekitError(
            f"Tokenizer mismatch: {label} was made with another tokenizer than this model's; use the model (and tokenizer) it was made from."
        )


def _without(samples: list, forget: list) -> list:
    taken = {(s.text, s.spans) for s in forget}
    return [s for s in samples if (s.text, s.spans) not in taken]


def evaluate_memorization(
    model: str,
    artifacts: list[str],
    forget: str | None,
    *,
    samples: int = 8,
    el_n: int = 10,
    seed: int = 0,
    force: bool = False,
    device: str = "cpu",
    out: Path | None = None,
) -> dict:
    from erasekit.applying import apply, revert
    from erasekit.artifacts import Artifact
    from erasekit.evaluation.memorization import memorization_report
    from erasekit.secrets import load_forget_file
    from erasekit.zoo import load_model

    loaded = [(path, Artifact.load(path)) for path in artifacts]
    forget_samples = load_forget_file(forget) if forget and forget != "model" else None
    backend = load_model(model, device=device)
    if getattr(backend, "kind", None) != "causal_lm":
        raise ErasekitError(
            f"--suite {SUITE} measures code LMs; pass --model code-lm or a Hugging Face causal-LM folder."
        )
    for path, artifact in loaded:
        check_lm_artifact(artifact, backend, f"Artifact {Path(path).name}")
    source = backend.data_source
    if forget_samples is None:
        forget_samples = source.forget_samples() if hasattr(source, "forget_samples") else []
        if not forget_samples:
            raise ErasekitError(
                "This model brings no forget set; pass --forget FILE (JSONL or code files with secrets)."
            )
    inputs = {
        "forget": forget_samples,
        "other": _without(source.planted_samples(), forget_samples)
        if hasattr(source, "planted_samples")
        else [],
        "unseen": _without(source.unseen_samples(), forget_samples)
        if hasattr(source, "unseen_samples")
        else [],
        "heldout_texts": source.heldout_texts() if hasattr(source, "heldout_texts") else [],
        "functions": source.heldout_functions() if hasattr(source, "heldout_functions") else [],
    }
    started = time.perf_counter()
    result: dict[str, Any] = {
        "suite": SUITE,
        "model": model,
        "artifacts": [str(p) for p, _ in loaded],
        "forget": forget or "model",
        "erased": f"secrets of {Path(forget).name if forget and forget != 'model' else 'the model forget set'}",
        "data_source": source.describe(),
        "seed": seed,
        "sampled_extraction": {"samples": samples, "temperature": 1.0, "top_k": 40},
        "base": memorization_report(backend, **inputs, n=el_n, samples=samples, seed=seed),
    }
    if loaded:
        try:
            for _path, artifact in loaded:
                apply(artifact, backend, force=force)
            result["after"] = memorization_report(backend, **inputs, n=el_n, samples=samples, seed=seed)
        finally:
            revert(backend)
    result["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, out / "results.json")
    return result


def human(result: dict) -> str:
    lines = [f"memorization of {result['model']} (forget set: {result['forget']})"]
    for label in ("base", "after"):
        report = result.get(label)
        if not report:
            continue
        f, o, u = report["forget"], report["other_secrets"], report["unseen_secrets"]
        lines.append(
            f"  {label:6s} forget MA {f['ma']} EL10 {f.get('el10')} extract {f['greedy_extraction']}"
            f" | other MA {o.get('ma')} | unseen MA {u.get('ma')}"
            f" | held-out ppl {report.get('heldout_perplexity')} | completion {report.get('completion_accuracy')}"
        )
    return "\n".join(lines)


_ROWS = (
    ("forget", "ma", "forget MA"),
    ("forget", "el10", "forget EL10"),
    ("forget", "greedy_extraction", "forget greedy extraction"),
    ("forget", "sampled_extraction_at8", "forget sampled extraction (8)"),
    ("other_secrets", "ma", "other secrets MA"),
    ("other_secrets", "greedy_extraction", "other secrets extraction"),
    ("unseen_secrets", "ma", "unseen secrets MA"),
    (None, "heldout_perplexity", "held-out perplexity"),
    (None, "completion_accuracy", "held-out completion"),
)


def html_table(runs: list[dict]) -> str:
    """The report's memorisation section: one column pair (base, after) per memorization run."""
    from html import escape

    mem = [r for r in runs if r.get("results", {}).get("suite") == SUITE]
    if not mem:
        return ""

    def value(report, group, key):
        if not report:
            return "–"
        v = report.get(key) if group is None else (report.get(group) or {}).get(key)
        return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else escape(str(v))

    head = "".join(f'<th colspan="2">{escape(str(r["folder"]))}</th>' for r in mem)
    sub = "".join("<th>base</th><th>after</th>" for _ in mem)
    body = ""
    for group, key, label in _ROWS:
        cells = "".join(
            f"<td>{value(r['results'].get('base'), group, key)}</td><td>{value(r['results'].get('after'), group, key)}</td>"
            for r in mem
        )
        body += f"<tr><th>{escape(label)}</th>{cells}</tr>"
    return (
        '<h2 id="memorization">Memorisation (code LMs)</h2><p class="caption">Secrets scored in file context: MA '
        "(greedy next-token accuracy on the secret), EL10, verbatim extraction from the prefix (greedy; any of "
        "8 samples at top-k 40); other/unseen secrets show collateral and the never-seen level.</p>"
        f'<table class="metrics"><tr><th></th>{head}</tr><tr><th></th>{sub}</tr>{body}</table>'
    )
