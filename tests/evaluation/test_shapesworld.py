"""The ShapesWorld protocol end to end, with the real judge and an oracle "model" that renders its prompt.

The oracle parses the prompt's concept words (synonyms included) and renders them with the world
renderer, so the base model is perfect by construction; an artifact flips a weight that makes it drop
the star. That pins the protocol's numbers exactly: base UA 0, erased UA 1, IRA and CRA unchanged.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from erasekit.applying import apply, revert
from erasekit.artifacts import Artifact
from erasekit.backends.base import fingerprint_components
from erasekit.errors import ErasekitError
from erasekit.evaluation.prompt_file import score_prompt_file
from erasekit.evaluation.shapesworld import build_grid, evaluate_shapesworld
from erasekit.world import DOMAINS, SYNONYMS, render
from erasekit.world.judge import load_judge


def _words(concept: str) -> list[str]:
    return [concept, *SYNONYMS[concept]]


class OracleBackend:
    """Renders exactly what the prompt names; with ``unet.weight`` = 1 it never draws ``erased``."""

    name = "oracle"
    kind = "sd"

    def __init__(self, erased: str = "star"):
        self.unet = nn.Linear(1, 1, bias=False)
        self.unet.weight.data.zero_()
        self.components = {"unet": self.unet}
        self.erased = erased
        self.calls = 0

    def fingerprint(self) -> str:
        return fingerprint_components(self.components)

    def parse(self, prompt: str) -> dict[str, str | None]:
        found: dict[str, str | None] = {"shape": None, "color": None, "style": "plain"}
        for domain, concepts in DOMAINS.items():
            for concept in concepts:
                if any(re.search(rf"\b{re.escape(w)}\b", prompt) for w in _words(concept)):
                    found[domain] = concept
        return found

    def sample(self, prompts, seeds, *, steps, guidance, negative_prompt="", size=None):
        self.calls += 1
        out = []
        for prompt, seed in zip(prompts, seeds):
            labels = self.parse(prompt)
            if self.unet.weight.item() > 0.5 and self.erased in labels.values():
                labels["shape"] = labels["color"] = None  # the erased model draws an empty background
            if labels["shape"] is None or labels["color"] is None:
                labels["shape"] = labels["color"] = None
            out.append(
                render(
                    [labels["shape"]],
                    [labels["color"]],
                    [labels["style"]],
                    generator=torch.Generator().manual_seed(seed),
                )
            )
        return torch.cat(out)


def erase_artifact() -> Artifact:
    artifact = Artifact("oracle-erase")
    artifact.add_weight("unet.weight", torch.ones(1, 1), mode="delta")
    return artifact


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_grid_groups_and_seeds():
    grid = build_grid("star", seeds_per_prompt=2)
    groups = {g: [r for r in grid if r["group"] == g] for g in ("target", "synonym", "retain")}
    assert len(groups["target"]) == 16 and len(groups["synonym"]) == 8 and len(groups["retain"]) == 28
    assert all("star" in r["prompt"].split() for r in groups["target"])
    assert all(
        r["labels"]["shape"] == "star" and "star" not in r["prompt"].split() for r in groups["synonym"]
    )
    assert {r["prompt"].split()[2] for r in groups["synonym"]} == set(SYNONYMS["star"])
    assert {r["labels"]["shape"] for r in groups["retain"]} == set(DOMAINS["shape"]) - {"star"}
    assert all("star" not in r["prompt"] for r in groups["retain"])
    assert len({r["id"] for r in grid}) == len(grid) and len({r["seed"] for r in grid}) == len(grid)
    # other domains vary inside a group
    assert len({r["labels"]["color"] for r in groups["target"]}) == 8
    assert grid == build_grid("star", seeds_per_prompt=2)  # deterministic
    assert build_grid("star", seed=5)[0]["seed"] == 5


def test_heldout_grid_is_larger_with_other_seeds_and_combinations():
    from erasekit.evaluation.shapesworld import GRIDS

    default, heldout = build_grid("star", **GRIDS["default"]), build_grid("star", **GRIDS["heldout"])
    count = {g: sum(r["group"] == g for r in heldout) for g in ("target", "synonym", "retain")}
    assert count == {"target": 32, "synonym": 24, "retain": 56}
    assert len(heldout) > 2 * len(default) * 0.9  # about twice the images: one image moves a rate ~3 points
    assert not {r["seed"] for r in default} & {r["seed"] for r in heldout}
    # the target prompts are other combinations of colour and style than the default grid's
    default_targets = {r["prompt"] for r in default if r["group"] == "target"}
    heldout_targets = {r["prompt"] for r in heldout if r["group"] == "target"}
    assert len(heldout_targets - default_targets) >= len(heldout_targets) // 2
    with pytest.raises(ErasekitError, match="Unknown grid"):
        evaluate_shapesworld("tiny", None, "star", grid="huge")


def test_grid_for_colour_and_style_and_full():
    red = build_grid("red", seeds_per_prompt=1)
    assert all(r["labels"]["color"] == "red" for r in red if r["group"] != "retain")
    assert any("crimson" in r["prompt"] for r in red)
    full = build_grid("striped", seeds_per_prompt=1, full=True)
    # 8 shapes x 8 colours per concept; 1 target + 2 synonyms + 5 other styles
    assert len(full) == 64 * (1 + 2 + 5)
    with pytest.raises(ErasekitError, match="hexagon"):
        build_grid("hexagon")
    with pytest.raises(ErasekitError, match="seeds_per_prompt"):
        build_grid("star", seeds_per_prompt=0)


def test_protocol_on_the_oracle_gives_exact_numbers(judge, tmp_path):
    backend = OracleBackend()
    before = backend.fingerprint()
    result = evaluate_shapesworld(
        backend,
        [erase_artifact()],
        "star",
        out_dir=tmp_path / "run",
        steps=1,
        guidance=1.0,
        seeds_per_prompt=1,
        judge=judge,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert backend.fingerprint() == before  # the artifact was reverted
    base = result["base"]
    assert (base["ua"], base["synonym_ua"], base["ira"], base["cra"]) == (0.0, 0.0, 1.0, 1.0)
    assert (result["ua"], result["synonym_ua"], result["ira"], result["cra"]) == (1.0, 1.0, 1.0, 1.0)
    assert result["ratios"]["ira"] == 1.0 and result["ratios"]["cra"] == 1.0
    # retain images are identical in both runs, so the FID vs renders is identical too
    assert result["fid"] == base["fid"] and result["fid"] >= 0
    for key in ("ua", "synonym_ua", "ira", "cra", "fid", "seconds"):
        assert key in result and key in base
    assert result["grid"] == build_grid("star", seeds_per_prompt=1)
    assert result["settings"]["steps"] == 1 and result["erased"] == "star" and result["domain"] == "shape"

    run = tmp_path / "run"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["ua"] == result["ua"] and on_disk["base"]["ira"] == base["ira"]
    n = len(result["grid"])
    assert (run / "manifest.jsonl").read_text().count("\n") == n
    assert (run / "base" / "manifest.jsonl").read_text().count("\n") == n
    assert len(list((run / "images").glob("*.png"))) == n
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert all(p["prediction"]["shape"] is None for p in predictions if p["group"] == "target")


def test_base_results_are_cached_by_model_and_grid(judge, tmp_path):
    backend = OracleBackend()
    kwargs = dict(steps=1, guidance=1.0, seeds_per_prompt=1, judge=judge, cache_dir=tmp_path, progress=False)
    first = evaluate_shapesworld(backend, [erase_artifact()], "star", **kwargs)
    calls = backend.calls
    second = evaluate_shapesworld(backend, [erase_artifact()], "star", **kwargs)
    assert first["base"]["cached"] is False and second["base"]["cached"] is True
    assert backend.calls - calls == calls // 2  # only the erased model was generated again
    assert {k: second["base"][k] for k in ("ua", "ira", "cra", "fid")} == {
        k: first["base"][k] for k in ("ua", "ira", "cra", "fid")
    }
    other = evaluate_shapesworld(backend, [erase_artifact()], "circle", **kwargs)  # another grid
    assert other["base"]["cached"] is False
    # CPU results depend on the thread count in their last bits: another count is another cache entry
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        more = evaluate_shapesworld(backend, [erase_artifact()], "star", **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert more["base"]["cached"] is False and more["settings"]["torch_threads"] == threads + 1
    assert first["settings"]["torch_threads"] == threads


def test_an_already_applied_artifact_is_refused(judge, tmp_path):
    backend = OracleBackend()
    artifact = erase_artifact()
    apply(artifact, backend)
    try:
        with pytest.raises(ErasekitError, match="already has artifacts"):
            evaluate_shapesworld(backend, [], "star", judge=judge, cache_dir=tmp_path, progress=False)
    finally:
        revert(backend)


def test_protocol_runs_on_the_tiny_pipeline(tiny_backend, judge, tmp_path):
    """A real (random) SD pipeline at 16x16: the plumbing works and every number is in range."""
    result = evaluate_shapesworld(
        tiny_backend,
        [],
        "red",
        steps=2,
        guidance=2.0,
        seeds_per_prompt=1,
        judge=judge,
        use_cache=False,
        out_dir=tmp_path,
        progress=False,
    )
    for key in ("ua", "synonym_ua", "ira", "cra"):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == result["base"][key]  # no artifact: the erased model is the base
    assert result["fid"] > 0


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_score_prompt_file_accuracy_and_rows(judge, tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "prompt": "a red star on a plain background",
                "seed": 1,
                "labels": {"shape": "star", "color": "red"},
            },
            {"prompt": "a blue heart on a grid background", "seed": 2, "labels": {"shape": "heart"}},
            {"prompt": "a dotted background", "seed": 3, "labels": {"shape": None}},
            {"prompt": "a green ring", "seed": 4},
        ],
    )
    result = score_prompt_file(
        OracleBackend(),
        [],
        prompts,
        tmp_path / "rows.jsonl",
        judge=judge,
        steps=1,
        guidance=1.0,
        progress=False,
    )
    assert result["n"] == 4
    assert result["accuracy"] == {"shape": 1.0, "color": 1.0}  # no row labels a style: omitted
    assert result["counts"] == {"shape": 3, "color": 1}
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["prediction"]["shape"] is None and rows[2]["correct"] == {"shape": True}

    erased = score_prompt_file(
        OracleBackend(), [erase_artifact()], prompts, judge=judge, steps=1, guidance=1.0, progress=False
    )
    assert erased["accuracy"]["shape"] == pytest.approx(2 / 3)  # the star is gone


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "line 2: not valid JSON"),
        (
            {"prompt": "a star", "seed": 1, "labels": {"shape": "hexagon"}},
            "line 2: unknown ShapesWorld shape",
        ),
        ({"prompt": "a star", "seed": -1}, "line 2: 'seed'"),
        ({"prompt": "a star", "seed": 1, "labels": {"size": "big"}}, "line 2: unknown label domain"),
        ({"prompt": "a star", "seed": 1, "labels": "star"}, "line 2: 'labels'"),
        ({"seed": 1}, "line 2: 'prompt'"),
        ({"prompt": "a star", "seed": 1, "colour": "red"}, "line 2: unknown keys"),
        ([1, 2], "line 2: expected an object"),
    ],
)
def test_bad_prompt_rows_name_the_row(judge, tmp_path, line, match):
    prompts = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a red star", "seed": 0}, line])
    with pytest.raises(ErasekitError, match=match):
        score_prompt_file(OracleBackend(), [], prompts, judge=judge, progress=False)


def test_missing_prompt_file(judge, tmp_path):
    with pytest.raises(ErasekitError, match="not found"):
        score_prompt_file(OracleBackend(), [], tmp_path / "nope.jsonl", judge=judge)


def test_default_sampling_reads_the_model_manifest(tmp_path):
    from types import SimpleNamespace

    from erasekit.evaluation.shapesworld import default_sampling
    from erasekit.world.model import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, MANIFEST_NAME

    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"sampling": {"num_inference_steps": 7, "guidance_scale": 2.5}})
    )
    assert default_sampling(SimpleNamespace(name=str(tmp_path))) == (7, 2.5)
    fallback = (DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_GUIDANCE_SCALE)
    assert default_sampling(SimpleNamespace(name="tiny")) == fallback
    assert default_sampling(OracleBackend()) == fallback


class Crash(Exception):
    pass


def test_interrupted_evaluation_resumes_to_the_same_numbers(judge, tmp_path):
    kwargs = dict(steps=1, guidance=1.0, seeds_per_prompt=1, judge=judge, batch_size=4, progress=False)
    straight = evaluate_shapesworld(
        OracleBackend(),
        [erase_artifact()],
        "star",
        out_dir=tmp_path / "a",
        cache_dir=tmp_path / "ca",
        **kwargs,
    )
    crashing = OracleBackend()
    original = crashing.sample

    def sample(*args, **kw):
        if crashing.unet.weight.item() > 0.5 and crashing.calls >= 9:  # midway through the erased run
            raise Crash
        return original(*args, **kw)

    crashing.sample = sample
    with pytest.raises(Crash):
        evaluate_shapesworld(
            crashing, [erase_artifact()], "star", out_dir=tmp_path / "b", cache_dir=tmp_path / "cb", **kwargs
        )
    assert crashing.unet.weight.item() == 0.0  # reverted despite the crash
    crashing.sample = original
    resumed = evaluate_shapesworld(
        crashing, [erase_artifact()], "star", out_dir=tmp_path / "b", cache_dir=tmp_path / "cb", **kwargs
    )
    keys = ("ua", "synonym_ua", "ira", "cra", "fid", "cra_by_domain", "n")
    assert {k: resumed[k] for k in keys} == {k: straight[k] for k in keys}
    assert {k: resumed["base"][k] for k in keys} == {k: straight["base"][k] for k in keys}
    assert (tmp_path / "b" / "manifest.jsonl").read_text().count("\n") == len(straight["grid"])


@pytest.mark.slow
def test_uce_erases_star_from_the_shipped_model(tmp_path):
    """Issue 3's bar on the shipped model: UA >= 90 %, IRA >= 90 % of base, CRA >= 95 % of base.

    Slow (about a minute of CPU: 104 images at 25 steps) and needs the shipped weights, so it runs
    only with ``-m slow``.
    """
    from erasekit.cli.demo import run_demo
    from erasekit.world.model import SHIPPED_MODEL_DIR

    if not (SHIPPED_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("the shipped ShapesWorld model is not in this checkout")
    result = run_demo("star", tmp_path, cache_dir=tmp_path / "cache", progress=False)["evaluation"]
    assert result["ua"] >= 0.9
    assert result["ira"] >= 0.9 * result["base"]["ira"]
    assert result["cra"] >= 0.95 * result["base"]["cra"]
