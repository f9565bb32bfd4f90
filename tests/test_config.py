"""build_config: defaults, then a JSON file, then -o overrides; every bad input is a one-line error."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from erasekit.config import build_config, config_to_dict, describe_config, presets_of
from erasekit.errors import ErasekitError
from erasekit.methods import available_methods, get_method


@dataclass(frozen=True)
class ExampleConfig:
    steps: int = 10
    """Optimisation steps."""
    lr: float = 1e-3
    """Learning
    rate."""
    variant: Literal["x", "u"] = "x"
    """Which parameters: x (cross-attention) or u (the rest)."""
    rank: Literal[1, 4] = 1
    """Adapter rank."""
    use_templates: bool = False
    """Use prompt templates."""
    limit: int | None = None
    """Optional cap."""
    targets: tuple[str, ...] = ("cross_attn_kv",)
    """Parameter targets."""
    undocumented: str = "a"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ErasekitError("steps must be at least 1.")


def write(tmp_path, data) -> str:
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_defaults():
    assert build_config(ExampleConfig) == ExampleConfig()


def test_file_then_overrides_win(tmp_path):
    file = write(tmp_path, {"steps": 20, "lr": 0.5, "variant": "u", "targets": ["text_mlp", "text_attn"]})
    config = build_config(ExampleConfig, file)
    assert (config.steps, config.lr, config.variant) == (20, 0.5, "u")
    assert config.targets == ("text_mlp", "text_attn")  # JSON list -> the field's tuple
    config = build_config(ExampleConfig, file, ["steps=30", "variant=x"])
    assert (config.steps, config.lr, config.variant) == (30, 0.5, "x")


def test_override_conversions():
    config = build_config(
        ExampleConfig,
        overrides=[
            " steps = 3 ",
            "lr=1e-2",
            "rank=4",
            "use_templates=yes",
            "limit=7",
            "targets=text_mlp, text_attn",
            "undocumented=b=c",  # only the first '=' splits
        ],
    )
    assert config == ExampleConfig(
        steps=3,
        lr=0.01,
        rank=4,
        use_templates=True,
        limit=7,
        targets=("text_mlp", "text_attn"),
        undocumented="b=c",
    )
    assert build_config(ExampleConfig, overrides=["limit=none"]).limit is None
    assert build_config(ExampleConfig, overrides=["use_templates=off"]).use_templates is False
    assert isinstance(build_config(ExampleConfig, overrides=["rank=4"]).rank, int)


def test_fixed_values_win_over_everything(tmp_path):
    file = write(tmp_path, {"steps": 20})
    assert build_config(ExampleConfig, file, ["steps=30"], steps=40).steps == 40


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["steps=abc"], "steps expects int"),
        (["steps=1.5"], "steps expects int"),
        (["steps="], "steps expects int"),
        (["lr=fast"], "lr expects float"),
        (["use_templates=maybe"], "true or false"),
        (["limit=many"], "limit"),
        (["variant=z"], "one of x, u"),
        (["rank=2"], "one of 1, 4"),
        (["no_such_field=1"], "no field 'no_such_field'"),
        (["steps"], "key=value"),
        (["steps=0"], "at least 1"),  # the dataclass's own validation, still one line
    ],
)
def test_bad_overrides(overrides, needle):
    with pytest.raises(ErasekitError, match=needle) as info:
        build_config(ExampleConfig, overrides=overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"steps": "ten"}, "steps expects int"),
        ({"steps": True}, "steps expects int"),  # JSON true is not the number 1
        ({"steps": 2.5}, "steps expects int"),
        ({"variant": "z"}, "one of"),
        ({"typo_field": 1}, "no field 'typo_field'"),
    ],
)
def test_bad_files(tmp_path, content, needle):
    with pytest.raises(ErasekitError, match=needle):
        build_config(ExampleConfig, write(tmp_path, content))


def test_missing_file(tmp_path):
    with pytest.raises(ErasekitError, match="not found"):
        build_config(ExampleConfig, tmp_path / "absent.json")


def test_whole_number_float_in_file_is_an_int(tmp_path):
    config = build_config(ExampleConfig, write(tmp_path, {"steps": 5.0}))
    assert config.steps == 5 and isinstance(config.steps, int)


def test_describe_config_gives_type_default_and_docstring_help():
    rows = {row["name"]: row for row in describe_config(ExampleConfig)}
    assert list(rows) == [
        "steps",
        "lr",
        "variant",
        "rank",
        "use_templates",
        "limit",
        "targets",
        "undocumented",
    ]
    assert rows["steps"] == {"name": "steps", "type": "int", "default": 10, "help": "Optimisation steps."}
    assert rows["lr"]["help"] == "Learning rate."  # whitespace folded
    assert rows["variant"]["type"] == "{x,u}"
    assert rows["undocumented"]["help"] == ""


def test_config_is_frozen_and_serialisable():
    config = build_config(ExampleConfig, overrides=["targets=a,b"])
    with pytest.raises(FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]
    assert config_to_dict(config)["targets"] == ["a", "b"]
    assert json.loads(json.dumps(config_to_dict(config)))["variant"] == "x"


# ---- shipped example configs ----------------------------------------------------------------------------
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_builds_with_its_method(path):
    """examples/configs/<method>.json names only real fields, with valid values, of <method>'s config."""
    config_cls = get_method(path.stem).config_cls
    config = build_config(config_cls, path)
    assert set(json.loads(path.read_text())) <= {f.name for f in dataclasses.fields(config_cls)}
    assert isinstance(config, config_cls)


def test_every_method_has_an_example_config():
    """Adding a method means adding examples/configs/<name>.json (see README, "Adding a method")."""
    assert {"uce", "esd"} <= {p.stem for p in EXAMPLES}
    assert set(available_methods()) <= {p.stem for p in EXAMPLES}


# ---- named presets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PresetConfig:
    preset: str = "default"
    """Named defaults."""
    steps: int = 10
    """Steps."""
    lr: float = 1e-3
    """Learning rate."""
    variant: Literal["x", "u"] = "x"
    """Variant."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {"steps": 1000, "lr": 1e-5, "variant": "u"}}


def test_preset_values_apply_under_explicit_ones(tmp_path):
    assert build_config(PresetConfig, overrides=["preset=paper"]) == PresetConfig(
        preset="paper", steps=1000, lr=1e-5, variant="u"
    )
    # an explicit override beats the preset, the rest of the preset stays
    assert build_config(PresetConfig, overrides=["preset=paper", "steps=3"]) == PresetConfig(
        preset="paper", steps=3, lr=1e-5, variant="u"
    )
    # order does not matter, and a file's values beat the preset too (the preset may sit in the file)
    assert build_config(PresetConfig, overrides=["lr=0.5", "preset=paper"]).lr == 0.5
    file = write(tmp_path, {"preset": "paper", "variant": "x"})
    assert build_config(PresetConfig, file) == PresetConfig(preset="paper", steps=1000, lr=1e-5, variant="x")
    assert build_config(PresetConfig, file, ["preset=default"]) == PresetConfig(variant="x")
    assert list(presets_of(PresetConfig)) == ["default", "paper"]


@pytest.mark.parametrize("cls, needle", [(PresetConfig, "no preset 'papr'"), (ExampleConfig, "no preset")])
def test_unknown_preset_is_a_one_line_error(cls, needle):
    with pytest.raises(ErasekitError, match=needle) as info:
        build_config(cls, overrides=["preset=papr"])
    assert "\n" not in str(info.value) and "preset=NAME" in str(info.value)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_methods_presets_build(name):
    """Each declared preset names real fields with valid values of that method's config."""
    config_cls = get_method(name).config_cls
    for preset, values in presets_of(config_cls).items():
        config = build_config(config_cls, overrides=[f"preset={preset}"])
        assert config.preset == preset
        assert all(getattr(config, key) == value for key, value in values.items())


@pytest.mark.parametrize("name", ["uce", "esd", "spm"])
def test_issue13_methods_have_paper_and_shapesworld_presets(name):
    assert {"paper", "shapesworld"} <= set(presets_of(get_method(name).config_cls))


def test_preset_is_recorded_in_the_manifest(tiny_backend):
    from erasekit.concepts import ConceptSpec
    from erasekit.methods import run_method

    method = get_method("uce")
    config = build_config(method.config_cls, overrides=["preset=paper", "lamb=0.25"])
    artifact = run_method(method, tiny_backend, ConceptSpec.from_lists(["star"]), config, seed=0)
    recorded = artifact.manifest["config"]
    assert recorded["preset"] == "paper" and recorded["tokens"] == "from_last"
    assert recorded["lamb"] == 0.25  # the explicit value, not the preset's 0.5
    assert recorded["preserve_unconditional"] is True


def test_the_model_recommends_a_preset_that_applies_only_where_none_is_named():
    from erasekit.methods.esd import ESDConfig
    from erasekit.zoo import recommended_preset

    assert recommended_preset("shapes") == "shapesworld" and recommended_preset("tiny") is None
    config = build_config(ESDConfig, None, [], model_preset="shapesworld")
    assert (config.preset, config.iterations, config.lr) == ("shapesworld", 250, 1e-3)
    named = build_config(ESDConfig, None, ["preset=paper"], model_preset="shapesworld")
    assert (named.preset, named.iterations) == ("paper", 1000)
    # the re-solve is the ShapesWorld tuning, not the paper's ESD
    assert (config.variant, config.preserve_weight) == ("kv", 1.0)
    assert (named.variant, named.preserve_weight) == ("x", 0.0)
    assert build_config(ESDConfig, None, ["lr=2e-3"], model_preset="shapesworld").lr == 2e-3
    # a preset the method does not have is no error: the method's defaults hold
    from erasekit.methods.ear import EARConfig

    assert build_config(EARConfig, None, [], model_preset="shapesworld").preset == "default"
