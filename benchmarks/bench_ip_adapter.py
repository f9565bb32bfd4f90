"""Image prompts on the shipped ShapesWorld model: does the shipped IP-Adapter draw what the image shows?

    nice -n 5 python benchmarks/bench_ip_adapter.py

Everything goes through the stock diffusers path: ``pipe.load_ip_adapter(folder, subfolder="",
weight_name=…, image_encoder_folder="image_encoder", local_files_only=True)`` and
``pipe(prompt=TEXT, ip_adapter_image=PIL, num_images_per_prompt=K)``, one call per prompt image.

* gate: renders of a red star (one per background style, seeded) with the empty prompt; the judge
  must name star and red in ≥ 90 % of the generations;
* grid: every shape × colour once (style cycling), K seeds each, empty prompt; judge accuracy per
  domain against the prompt image's labels; also at the neutral prompt "a shape";
* text-only floor: the empty prompt without an image (what the model draws anyway).

Writes ``benchmarks/results/ip_adapter_shapesworld.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from erasekit.artifacts import environment_versions, now_iso

RESULTS = Path(__file__).resolve().parent / "results" / "ip_adapter_shapesworld.json"


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _generate(pipe, image, prompt: str, seeds: list[int], steps: int, guidance: float) -> torch.Tensor:
    kwargs = {"ip_adapter_image": _pil(image)} if image is not None else {}
    return (
        pipe(
            prompt=prompt,
            num_images_per_prompt=len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pt",
            **kwargs,
        )
        .images.float()
        .clamp(0, 1)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", default=None, help="adapter folder (default: the shipped one)")
    parser.add_argument("--seeds", type=int, default=4, help="generations per prompt image")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from erasekit.world import ip_adapter as ipa
    from erasekit.world.concepts import COLORS, SHAPES, STYLES
    from erasekit.world.judge import load_judge
    from erasekit.world.model import load_shipped_pipeline
    from erasekit.world.render import render_labels

    started = time.time()
    judge = load_judge()
    pipe = ipa.load_into_pipeline(load_shipped_pipeline(), args.adapter)
    seeds = list(range(1000, 1000 + args.seeds))
    out: dict = {
        "benchmark": "ip_adapter_shapesworld",
        "created": now_iso(),
        "settings": vars(args) | {"out": str(args.out)},
    }

    # gate: a red star on every background style, 2x the seeds
    gate_labels = [{"shape": "star", "color": "red", "style": s} for s in STYLES]
    gate_images = render_labels(gate_labels, generator=torch.Generator().manual_seed(7))
    gate_seeds = list(range(2000, 2000 + 2 * args.seeds))
    generated = torch.cat(
        [_generate(pipe, x, "", gate_seeds, args.steps, args.guidance) for x in gate_images]
    )
    predictions = judge.predict(generated)
    star = [p == "star" for p in predictions["shape"]]
    red = [p == "red" for p in predictions["color"]]
    out["gate_red_star"] = {
        "images": len(star),
        "star": sum(star) / len(star),
        "red": sum(red) / len(red),
        "star_and_red": sum(a and b for a, b in zip(star, red)) / len(star),
        "bar": 0.9,
    }
    print(json.dumps({"gate_red_star": out["gate_red_star"]}), flush=True)

    # grid: every shape x colour, style cycling
    labels = [
        {"shape": s, "color": c, "style": STYLES[(i + j) % len(STYLES)]}
        for i, s in enumerate(SHAPES)
        for j, c in enumerate(COLORS)
    ]
    prompts = render_labels(labels, generator=torch.Generator().manual_seed(11))
    for text in ("", "a shape"):
        generated = torch.cat([_generate(pipe, x, text, seeds, args.steps, args.guidance) for x in prompts])
        expanded = [lab for lab in labels for _ in seeds]
        acc = judge.accuracy(generated, expanded)
        preds = judge.predict(generated)
        per_shape = {
            s: sum(p == s for p, lab in zip(preds["shape"], expanded) if lab["shape"] == s)
            / (len(COLORS) * len(seeds))
            for s in SHAPES
        }
        per_color = {
            c: sum(p == c for p, lab in zip(preds["color"], expanded) if lab["color"] == c)
            / (len(SHAPES) * len(seeds))
            for c in COLORS
        }
        out[f"grid_prompt_{text or 'empty'}"] = {
            "images": len(expanded),
            "accuracy": {k: round(v, 4) for k, v in acc.items()},
            "shape_accuracy_by_shape": per_shape,
            "color_accuracy_by_color": per_color,
        }
        print(
            json.dumps({f"grid_prompt_{text or 'empty'}": out[f"grid_prompt_{text or 'empty'}"]["accuracy"]}),
            flush=True,
        )

    # floor: no image at all
    # scale 0 is bit-identical to the adapter-free model (tests/world/test_ip_adapter.py)
    pipe.set_ip_adapter_scale(0.0)
    blank = _generate(pipe, prompts[0], "", list(range(3000, 3032)), args.steps, args.guidance)
    preds = judge.predict(blank)
    out["floor_empty_prompt_scale0"] = {
        "images": len(blank),
        "star": sum(p == "star" for p in preds["shape"]) / len(blank),
        "red": sum(p == "red" for p in preds["color"]) / len(blank),
        "most_common_shape": max(set(preds["shape"]), key=preds["shape"].count),
    }
    out["adapter_info"] = json.loads((Path(args.adapter or ipa.IP_ADAPTER_DIR) / ipa.INFO_NAME).read_text())
    out["seconds"] = round(time.time() - started, 1)
    out["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    out["versions"] = environment_versions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps({"floor": out["floor_empty_prompt_scale0"], "seconds": out["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
