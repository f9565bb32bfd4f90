"""One self-contained HTML page from evaluation run folders: grids, metric table, trade-off plot, costs.

A run folder is what ``erasekit evaluate … --out RUN_DIR`` writes (:mod:`erasekit.evaluation.shapesworld`)::

    RUN_DIR/results.json          metrics of the erased model, "base" (same keys), "ratios", "artifacts"
                                  (method, cost), "settings", optional "attacks" (name -> ASR record)
    RUN_DIR/manifest.jsonl        one row per image: id, group (target/synonym/retain), prompt, seed, file
    RUN_DIR/predictions.jsonl     the judge's prediction per row
    RUN_DIR/images/<id>.png
    RUN_DIR/base/…                the same for the base model
    RUN_DIR/preset-<name>.json    real-model preset records (optional)

Every piece is optional: a missing file shows as a note or a dash, never as an error, so a report can
be made from a half-finished run. Images and matplotlib plots are embedded as base64 PNGs, so the page
is a single file that opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from erasekit.errors import ErasekitError

METRICS: tuple[tuple[str, str, bool], ...] = (
    # key, label, higher is better
    ("ua", "UA", True),
    ("synonym_ua", "synonym UA", True),
    ("ira", "IRA", True),
    ("cra", "CRA", True),
    ("fid", "FID", False),
)
GROUPS: tuple[tuple[str, str], ...] = (
    ("target", "target prompts (name the erased concept)"),
    ("synonym", "synonym prompts"),
    ("retain", "retain prompts (other concepts)"),
)
CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 24px; } h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 16px; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; font-size: 13px; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
table.grid td { text-align: center; padding: 2px; border: none; }
table.grid th { background: none; border: none; font-weight: normal; text-align: right; }
table.grid img { width: 72px; height: 72px; image-rendering: pixelated; border: 3px solid #ddd; }
table.grid img.found { border-color: #c0392b; } table.grid img.clear { border-color: #27ae60; }
.caption { font-size: 12px; color: #555; }
.cell-caption { font-size: 10px; color: #555; max-width: 80px; overflow: hidden; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; border-radius: 4px; }
.better { color: #1e7b34; } .worse { color: #b03a2e; }
img.plot { max-width: 640px; border: 1px solid #eee; }
"""


# ---- reading runs ----------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _rows_by_id(folder: Path) -> dict[str, dict]:
    """Manifest rows of a generated folder, with predictions merged in where present."""
    rows = {r["id"]: dict(r) for r in _read_jsonl(folder / "manifest.jsonl") if "id" in r}
    for prediction in _read_jsonl(folder / "predictions.jsonl"):
        if prediction.get("id") in rows:
            rows[prediction["id"]]["prediction"] = prediction.get("prediction")
        elif "id" in prediction:
            rows[prediction["id"]] = dict(prediction)
    return rows


def load_run(folder: str | os.PathLike) -> dict[str, Any]:
    """Everything the report shows of one run folder; missing pieces are recorded in ``notes``."""
    path = Path(folder)
    if not path.is_dir():
        raise ErasekitError(
            f"Run folder {path} not found; pass folders written by `erasekit evaluate --out`."
        )
    results = _read_json(path / "results.json")
    notes = []
    if not isinstance(results, dict):
        notes.append("results.json is missing or unreadable: no metrics for this run.")
        results = {}
    rows, base_rows = _rows_by_id(path), _rows_by_id(path / "base")
    if not rows:
        notes.append("No manifest.jsonl: no images for this run.")
    if not base_rows:
        notes.append("No base/ images: grids show the erased model only.")
    presets = [p for p in (_read_json(f) for f in sorted(path.glob("preset-*.json"))) if isinstance(p, dict)]
    artifacts = results.get("artifacts") or []
    # The protocol records {"method", ...} per artifact; a prompt-file run records method names.
    methods = [a.get("method", "?") if isinstance(a, dict) else str(a) for a in artifacts]
    name = "+".join(methods) if methods else ("base" if results else path.name)
    return {
        "folder": path,
        "name": name,
        "label": f"{name} — {results.get('erased', '?')}" if results else path.name,
        "results": results,
        "rows": rows,
        "base_rows": base_rows,
        "presets": presets,
        "notes": notes,
    }


# ---- HTML pieces -----------------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _esc(value)


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _image_uri(file: Path, max_side: int = 256) -> str | None:
    from PIL import Image

    try:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if max(image.size) > max_side:  # real-model images: keep the page small
                image.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except OSError:
        return None
    return _png_data_uri(buffer.getvalue())


def _cell(folder: Path, row: dict | None, domain: str | None, erased: str | None) -> str:
    if row is None or "file" not in row:
        return '<td class="missing">missing</td>'
    uri = _image_uri(folder / row["file"])
    if uri is None:
        return '<td class="missing">missing</td>'
    prediction = (row.get("prediction") or {}).get(domain) if domain else None
    verdict = ""
    if prediction is not None or (row.get("prediction") and domain):
        verdict = "found" if prediction == erased else "clear"
    caption = f"judge: {prediction}" if row.get("prediction") and domain else ""
    title = _esc(f"{row.get('prompt', '')} (seed {row.get('seed', '?')})")
    return (
        f'<td><img class="{verdict}" src="{uri}" title="{title}" alt="{title}">'
        f'<div class="cell-caption">{_esc(caption)}</div></td>'
    )


def _grids(run: dict, per_group: int) -> str:
    results, rows, base_rows = run["results"], run["rows"], run["base_rows"]
    erased, domain = results.get("erased"), results.get("domain")
    parts = []
    for group, title in GROUPS:
        ids = [rid for rid, r in rows.items() if r.get("group") == group] or [
            rid for rid, r in base_rows.items() if r.get("group") == group
        ]
        ids = sorted(ids)[:per_group]
        if not ids:
            continue
        prompts = "".join(
            f'<td class="cell-caption">{_esc((rows.get(i) or base_rows.get(i) or {}).get("prompt", ""))}</td>'
            for i in ids
        )
        lines = [f"<tr><th></th>{prompts}</tr>"]
        if base_rows:
            cells = "".join(_cell(run["folder"] / "base", base_rows.get(i), domain, erased) for i in ids)
            lines.append(f"<tr><th>before</th>{cells}</tr>")
        if rows:
            cells = "".join(_cell(run["folder"], rows.get(i), domain, erased) for i in ids)
            lines.append(f"<tr><th>after</th>{cells}</tr>")
        parts.append(
            f'<h3>{_esc(title)}</h3><table class="grid" data-group="{group}">{"".join(lines)}</table>'
        )
    if not parts:
        return '<p class="note">No images to show.</p>'
    legend = (
        '<p class="caption">Red frame: the judge finds the erased concept; green: it does not. '
        "Before = base model, after = erased model; same prompt and seed in each column.</p>"
    )
    return legend + "".join(parts)


def _metric_table(runs: Sequence[dict]) -> str:
    header = "".join(f"<th>{label}</th><th>base</th><th>ratio</th>" for _, label, _ in METRICS)
    lines = [
        f'<table id="metrics"><tr><th class="name">erasure</th><th class="name">concept</th>{header}</tr>'
    ]
    for run in runs:
        results = run["results"]
        if not any(key in results for key, _, _ in METRICS):
            continue
        base, ratios = results.get("base") or {}, results.get("ratios") or {}
        cells = []
        for key, _, higher in METRICS:
            value, base_value = results.get(key), base.get(key)
            css = ""
            if (
                isinstance(value, (int, float))
                and isinstance(base_value, (int, float))
                and value != base_value
            ):
                css = "better" if (value > base_value) == higher else "worse"
            cells.append(
                f'<td class="{css}">{_fmt(value)}</td><td>{_fmt(base_value)}</td><td>{_fmt(ratios.get(key), 2)}</td>'
            )
        lines.append(
            f'<tr><td class="name">{_esc(run["name"])}</td><td class="name">{_esc(results.get("erased", "?"))}</td>{"".join(cells)}</tr>'
        )
    lines.append("</table>")
    return "".join(lines)


def _attack_table(runs: Sequence[dict]) -> str:
    lines = []
    for run in runs:
        for name, record in (run["results"].get("attacks") or {}).items():
            if not isinstance(record, dict):
                continue
            budget = ", ".join(f"{k}={v}" for k, v in (record.get("budget") or {}).items())
            lines.append(
                f'<tr><td class="name">{_esc(run["name"])}</td>'
                f'<td class="name">{_esc(run["results"].get("erased", ""))}</td><td class="name">{_esc(name)}</td>'
                f"<td>{_fmt(record.get('asr'))}</td><td>{_fmt(record.get('asr_before'))}</td>"
                f'<td>{_fmt(record.get("attempts"))}</td><td class="name">{_esc(budget)}</td>'
                f"<td>{_esc(','.join(str(x) for x in record.get('seeds') or []))}</td><td>{_fmt(record.get('seconds'), 1)}</td></tr>"
            )
    if not lines:
        return ""
    head = (
        '<h2>Robustness attacks</h2><p class="caption">ASR: share of attempts in which the judge finds the '
        'erased concept (lower is more robust); "before" is the same prompts without the attack.</p>'
        '<table id="attacks"><tr><th class="name">erasure</th><th class="name">concept</th>'
        '<th class="name">attack</th><th>ASR</th>'
        '<th>before</th><th>attempts</th><th class="name">budget</th><th>seeds</th><th>seconds</th></tr>'
    )
    return head + "".join(lines) + "</table>"


def _cost_of(run: dict) -> dict[str, Any]:
    """Sum the costs of a run's artifacts (from results.json, else from the artifact's own manifest)."""
    totals: dict[str, Any] = {"seconds": None, "peak_memory_bytes": None, "artifact_bytes": None}
    for artifact in run["results"].get("artifacts") or []:
        if not isinstance(artifact, dict):
            continue
        cost = artifact.get("cost")
        if not isinstance(cost, dict) and artifact.get("path"):
            manifest = _read_json(Path(str(artifact["path"])).with_suffix(".json"))
            cost = manifest.get("cost") if isinstance(manifest, dict) else None
        for key in totals:
            if isinstance(cost, dict) and isinstance(cost.get(key), (int, float)):
                totals[key] = (totals[key] or 0) + cost[key]
    return totals


def _cost_table(runs: Sequence[dict]) -> str:
    lines = [
        '<table id="costs"><tr><th class="name">erasure</th><th class="name">concept</th><th>erase time (s)</th>'
        "<th>peak memory (MiB)</th>"
        "<th>artifact size (KiB)</th><th>evaluation wall time (s)</th></tr>"
    ]
    for run in runs:
        if not run["results"]:
            continue
        cost = _cost_of(run)
        memory = cost["peak_memory_bytes"] / 2**20 if cost["peak_memory_bytes"] is not None else None
        size = cost["artifact_bytes"] / 2**10 if cost["artifact_bytes"] is not None else None
        lines.append(
            f'<tr><td class="name">{_esc(run["name"])}</td><td class="name">{_esc(run["results"].get("erased", ""))}</td>'
            f"<td>{_fmt(cost['seconds'], 2)}</td><td>{_fmt(memory, 1)}</td>"
            f"<td>{_fmt(size, 1)}</td><td>{_fmt(run['results'].get('wall_seconds'), 1)}</td></tr>"
        )
    lines.append("</table>")
    return "".join(lines)


def _preset_tables(runs: Sequence[dict]) -> str:
    parts = []
    for run in runs:
        for preset in run["presets"]:
            metrics = {
                k: v for k, v in (preset.get("metrics") or {}).items() if not isinstance(v, (list, dict))
            }
            pins = preset.get("pins") or {}
            pinned = {k: v for k, v in pins.items() if not isinstance(v, (list, dict))}
            cells = "".join(
                f'<tr><td class="name">{_esc(k)}</td><td>{_fmt(v)}</td></tr>'
                for k, v in {**metrics, **pinned}.items()
            )
            parts.append(
                f"<h3>{_esc(run['name'])}: preset {_esc(preset.get('preset'))} v{_esc(preset.get('preset_version'))}</h3>"
                f'<table class="preset">{cells}</table>'
            )
    return ("<h2>Real-model presets</h2>" + "".join(parts)) if parts else ""


def tradeoff_plot(runs: Sequence[dict]) -> bytes | None:
    """PNG bytes: UA (x) against retain accuracy (IRA ●, CRA ▲) per erasure, base as a grey star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in runs if isinstance(r["results"].get("ua"), (int, float))]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(run["name"] for run in points))  # one colour per method
    for run in points:
        results = run["results"]
        color = colors[methods.index(run["name"]) % len(colors)]
        if isinstance(results.get("ira"), (int, float)):
            axes.scatter(results["ua"], results["ira"], color=color, marker="o", s=60, alpha=0.8)
        if isinstance(results.get("cra"), (int, float)):
            axes.scatter(results["ua"], results["cra"], color=color, marker="^", s=60, alpha=0.8)
        base = results.get("base") or {}
        if isinstance(base.get("ua"), (int, float)) and isinstance(base.get("ira"), (int, float)):
            axes.scatter(base["ua"], base["ira"], color="grey", marker="*", s=120)
    for i, method in enumerate(methods):
        concepts = sorted({str(r["results"].get("erased", "?")) for r in points if r["name"] == method})
        label = f"{method} ({', '.join(concepts)})" if len(", ".join(concepts)) <= 24 else method
        axes.scatter([], [], color=colors[i % len(colors)], marker="s", s=60, label=label)
    axes.scatter([], [], color="black", marker="o", s=40, label="IRA")
    axes.scatter([], [], color="black", marker="^", s=40, label="CRA")
    axes.scatter([], [], color="grey", marker="*", s=120, label="base model")
    axes.set_xlabel("UA — erased concept removed (higher is better)")
    axes.set_ylabel("retain accuracy (higher is better)")
    axes.set_xlim(-0.05, 1.05)
    axes.set_ylim(-0.05, 1.05)
    axes.grid(alpha=0.3)
    figure.legend(fontsize=7, loc="outside right upper")
    axes.set_title("Erasure vs. retention (one point per erasure)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


# ---- the page --------------------------------------------------------------------------------------------
def build_report(
    run_dirs: Sequence[str | os.PathLike], *, title: str = "erasekit evaluation report", per_group: int = 8
) -> str:
    """The report's HTML text for ``run_dirs`` (in the order given)."""
    if not run_dirs:
        raise ErasekitError("Pass at least one run folder written by `erasekit evaluate --out`.")
    from erasekit import __version__
    from erasekit.evaluation.memorization_suite import html_table as memorization_table

    runs = [load_run(d) for d in run_dirs]
    plot = tradeoff_plot(runs)
    plot_html = (
        f'<img class="plot" id="tradeoff" alt="trade-off plot" src="{_png_data_uri(plot)}">'
        if plot
        else '<p class="note">No UA/retain numbers to plot.</p>'
    )
    sections = []
    for i, run in enumerate(runs):
        notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in run["notes"])
        settings = run["results"].get("settings") or {}
        facts = ", ".join(f"{k}={v}" for k, v in settings.items())
        sections.append(
            f'<section class="erasure" id="run-{i}"><h2>{_esc(run["label"])}</h2>'
            f'<p class="caption">{_esc(run["folder"])}{" — " + _esc(facts) if facts else ""}</p>'
            f"{notes}{_grids(run, per_group)}</section>"
        )
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"
        f'<p class="caption">erasekit {__version__}, {created}, {len(runs)} run(s).</p>'
        f'<h2>Metrics</h2><p class="caption">Erased model, base model and ratio (erased / base). UA and '
        f"synonym UA: share of images without the erased concept; IRA/CRA: retain accuracy in and across "
        f"domains; FID: retain images vs. renders (lower is better).</p>{_metric_table(runs)}"
        f"<h2>Trade-off</h2>{plot_html}"
        f"{_attack_table(runs)}"
        f"<h2>Cost</h2>{_cost_table(runs)}"
        f"{memorization_table(runs)}"
        f"{_preset_tables(runs)}"
        f"{''.join(sections)}</body></html>"
    )


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, **options: Any) -> Path:
    """Write the report atomically to ``out``; returns its path."""
    text = build_report(run_dirs, **options)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
