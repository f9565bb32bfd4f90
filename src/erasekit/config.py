"""Typed method configs: field docstrings become CLI help; ``-o key=value`` overrides are type-checked."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

from erasekit.errors import ErasekitError


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                ):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_config(cls: type) -> list[dict[str, Any]]:
    """One entry per field: name, type, default, help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
        )
        out.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": default,
                "help": docs.get(f.name, ""),
            }
        )
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args and str(value) not in [str(a) for a in args]:
            raise ErasekitError(f"{key} must be one of {', '.join(map(str, args))}, not {value!r}.")
        return next(a for a in args if str(a) == str(value))
    if origin in (typing.Union, types.UnionType):
        if value in (None, "none", "None", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ErasekitError:
                continue
        raise ErasekitError(f"{key} expects {_type_name(tp)}, got {value!r}.")
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        inner = args[0] if args else str
        converted = [_convert(v.strip() if isinstance(v, str) else v, inner, key) for v in items]
        return tuple(converted) if origin is tuple else converted
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ErasekitError(f"{key} expects true or false, got {value!r}.")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if tp is not str and isinstance(value, bool):  # JSON true is not the number 1
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ErasekitError(f"{key} expects {tp.__name__}, got {value!r}.") from None
    return value


def presets_of(cls: type) -> dict[str, dict[str, Any]]:
    """The named presets of config class ``cls`` (``PRESETS`` class variable), "default" always first.

    A preset is a named set of field values (``paper``: the paper's / reference code's defaults;
    ``shapesworld``: tuned on the shipped ShapesWorld model). The dataclass defaults are the
    "default" preset. The chosen name is stored in the config's ``preset`` field and so in the manifest.
    """
    declared = dict(getattr(cls, "PRESETS", {}) or {})
    return {"default": declared.pop("default", {}), **declared}


def preset_values(cls: type, name: Any) -> dict[str, Any]:
    """Field values of preset ``name`` of ``cls`` ({} for None or "default"); unknown names raise."""
    if name is None:
        return {}
    presets = presets_of(cls)
    if str(name) not in presets:
        raise ErasekitError(
            f"{cls.__name__} has no preset {name!r}; choose from: {', '.join(presets)} (-o preset=NAME)."
        )
    if "preset" not in {f.name for f in dataclasses.fields(cls)}:
        raise ErasekitError(f"{cls.__name__} takes no presets; drop preset={name}.")
    return dict(presets[str(name)])


def build_config(
    cls: type,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    model_preset: str | None = None,
    **fixed: Any,
) -> Any:
    """A ``cls`` instance from defaults, then a preset, then a JSON file, then ``key=value`` overrides.

    ``preset=NAME`` (in the file, an override or ``fixed``) selects one of :func:`presets_of`; its
    values sit under everything given explicitly, so ``-o preset=paper -o lr=1e-4`` keeps ``lr=1e-4``.
    ``model_preset`` is the preset the model recommends (its data source's ``preset``: ``shapesworld``
    for ShapesWorld models); it applies when none is given and ``cls`` has a preset of that name.
    Build configs with presets through this function: ``Config(preset="paper")`` records the name but
    does not apply the preset's values.
    """
    values: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ErasekitError(f"Config file {path} not found; pass a JSON file of config fields.")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ErasekitError(
                f"Config file {path} is not valid JSON (line {error.lineno}); fix it."
            ) from None
        if not isinstance(loaded, dict):
            raise ErasekitError(f"Config file {path} must hold a JSON object of config fields.")
        values.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ErasekitError(f"Override {item!r} is not key=value; write e.g. -o steps=200.")
        key, raw = item.split("=", 1)
        values[key.strip()] = raw.strip()
    values.update(fixed)
    if "preset" not in values and model_preset is not None and model_preset in presets_of(cls):
        values["preset"] = model_preset
    values = {**preset_values(cls, values.get("preset")), **values}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ErasekitError(
                f"{cls.__name__} has no field {key!r}; valid fields: {', '.join(sorted(names))}."
            )
    converted = {k: _convert(v, hints[k], k) for k, v in values.items()}
    try:
        return cls(**converted)
    except ErasekitError:
        raise
    except (TypeError, ValueError) as error:
        raise ErasekitError(f"Invalid {cls.__name__}: {error}.") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
