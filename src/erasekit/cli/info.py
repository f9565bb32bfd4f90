"""``erasekit methods`` (what can erase, with every config field) and ``erasekit env`` (what runs it).

``methods`` imports method modules and the target table only, never diffusers or transformers, so it
answers in the time it takes to import torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Annotated, Any

import typer

from erasekit.cli.app import app, emit, user_errors

_JSON = typer.Option("--json", help="Print one JSON object instead of text.")


def methods_table() -> dict[str, Any]:
    """Every registered method (name, paper, config fields) and every parameter target."""
    from erasekit.backends.targets import describe_targets
    from erasekit.config import describe_config, presets_of
    from erasekit.methods import available_methods, get_method

    rows = []
    for name in available_methods():
        method = get_method(name)
        rows.append(
            {
                "name": name,
                "paper": method.paper,
                "config": method.config_cls.__name__,
                "fields": describe_config(method.config_cls),
                "presets": presets_of(method.config_cls),
            }
        )
    return {"methods": rows, "targets": describe_targets()}


@app.command()
@user_errors
def methods(as_json: Annotated[bool, _JSON] = False) -> None:
    """List erasure methods with their papers and config fields (set them with -o key=value)."""
    emit(methods_table(), as_json, _human_methods)


def _human_methods(table: dict[str, Any]) -> str:
    lines = []
    for row in table["methods"]:
        lines.append(f"{row['name']}  —  {row['paper']}")
        for preset, values in row.get("presets", {}).items():
            settings = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "the field defaults below"
            lines.append(f"    preset {preset}: {settings}")
        for field in row["fields"]:
            lines.append(f"    {field['name']}: {field['type']} = {field['default']!r}")
            if field["help"]:
                lines.append(f"        {field['help']}")
        lines.append("")
    lines.append("parameter targets:")
    width = max(len(name) for name in table["targets"])
    lines += [f"    {name:<{width}}  {desc}" for name, desc in table["targets"].items()]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def environment_report() -> dict[str, Any]:
    """Versions, platform, device, threads and a check of the offline CLIP tokenizer."""
    import torch

    import erasekit
    from erasekit.errors import ErasekitError

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    try:
        from erasekit.backends.tokenizer import find_bpe_file, load_clip_tokenizer

        tokenizer = load_clip_tokenizer()
        ids = tokenizer("a photo of a red star").input_ids
        clip = {
            "ok": True,
            "vocab_size": len(tokenizer),
            "vocab_file": str(find_bpe_file()),
            "sample_ids": ids,
        }
    except ErasekitError as error:
        clip = {"ok": False, "error": str(error)}
    return {
        "versions": {
            "erasekit": erasekit.__version__,
            "torch": torch.__version__,
            "diffusers": _version("diffusers"),
            "transformers": _version("transformers"),
            "safetensors": _version("safetensors"),
            "accelerate": _version("accelerate"),
            "open-clip-torch": _version("open_clip_torch"),
        },
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", ""),
        "clip_tokenizer": clip,
        "models": _zoo_models(),
    }


def _zoo_models() -> dict[str, str]:
    """The named models of the zoo (``--model NAME``) with their descriptions."""
    from erasekit.zoo import ZOO

    return {name: entry.description for name, entry in sorted(ZOO.items())}


@app.command()
@user_errors
def env(as_json: Annotated[bool, _JSON] = False) -> None:
    """Show versions, platform, device and threads, and check the offline CLIP tokenizer."""
    emit(environment_report(), as_json, _human_env)


def _human_env(report: dict[str, Any]) -> str:
    lines = [f"{name:<16}{version}" for name, version in report["versions"].items()]
    lines += [
        f"{'python':<16}{report['python']}",
        f"{'platform':<16}{report['platform']}",
        f"{'device':<16}{report['device']}",
        f"{'threads':<16}{report['torch_threads']} torch / {report['cpu_count']} cpus",
    ]
    clip = report["clip_tokenizer"]
    status = f"ok ({clip['vocab_size']} tokens)" if clip["ok"] else f"BROKEN: {clip['error']}"
    lines.append(f"{'clip tokenizer':<16}{status}")
    lines.append("models (--model NAME, or a folder / file / cached hub id):")
    lines += [f"    {name:<12}{description}" for name, description in report.get("models", {}).items()]
    return "\n".join(lines)
