"""SPM parity: erasekit's membrane, gate and erasing target against the public code's, re-derived.

The reference is Con6924/SPM (``infer_spm.py``, ``src/models/spm.py``, ``src/configs/prompt.py``),
written again from its documented behaviour, not copied:

* facilitated transport (``calculate_matching_score``, metric ``clipcos_tokenuni``): per erased
  prompt c, m = max(cos(flatten(e_p), flatten(e_c)), |T(p) ∩ T(c)| / |T(c)|) with T the token ids
  minus the tokenizer's special tokens; the largest m over the erased prompts is the multiplier;
* the multiplier scales *every tensor of the SPM state dict* (down and up factors), so each layer
  adds (α/r) · (m U)(m D) x = m² (α/r) U D x, and the network keeps that multiplier for the whole
  pipeline call, so CFG's unconditional rows get the prompt's m² too;
* the erasing target (``_erase``): ε(x_t, c_n) − g (ε(x_t, c) − ε(x_t, c_n)), MSE to the adapted
  prediction, plus ``la_strength`` × the anchoring MSE.

Printed: γ parity (erasekit's gate vs m per prompt), the UNet output of erasekit's ``gate=reference``
vs an independent injection of the adapters with m² on every row, how far erasekit's default gate is
from the reference on the same batch, and the first training loss against the reference formula.

    python benchmarks/parity/spm.py --model shapes
    python benchmarks/parity/spm.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from erasekit.applying import apply, revert
from erasekit.artifacts import environment_versions
from erasekit.concepts import ConceptSpec
from erasekit.config import build_config
from erasekit.files import atomic_write_text
from erasekit.methods.spm import SPM, SPMConfig
from erasekit.zoo import load_model

PROMPTS = [
    "a star",
    "a red star on a striped background",
    "a blue circle",
    "a heart",
    "star",
    "a green square",
]


def reference_multiplier(backend, prompt: str, erased: list[str]) -> float:
    """max over erased prompts of max(clip cosine of the flattened embeddings, token union share)."""
    tokenizer = backend.tokenizer
    special = set(tokenizer.convert_tokens_to_ids(list(tokenizer.special_tokens_map.values())))
    with torch.no_grad():
        e_p = backend.encode_prompts([prompt]).float().flatten(1)
        e_c = backend.encode_prompts(erased).float().flatten(1)
    cos = torch.cosine_similarity(e_p, e_c, dim=-1)
    ids = backend.token_ids([prompt] + erased)
    prompt_set = set(ids[0].tolist()) - special
    shares = []
    for row in ids[1:]:
        c_set = set(row.tolist()) - special
        shares.append(len(prompt_set & c_set) / len(c_set))
    return float(torch.maximum(cos, torch.tensor(shares)).max())


def inject_reference(backend, artifact, multiplier: float) -> list:
    """The public layer: output + scale · up(down(x)) with both factors multiplied by ``multiplier``."""
    modules = backend.named_modules()
    handles = []
    for name, meta in artifact.manifest["adapters"].items():
        module = modules[name]
        down = artifact.tensors[f"adapters/{name}/down"].to(torch.float64) * multiplier
        up = artifact.tensors[f"adapters/{name}/up"].to(torch.float64) * multiplier
        scale = meta["scale"]

        def hook(mod, args, output, down=down, up=up, scale=scale):
            x = args[0].to(torch.float64)
            if isinstance(mod, nn.Conv2d):
                hidden = nn.functional.conv2d(
                    x, down, stride=mod.stride, padding=mod.padding, dilation=mod.dilation
                )
                delta = nn.functional.conv2d(hidden, up)
            else:
                delta = nn.functional.linear(nn.functional.linear(x, down), up)
            return output + (scale * delta).to(output.dtype)

        handles.append(module.register_forward_hook(hook))
    return handles


class RecordingBackend:
    """Delegates to a backend and records the inputs of every gradient-free batched UNet call."""

    def __init__(self, backend):
        self._backend = backend
        self.teacher_calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def predict_noise(self, latents, t, cond):
        if not torch.is_grad_enabled():
            self.teacher_calls.append((latents.detach().clone(), t, cond.detach().clone()))
        return self._backend.predict_noise(latents, t, cond)


@torch.no_grad()
def unet_batch(backend, prompt: str, t: int = 500):
    """[uncond; cond] UNet output at fixed noise, the prompt encoded through the text encoder."""
    cond = backend.encode_prompts([prompt])
    uncond = backend.encode_prompts([""])
    latents = backend.initial_latents([7, 7])
    return backend.predict_noise(latents, t, torch.cat([uncond, cond])).double()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="star")
    parser.add_argument("--iterations", type=int, default=20, help="training steps of the membrane checked")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backend = load_model(args.model)
    start = time.perf_counter()
    spec = ConceptSpec.from_lists([args.concept])
    # a short, strong training run so the membrane is far from zero (lr 1e-2), then one step for the loss
    config = build_config(
        SPMConfig, None, [f"iterations={args.iterations}", "gate=reference", "preserve_anchors=0"]
    )
    torch.manual_seed(0)
    artifact = SPM().erase(backend, spec, config)

    rows = []
    for prompt in PROMPTS:
        m = reference_multiplier(backend, prompt, [args.concept])
        handles = inject_reference(backend, artifact, m)
        try:
            reference = unet_batch(backend, prompt)
        finally:
            for handle in handles:
                handle.remove()
        base = unet_batch(backend, prompt)
        outputs = {}
        for mode in ("reference", "facilitated"):
            artifact.manifest["hooks"][0]["config"]["mode"] = mode
            apply(artifact, backend)
            try:
                outputs[mode] = unet_batch(backend, prompt)
            finally:
                revert(backend)
        effect = float((reference - base).norm())
        rows.append(
            {
                "prompt": prompt,
                "reference_multiplier": m,
                "reference_vs_erasekit_reference_gate": float((outputs["reference"] - reference).norm())
                / max(effect, 1e-30),
                "membrane_effect_norm": effect,
                "facilitated_vs_reference_effect": float((outputs["facilitated"] - reference).norm())
                / max(effect, 1e-30),
            }
        )

    # erasekit's gate value per prompt, read off the gate (facilitated: own γ per row)
    artifact.manifest["hooks"][0]["config"]["mode"] = "facilitated"
    gammas = []
    apply(artifact, backend)
    try:
        from erasekit.methods.spm import SPMGate

        gate = next(
            h.gate
            for module in backend.components["unet"].modules()
            for h in module._forward_hooks.values()
            if getattr(h, "gate", None) is not None and isinstance(h.gate, SPMGate)
        )
        for row, prompt in zip(rows, PROMPTS):
            unet_batch(backend, prompt)
            row["erasekit_gamma_prompt_row"] = float(gate.gamma[1])
            row["erasekit_gamma_uncond_row"] = float(gate.gamma[0])
            gammas.append(abs(float(gate.gamma[1]) - row["reference_multiplier"]))
    finally:
        revert(backend)

    # the first training loss against the reference's erase loss on the same inputs (U = 0 at step 0)
    recording = RecordingBackend(backend)
    one = build_config(
        SPMConfig, None, ["iterations=1", "preserve_anchors=0", "use_templates=false", "neutral=empty"]
    )
    torch.manual_seed(0)
    first = SPM().erase(recording, spec, one).manifest["training"]["first_loss"]
    x_t, t, batch = next(
        c for c in recording.teacher_calls if c[0].shape[0] >= 2 and c[2].shape[0] == c[0].shape[0]
    )
    with torch.no_grad():
        eps = backend.predict_noise(x_t[:2], t, batch[:2]).double()  # ε(x_t, c), ε(x_t, c_n) of the original
        e_c, e_n = eps[:1], eps[1:2]
        g = one.eta
        reference_loss = float(nn.functional.mse_loss(e_c, e_n - g * (e_c - e_n)))
    seconds = time.perf_counter() - start

    print(
        f"SPM parity on {args.model}, concept {args.concept!r} ({len(artifact.manifest['adapters'])} membranes)"
    )
    print(
        f"{'prompt':<38} {'m (ref)':>8} {'γ erasekit':>10} {'γ uncond':>9} {'ref gate Δ':>10} {'facil. vs ref':>13}"
    )
    for r in rows:
        print(
            f"{r['prompt']:<38} {r['reference_multiplier']:>8.4f} {r['erasekit_gamma_prompt_row']:>10.4f} "
            f"{r['erasekit_gamma_uncond_row']:>9.4f} {r['reference_vs_erasekit_reference_gate']:>10.2e} "
            f"{r['facilitated_vs_reference_effect']:>13.1%}"
        )
    print(f"max |γ − m| = {max(gammas):.2e}")
    print(
        f"first training loss: erasekit {first:.6g}, reference formula {reference_loss:.6g} (rel. diff {abs(first - reference_loss) / reference_loss:.1e})"
    )
    result = {
        "benchmark": "parity_spm",
        "model": args.model,
        "concept": args.concept,
        "reference": "Con6924/SPM infer_spm.py / src/models/spm.py / src/configs/prompt.py, re-derived",
        "rows": rows,
        "max_gamma_difference": max(gammas),
        "first_loss_erasekit": first,
        "first_loss_reference": reference_loss,
        "seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "versions": environment_versions(),
        "platform": platform.platform(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
