"""``erasekit erase``: run one erasure method on a model and save its artifact.

Cheap checks (method name, concepts, config, paths) run before the model is loaded, so a typo costs
milliseconds, not a model load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from erasekit.cli.app import app, emit, user_errors
from erasekit.errors import ErasekitError

# A method whose config has this field reads user images (few-shot methods); `--images` fills it.
IMAGES_FIELD = "images_dir"
# A method whose config has this field unlearns a forget set (code-LM methods); `--forget` fills it.
FORGET_FIELD = "forget_file"


@app.command()
@user_errors
def erase(
    method: Annotated[str, typer.Argument(help="Method name (see `erasekit methods`).", show_default=False)],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="`tiny`, `shapes`, a diffusers folder, a .safetensors file or a cached hub id."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Artifact path stem: writes OUT.safetensors and OUT.json."),
    ],
    concept: Annotated[
        list[str] | None,
        typer.Option("--concept", help="Concept to erase (repeat for several).", show_default=False),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="What the concept should become: one for all concepts, or one per --concept.",
            show_default=False,
        ),
    ] = None,
    default_anchor: Annotated[
        bool,
        typer.Option(
            "--default-anchor/--no-default-anchor",
            help="Methods that map a concept onto an anchor (uce, abo, spm): with no --anchor, use the model's data source's (ShapesWorld: the next concept of its kind); --no-default-anchor keeps the method's own rule (empty prompt / the prompt without the concept).",
        ),
    ] = True,
    preserve: Annotated[
        list[str] | None,
        typer.Option("--preserve", help="Concept to keep intact (repeatable).", show_default=False),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="object or style (chooses the prompt templates).")
    ] = "object",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="JSON file of config fields (see `erasekit methods`).", show_default=False
        ),
    ] = None,
    override: Annotated[
        list[str] | None,
        typer.Option("-o", "--override", help="Config override key=value (repeatable); wins over --config."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for everything random in the method.")] = 0,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Folder of example images, for methods that learn from images."),
    ] = None,
    forget: Annotated[
        Path | None,
        typer.Option(
            "--forget",
            help='Forget set of code-LM methods (codeeraser, ga, ga_kl): JSONL ({"text", optional "spans"/"secrets"}), a code file or a folder.',
            show_default=False,
        ),
    ] = None,
    retain: Annotated[
        Path | None,
        typer.Option(
            "--retain",
            help="File of prompts whose images must stay (.txt one per line, .csv prompt column, .jsonl); replaces the model's own retain source.",
            show_default=False,
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Allow loading a pickled .ckpt/.bin model (runs its code!)."),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Erase concepts from a model with METHOD and save the result as an artifact.

    What you leave out (preserve concepts, prompt templates, retain prompts) comes from the model's
    data source (ShapesWorld's captions for `shapes`, packaged COCO captions for other SD models) or
    from --retain; the manifest records what was filled in and from where.
    """
    from erasekit.concepts import ConceptSpec
    from erasekit.config import build_config
    from erasekit.methods import get_method

    method_obj = get_method(method)
    if forget is not None and not concept:  # code-LM methods erase the forget set's secrets, not a concept
        concept = [f"secrets in {forget.name}"]
    concepts = ConceptSpec.from_lists(concept or [], anchor or [], preserve or [], kind=kind)
    fixed = {}
    field_names = {f.name for f in dataclasses.fields(method_obj.config_cls)}
    if images is not None:
        if IMAGES_FIELD not in field_names:
            raise ErasekitError(f"Method {method} does not learn from images; leave out --images.")
        if not images.is_dir():
            raise ErasekitError(f"Images folder {images} not found; pass a folder of example images.")
        fixed[IMAGES_FIELD] = str(images)
    if forget is not None:
        if FORGET_FIELD not in field_names:
            raise ErasekitError(
                f"Method {method} takes no forget file; leave out --forget (it erases --concept)."
            )
        fixed[FORGET_FIELD] = str(forget)
    from erasekit.zoo import recommended_preset

    as_given = build_config(method_obj.config_cls, config, override or [], **fixed)
    method_config = build_config(
        method_obj.config_cls, config, override or [], model_preset=recommended_preset(model), **fixed
    )
    # the model's preset applies only where the user named none: record where the values came from
    preset_from_model = getattr(method_config, "preset", None) != getattr(as_given, "preset", None)
    if retain is not None and FORGET_FIELD not in field_names:  # code-LM methods read code files
        from erasekit.sources import read_captions

        read_captions(retain)  # a bad file fails here, before the model loads
    if out.is_dir():
        raise ErasekitError(
            f"--out {out} is a folder; pass a path stem such as {out / 'erased'} (writes .safetensors + .json)."
        )

    import torch

    from erasekit.methods import run_method
    from erasekit.zoo import load_model

    backend = load_model(model, retain=retain, allow_pickle=allow_pickle, device=device)
    artifact = run_method(
        method_obj, backend, concepts, method_config, seed=seed, default_anchors=default_anchor
    )
    if preset_from_model:
        artifact.manifest["preset_from"] = "model"
    try:
        tensor_path = artifact.save(out)
    except OSError as error:
        raise ErasekitError(
            f"Cannot write the artifact to {out} ({error.strerror}); pick a writable path."
        ) from None
    cost = artifact.manifest["cost"]
    summary = {
        "artifact": str(tensor_path),
        "manifest": str(tensor_path.with_suffix(".json")),
        "method": method,
        "model": model,
        "concepts": concepts.erase_texts,
        "seconds": cost["seconds"],
        "peak_memory_bytes": cost["peak_memory_bytes"],
        "artifact_bytes": cost["artifact_bytes"],
        "edited_parameters": len(artifact.manifest.get("weights", {})),
        "adapters": len(artifact.manifest.get("adapters", {})),
        "hooks": len(artifact.manifest.get("hooks", [])),
        "edited_values": int(sum(t.numel() for t in artifact.tensors.values())),
        "torch_threads": torch.get_num_threads(),
        "data_source": artifact.manifest.get("data_source", {}).get("name"),
        "completed_from_source": artifact.manifest["concepts"].get("completed", []),
    }
    training = artifact.manifest.get("training")
    if isinstance(training, dict) and training.get("verified") is not None:
        # a method that checks its own erasure (fewshot) records whether the kept attempt passed
        summary["verified"] = bool(training["verified"])
    emit(summary, as_json, _human)


def _human(s: dict) -> str:
    edits = f"{s['edited_parameters']} weight edits, {s['adapters']} adapters, {s['hooks']} hooks"
    return (
        f"erased {', '.join(s['concepts'])} with {s['method']} in {s['seconds']:.2f} s "
        f"(peak memory {s['peak_memory_bytes'] / 2**20:.1f} MiB)\n"
        f"artifact: {s['artifact']} ({s['artifact_bytes'] / 2**20:.2f} MiB; {edits})\n"
        f"manifest: {s['manifest']}"
        + (
            f"\nfrom the model's data source ({s['data_source']}): {', '.join(s['completed_from_source'])}"
            if s.get("completed_from_source")
            else ""
        )
        + (
            "\nnot verified: after every attempt the original model still recognised the concept in the"
            " check's samples, so the erasure may be partial; evaluate it, or raise -o epochs"
            if s.get("verified") is False
            else ""
        )
    )
