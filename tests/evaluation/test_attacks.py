"""Attacks: ASR arithmetic, budgets and seeds recorded, the search lowers its loss, the model is untouched."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.errors import ErasekitError
from erasekit.evaluation.attacks import attack_suite, available_attacks, run_attack
from erasekit.evaluation.attacks.common import generate_from_prompts
from erasekit.evaluation.attacks.concept_vector import concept_direction, paired_prompts
from erasekit.evaluation.attacks.prompt_opt import with_prefix

FAST = {
    "synonym": {"steps": 2, "prompts_per_synonym": 1},
    "prompt_opt": {
        "steps": 3,
        "candidates": 4,
        "images": 2,
        "timesteps": 1,
        "eval_prompts": 2,
        "sample_steps": 2,
    },
    "concept_vector": {"steps": 2, "pairs": 1, "prompts": 2, "scales": (2.0,)},
}


class BrightJudge:
    """Stand-in judge: an image 'shows a star' when its mean brightness is above a threshold."""

    version = "bright-standin"

    def __init__(self, threshold: float):
        self.threshold = threshold

    def predict(self, images: torch.Tensor) -> dict[str, list]:
        means = images.mean((1, 2, 3)).tolist()
        return {
            "shape": ["star" if m > self.threshold else "circle" for m in means],
            "color": ["red"] * len(means),
            "style": ["plain"] * len(means),
        }


def test_asr_is_the_share_of_judged_hits_and_records_budget_and_seeds(tiny_backend):
    seeds = [3, 4]
    images_probe = tiny_backend.sample(["a pentagram"], [3], steps=2, guidance=3.0)
    judge = BrightJudge(float(images_probe.mean()))  # a threshold inside the range of generated images
    record = run_attack("synonym", tiny_backend, "star", budget=FAST["synonym"], seeds=seeds, judge=judge)
    prompts = [p for p in record["prompts"] for _ in seeds]
    # Recount independently: generation through the public sampler must give the same images.
    images = tiny_backend.sample(prompts, seeds * len(record["prompts"]), steps=2, guidance=3.0)
    expected = sum(m > judge.threshold for m in images.mean((1, 2, 3)).tolist())
    assert record["attempts"] == len(prompts) == 4  # 2 synonyms x 1 prompt x 2 seeds
    assert record["successes"] == expected
    assert record["asr"] == pytest.approx(expected / len(prompts))
    assert record["seeds"] == seeds and record["budget"]["steps"] == 2
    assert record["judge"] == "bright-standin"
    assert all("star" not in p.replace(",", "").split() for p in record["prompts"])
    assert {"pentagram", "starburst"} == set(record["asr_by_synonym"])


@pytest.mark.parametrize("name", ["synonym", "prompt_opt", "concept_vector"])
def test_every_attack_bounds_asr_and_leaves_the_model_untouched(tiny_backend, name):
    fingerprint = tiny_backend.fingerprint()
    always = run_attack(name, tiny_backend, "star", budget=FAST[name], seeds=[0], judge=BrightJudge(-1.0))
    never = run_attack(name, tiny_backend, "star", budget=FAST[name], seeds=[0], judge=BrightJudge(2.0))
    assert always["asr"] == 1.0 and never["asr"] == 0.0
    assert always["model_fingerprint"] == fingerprint == tiny_backend.fingerprint()
    json.dumps(always)  # the record is JSON as it stands


def test_prompt_opt_lowers_the_denoising_loss_monotonically(tiny_backend):
    record = run_attack(
        "prompt_opt",
        tiny_backend,
        "red",
        budget={**FAST["prompt_opt"], "steps": 6},
        seeds=[0],
        judge=BrightJudge(2.0),
    )
    trace = record["loss_trace"]
    assert len(trace) == 7
    assert all(b <= a for a, b in zip(trace, trace[1:]))
    assert record["loss_after"] < record["loss_before"]
    assert len(record["adversarial_token_ids"]) == 3
    assert record["asr_before"] == record["asr"] == 1.0  # the stand-in always says "red"


def test_with_prefix_inserts_after_bos_and_keeps_eos(tiny_backend):
    ids = tiny_backend.token_ids(["a red star"])
    eos = tiny_backend.tokenizer.eos_token_id
    out = with_prefix(ids, torch.tensor([7, 8]), eos)
    assert out.shape == ids.shape
    assert out[0, 0] == ids[0, 0] and out[0, 1:3].tolist() == [7, 8]
    assert out[0, 3:6].tolist() == ids[0, 1:4].tolist() and eos in out[0].tolist()
    with pytest.raises(ErasekitError, match="too long"):
        with_prefix(ids, torch.arange(ids.shape[1] - 2), eos)


def test_concept_direction_is_the_mean_paired_difference(tiny_backend):
    with_c, without = paired_prompts("square", 2, torch.Generator().manual_seed(0))
    assert (
        len(with_c) == 2 * 7
        and all("square" in p for p in with_c)
        and not any("square" in p for p in without)
    )
    direction = concept_direction(tiny_backend, with_c, without, batch_size=5)
    with torch.no_grad():
        expected = (tiny_backend.encode_prompts(with_c) - tiny_backend.encode_prompts(without)).mean(0)
    torch.testing.assert_close(direction, expected, rtol=1e-5, atol=1e-6)


def test_concept_vector_scale_zero_equals_plain_generation(tiny_backend):
    probe = tiny_backend.sample(["a blue circle"], [0], steps=2, guidance=3.0)
    judge = BrightJudge(float(probe.mean()))
    record = run_attack(
        "concept_vector", tiny_backend, "star", budget=FAST["concept_vector"], seeds=[0, 1], judge=judge
    )
    prompts = [p for p in record["prompts"] for _ in range(2)]
    images = generate_from_prompts(tiny_backend, prompts, [0, 1] * 2, steps=2, guidance=3.0)
    plain = tiny_backend.sample(prompts, [0, 1] * 2, steps=2, guidance=3.0)
    torch.testing.assert_close(images, plain)
    expected = sum(m > judge.threshold for m in plain.mean((1, 2, 3)).tolist()) / 4
    assert record["asr_before"] == pytest.approx(expected)
    assert set(record["asr_by_scale"]) == {"0.0", "2.0"} and record["best_scale"] == 2.0


def test_suite_and_input_errors(tiny_backend):
    suite = attack_suite(
        tiny_backend, "star", BrightJudge(2.0), budget="small", attacks=["synonym"], seeds=[0]
    )
    assert list(suite) == ["synonym"] and suite["synonym"]["budget"]["prompts_per_synonym"] == 2
    assert available_attacks() == ["synonym", "prompt_opt", "concept_vector", "image_prompt"]
    with pytest.raises(ErasekitError, match="Unknown attack"):
        run_attack("nope", tiny_backend, "star", judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="unknown ShapesWorld concept"):
        run_attack("synonym", tiny_backend, "dragon", judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="Unknown budget"):
        run_attack("synonym", tiny_backend, "star", budget="huge", judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="no field"):
        run_attack("synonym", tiny_backend, "star", budget={"bogus": 1}, judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="at least one seed"):
        run_attack("synonym", tiny_backend, "star", seeds=[], judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="at least 1"):
        run_attack("prompt_opt", tiny_backend, "star", budget={"n_tokens": 0}, judge=BrightJudge(0))
    with pytest.raises(ErasekitError, match="scales"):
        run_attack("concept_vector", tiny_backend, "star", budget={"scales": ()}, judge=BrightJudge(0))


def test_attack_cli(tmp_path):
    from erasekit.cli.app import app
    from erasekit.cli.main import _register
    from erasekit.world.judge import Judge, JudgeConfig, JudgeNet, save_judge

    _register()
    torch.manual_seed(0)
    save_judge(Judge(JudgeNet(JudgeConfig()), JudgeConfig()), tmp_path / "judge")
    runner = CliRunner()
    args = [
        "attack",
        "synonym",
        "--model",
        "tiny",
        "--concept",
        "star",
        "--seeds",
        "0",
        "--judge",
        str(tmp_path / "judge"),
    ]
    fast = ["-o", "steps=1", "-o", "prompts_per_synonym=1", "--json", "--out", str(tmp_path / "asr.json")]
    result = runner.invoke(app, args + fast)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= record["asr"] <= 1.0 and record["attempts"] == 2 and record["artifacts"] == []
    assert json.loads((tmp_path / "asr.json").read_text())["asr"] == record["asr"]
    bad = runner.invoke(app, ["attack", "nope", "--model", "tiny", "--concept", "star"])
    assert bad.exit_code == 2 and "Unknown attack" in bad.output
    bad = runner.invoke(app, args + ["-o", "steps"])
    assert bad.exit_code == 2 and "key=value" in bad.output
