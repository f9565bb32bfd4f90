"""Print the ShapesWorld method table of ``benchmarks/README.md`` from the committed JSON results.

    python benchmarks/summarize.py                  # every results/shapesworld_<method>_<concept>.json
    python benchmarks/summarize.py --methods uce,spm
    python benchmarks/summarize.py --results benchmarks/results/user-heldout --matrix   # concepts × methods

One row per (method, concept): UA, synonym UA, IRA and CRA with their ratios to the base model, the
attack success rates (synonym / prompt optimisation after its search / concept vector), erase wall time
and peak memory, and whether the issue-4 bar (UA ≥ 0.9, synonym UA ≥ 0.8, IRA ≥ 0.9 × base,
CRA ≥ 0.95 × base) is met. Numbers are read, never typed: the table is only as true as the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ("fewshot", "spm", "itd", "abo", "uce", "esd")
CONCEPT_ORDER = ("star", "red", "striped", "heart", "blue", "dotted", "triangle", "purple", "checkered")
# Every ShapesWorld concept, shapes then colours then styles (the matrix's rows).
WORLD_CONCEPTS = (
    "circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond",
    "red", "green", "blue", "yellow", "purple", "orange", "white", "cyan",
    "plain", "striped", "dotted", "checkered", "gradient", "grid",
)  # fmt: skip
BAR_KEYS = (
    ("ua", "UA", 0.9, False),
    ("synonym_ua", "syn", 0.8, False),
    ("ira", "IRA", 0.9, True),
    ("cra", "CRA", 0.95, True),
)
ATTACKS = ("synonym", "prompt_opt", "concept_vector")


def meets_bar(record: dict) -> bool:
    m, r = record["metrics"], record["ratios"]
    return (
        m["ua"] >= 0.9
        and m["synonym_ua"] >= 0.8
        and (r.get("ira") or 0) >= 0.9
        and (r.get("cra") or 0) >= 0.95
    )


def _num(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def row(record: dict) -> str:
    m, r = record["metrics"], record["ratios"]
    attacks = record.get("attacks") or {}
    asr = " / ".join(_num(attacks.get(name, {}).get("asr")) for name in ATTACKS)
    load = record.get("machine", {}).get("load_average") or [None]
    cells = [
        record["method"],
        record["concept"],
        f"{_num(m['ua'])} {interval(record, 'ua')}",
        _num(m["synonym_ua"]),
        f"{_num(m['ira'])} ({_num(r.get('ira'))})",
        f"{_num(m['cra'])} ({_num(r.get('cra'))})",
        asr,
        f"{record['erase_seconds']:.1f}",
        f"{record['erase_peak_memory_bytes'] / 2**20:.0f}",
        "yes" if meets_bar(record) else "**no**",
        _num(load[0], 1),
    ]
    return "| " + " | ".join(cells) + " |"


def interval(record: dict, key: str) -> str:
    """The 95 % Wilson interval of a rate, when the run recorded one."""
    found = (record.get("evaluate") or {}).get("intervals", {}).get(key)
    return f"[{found[0]:.2f}, {found[1]:.2f}]" if found else "—"


def failures(record: dict) -> list[str]:
    """The bar's terms a run misses, e.g. ["UA 0.59"] (ratios for IRA/CRA)."""
    out = []
    for key, label, bar, relative in BAR_KEYS:
        value = (record["ratios"].get(key) or 0) if relative else record["metrics"][key]
        if value is None or value < bar:
            out.append(f"{label} {_num(value)}{'×' if relative else ''}")
    return out


def matrix(records: list[dict]) -> str:
    """Concepts × methods: ✓ where the bar is met, else the missed terms."""
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in records)]
    methods += sorted({r["method"] for r in records} - set(methods))
    by = {(r["method"], r["concept"]): r for r in records}
    lines = ["| concept | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for concept in WORLD_CONCEPTS:
        cells = []
        for method in methods:
            record = by.get((method, concept))
            cells.append(
                "not run"
                if record is None
                else ("✓" if meets_bar(record) else "✗ " + ", ".join(failures(record)))
            )
        lines.append(f"| {concept} | " + " | ".join(cells) + " |")
    met = {m: sum(meets_bar(by[(m, c)]) for c in WORLD_CONCEPTS if (m, c) in by) for m in methods}
    ran = {m: sum((m, c) in by for c in WORLD_CONCEPTS) for m in methods}
    lines.append("| **bar met** | " + " | ".join(f"{met[m]} / {ran[m]}" for m in methods) + " |")
    return "\n".join(lines)


def table(records: list[dict]) -> str:
    header = (
        "| method | concept | UA [95 % CI] | syn UA | IRA (÷ base) | CRA (÷ base) | ASR syn / opt / vec "
        "| erase s | peak MiB | bar | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(row(r) for r in records)])


def load(methods: list[str] | None, folder: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("shapesworld*_*_*.json"))]
    records = [r for r in records if methods is None or r["method"] in methods]

    def order(record: dict) -> tuple:
        m, c = record["method"], record["concept"]
        return (
            METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER),
            m,
            CONCEPT_ORDER.index(c) if c in CONCEPT_ORDER else len(CONCEPT_ORDER),
            c,
        )

    return sorted(records, key=order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--matrix", action="store_true", help="concepts × methods: bar met or what missed")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    records = load(methods, args.results)
    print(matrix(records) if args.matrix else table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
